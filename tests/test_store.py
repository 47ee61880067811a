"""search/store.py: the SQLite store read directly gives what the MLflow client gives."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from search.frontier import Objective
from search.store import ClientReader, NotAStore, SqliteReader, load_frontier, open_store
from search.tracking import Tracker

OBJECTIVES = [Objective(metric="val_accuracy", mode="max", reference=0.1),
              Objective(metric="params_nonzero", mode="min"), Objective(metric="flops_compact", mode="min")]


def _trial(tracker: Tracker, folder: Path, trial: str, reg: str, acc: float, params: float, flops: float) -> str:
    run = tracker.run_for(trial, f"{reg}_{trial}", reg, {"regularizer": {"name": reg}})
    for epoch in (1, 2):
        tracker.log_result(run, {"epoch": epoch, "train_loss": 1.0 / epoch, "val_accuracy": acc - 0.1 / epoch})
    tracker.log_result(run, {"epoch": 3, "final": 1.0, "val_accuracy": acc, "params_nonzero": params,
                             "params_total": 1000.0, "flops_compact": flops, "flops_dense": 2000.0,
                             "test_accuracy": acc - 0.01})
    art = folder / trial
    art.mkdir()
    (art / "config.yaml").write_text(f"regularizer: {{name: {reg}}}\nseed: {len(trial)}\n")
    tracker.complete(run, trial, art)
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict]:
    """Two searches of one experiment: complete, failed, pruned, stopped, deleted trials, and
    metrics MLflow stores specially (NaN, infinity)."""
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp}/mlflow.db"
    first = Tracker(uri, "exp", "exp-1", OBJECTIVES, "name: exp\n", {"trials": 8})
    runs = {t: _trial(first, tmp, t, reg, *v) for t, reg, v in (
        ("a", "cges", (0.90, 500.0, 900.0)), ("b", "growl", (0.95, 400.0, 1200.0)), ("c", "cges", (0.80, 100.0, 300.0)),
        ("d", "l1", (0.70, 600.0, 1500.0)), ("e", "growl", (0.10, 5.0, 10.0)))}
    runs["f"] = first.run_for("f", "cges_f", "cges", {"regularizer": {"name": "cges"}})
    first.failed(runs["f"], "Traceback ...\nValueError: boom")
    runs["p"] = first.run_for("p", "cges_p", "cges", {"regularizer": {"name": "cges"}})
    first.pruned(runs["p"], 2)
    runs["s"] = first.run_for("s", "growl_s", "growl", {"regularizer": {"name": "growl"}})
    first.stopped(runs["s"], 1)
    client = MlflowClient(uri)
    client.log_metric(runs["c"], "odd_nan", math.nan)
    client.log_metric(runs["c"], "odd_inf", math.inf)
    client.log_metric(runs["c"], "odd_neg_inf", -math.inf)
    deleted = _trial(first, tmp, "x", "cges", 0.99, 1.0, 1.0)  # deleted: in neither reader's answer
    client.delete_run(deleted)
    first.finish("FINISHED", "complete")
    second = Tracker(uri, "exp", "exp-2", OBJECTIVES, "name: exp\n", {"trials": 1})
    _trial(second, tmp, "z", "l1", 0.5, 50.0, 50.0)
    second.finish("KILLED", "interrupted")
    return uri, runs


def _plain(value):
    """NaN-safe comparison: NaN != NaN."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    return value


def test_sqlite_reader_reads_what_the_mlflow_client_reads(store):
    uri, runs = store
    direct, client = SqliteReader(uri[len("sqlite:///"):]), ClientReader(uri)
    for args in (("exp",), ("exp", "exp-1"), ("exp", "exp-2"), ("exp", "exp-9"), ("nope",)):
        assert _plain(direct.find_search(*args)) == _plain(client.find_search(*args)), args
    exp_id, latest = direct.find_search("exp")
    assert latest.run_name == "exp-2" and latest.status == "KILLED"  # the latest search by default
    _, parent = direct.find_search("exp", "exp-1")
    children = direct.children(exp_id, parent.run_id)
    assert _plain(children) == _plain(client.children(exp_id, parent.run_id))
    assert {c.tags["sparsetune.trial_id"] for c in children} == set("abcdefps")  # not the deleted one
    c = next(r for r in children if r.run_id == runs["c"])
    assert math.isnan(c.metrics["odd_nan"]) and c.metrics["odd_inf"] > 1e300 and c.metrics["odd_neg_inf"] < -1e300
    assert c.params["regularizer/name"] == "cges" and c.metrics["val_accuracy"] == 0.80


def test_both_readers_give_the_same_frontier(store, tmp_path):
    uri, runs = store
    frontiers = []
    for reader in (SqliteReader(uri[len("sqlite:///"):]), ClientReader(uri)):
        exp_id, parent = reader.find_search("exp", "exp-1")
        frontiers.append(load_frontier(reader, exp_id, parent.run_id, OBJECTIVES))
        assert reader.download(runs["b"], "config.yaml", tmp_path / type(reader).__name__).read_text() == \
            "regularizer: {name: growl}\nseed: 1\n"
    direct, client = frontiers
    assert _plain(direct.rows) == _plain(client.rows) and _plain(direct.others) == _plain(client.others)
    assert direct.mask.tolist() == client.mask.tolist() and direct.hypervolume == client.hypervolume
    assert [r["trial_id"] for r in direct.points] == ["b", "a", "c", "e"]
    assert [(r["trial_id"], r["state"]) for r in direct.others] == [("f", "failed"), ("p", "pruned"), ("s", "stopped")]
    assert np.isclose(direct.hypervolume, client.hypervolume) and direct.hypervolume > 0


def test_open_store_reads_sqlite_directly_and_refuses_what_is_not_a_store(store, tmp_path):
    uri, _ = store
    assert isinstance(open_store(uri), SqliteReader)
    assert isinstance(open_store("http://127.0.0.1:5000"), ClientReader)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(NotAStore, match="no MLflow tables"):
        open_store(f"sqlite:///{other}")
    (tmp_path / "text.db").write_text("not a database at all, just text " * 100)
    with pytest.raises(NotAStore, match="not an SQLite database"):
        open_store(f"sqlite:///{tmp_path / 'text.db'}")
    # an MLflow store with other columns than this reader knows: the MLflow client reads it
    changed = tmp_path / "changed.db"
    db = sqlite3.connect(changed)
    db.executescript("CREATE TABLE alembic_version (version_num); CREATE TABLE experiments (experiment_id, name);"
                     "CREATE TABLE runs (run_uuid)")
    db.close()
    assert isinstance(open_store(f"sqlite:///{changed}"), ClientReader)


def test_frontier_of_a_file_that_is_not_a_store_exits_2(tmp_path, capsys):
    from search.cli import main

    (tmp_path / "x.db").write_text("hello")
    assert main(["frontier", "--experiment", "e", "--tracking-uri", f"sqlite:///{tmp_path}/x.db"]) == 2
    err = capsys.readouterr().err
    assert "--tracking-uri:" in err and "not an SQLite database" in err and (tmp_path / "x.db").read_text() == "hello"
