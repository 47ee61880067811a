"""Search pieces without a Ray runtime: the searcher's bookkeeping, the space, the tracker."""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.spec import Objective, SearchSpec
from search.tracking import Tracker
from search._compat import study_of
from search.samplers import FullBudgetOptunaSearch
from search.space import SpaceDefinition

ROOT = Path(__file__).parent.parent
OBJECTIVES = [Objective(metric="val_accuracy", mode="max"), Objective(metric="params_nonzero", mode="min")]


def spec(**changes) -> SearchSpec:
    data = {
        "name": "u",
        "base": {"data": {"name": "digits"}},
        "space": {"optim/lr": {"type": "loguniform", "low": 0.01, "high": 0.3},
                  "model/hidden": {"type": "categorical", "choices": [[8], [16, 8]]}},
        "regularizers": {"cges": {"lam": {"type": "loguniform", "low": 1e-3, "high": 1e-1}, "mu/last": 0.9},
                         "growl": {"p": {"type": "uniform", "low": 0.1, "high": 1.0},
                                   "lambda1": {"type": "loguniform", "low": 0.01, "high": 1.0}}},
        "trials": 4,
    }
    data.update(changes)
    return SearchSpec.model_validate(data)


def searcher(s: SearchSpec) -> FullBudgetOptunaSearch:
    return FullBudgetOptunaSearch(space=SpaceDefinition(s), metric=["val_accuracy", "params_nonzero"],
                                  mode=["max", "min"], sampler=optuna.samplers.RandomSampler(seed=0))


def test_space_is_conditional_and_round_robin():
    sr = searcher(spec())
    configs = [sr.suggest(f"t{i}") for i in range(4)]
    assert [c["regularizer"]["name"] for c in configs] == ["cges", "growl", "cges", "growl"]
    for c in configs:
        reg = c["regularizer"]
        if reg["name"] == "cges":
            assert set(reg) == {"name", "lam", "mu"} and reg["mu"] == {"last": 0.9}
        else:
            assert set(reg) == {"name", "p", "lambda1"}
        assert 0.01 <= c["optim"]["lr"] <= 0.3
        assert c["model"]["hidden"] in ([8], [16, 8])  # list choices reach the trial as lists


def test_sampler_allocation_lets_optuna_choose_the_family():
    sr = searcher(spec(allocation="sampler"))
    names = {sr.suggest(f"t{i}")["regularizer"]["name"] for i in range(12)}
    assert names == {"cges", "growl"}
    assert "regularizer/name" in study_of(sr).trials[0].params


def test_optuna_is_told_how_each_trial_really_ended():
    sr = searcher(spec())
    for i in range(6):
        sr.suggest(f"t{i}")
    sr.on_trial_complete("t0", {"final": 1.0, "val_accuracy": 0.9, "params_nonzero": 100.0})
    sr.on_trial_complete("t1", {"final": 0.0, "val_accuracy": 0.5, "training_iteration": 2})  # stopped early
    sr.on_trial_complete("t2", None, error=True)
    sr.on_trial_complete("t3", {"final": 1.0, "val_accuracy": math.nan, "params_nonzero": 100.0})
    sr.on_trial_complete("t4", {"trial_failed": 1.0, "final": 0.0, "error": "TrainingDiverged"})
    sr.on_trial_complete("t5", {"final": 1.0, "val_accuracy": 0.8, "params_nonzero": 50.0})
    sr.on_trial_complete("t5", {"final": 1.0, "val_accuracy": 0.1, "params_nonzero": 1.0})  # repeated: ignored
    states = [t.state.name for t in study_of(sr).trials]
    assert states == ["COMPLETE", "PRUNED", "FAIL", "FAIL", "FAIL", "COMPLETE"]
    assert study_of(sr).trials[0].values == [0.9, 100.0] and study_of(sr).trials[5].values == [0.8, 50.0]
    assert len(study_of(sr).directions) == 2
    assert {t.number for t in study_of(sr).best_trials} == {0, 5}


def test_searcher_survives_pickle_as_ray_saves_it():
    sr = searcher(spec())
    sr.suggest("a")
    sr.on_trial_complete("a", {"final": 1.0, "val_accuracy": 0.9, "params_nonzero": 10.0})
    clone = FullBudgetOptunaSearch.__new__(FullBudgetOptunaSearch)  # as Searcher.restore does
    clone.__dict__.update(pickle.loads(pickle.dumps(sr.__dict__)))
    assert study_of(clone).trials[0].values == [0.9, 10.0]
    assert clone.suggest("b")["regularizer"]["name"] in {"cges", "growl"}


def _tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path}/m.db", "exp", "exp-1", OBJECTIVES, "name: exp\n", {"trials": 2})


def _finish(tracker: Tracker, trial: str, acc: float, params: float, reg: str = "cges"):
    run = tracker.run_for(trial, f"{reg}_{trial}", reg, {"regularizer": {"name": reg}})
    tracker.log_result(run, {"epoch": 1, "val_accuracy": acc, "params_nonzero": params, "params_total": 1000.0})
    return run, tracker.complete(run, trial, None)


def test_tracker_finds_its_runs_again_after_pickling(tmp_path):
    tracker = _tracker(tmp_path)
    run = tracker.run_for("t1", "cges_t1", "cges", {"regularizer": {"name": "cges"}})
    restored = pickle.loads(pickle.dumps(tracker))  # what Ray does to callbacks on restore
    assert restored.run_for("t1", "cges_t1", "cges", {}) == run
    assert restored.parent_id == tracker.parent_id
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.get_experiment_by_name("exp")
    assert len(client.search_runs([exp.experiment_id])) == 2  # one parent + one child, no duplicate
    assert exp.artifact_location.startswith(str(tmp_path / "mlartifacts"))  # beside the DB
    params = client.get_run(run).data.params
    assert params["regularizer/name"] == "cges" and params["regularizer/lam"] == "0.01"  # the full config


def test_pareto_tags_follow_the_frontier(tmp_path):
    tracker = _tracker(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run_a, f1 = _finish(tracker, "a", 0.90, 500.0)
    assert client.get_run(run_a).data.tags["sparsetune.pareto"] == "true"
    run_b, f2 = _finish(tracker, "b", 0.95, 400.0, "growl")  # dominates a
    assert client.get_run(run_a).data.tags["sparsetune.pareto"] == "false"
    assert client.get_run(run_b).data.tags["sparsetune.pareto"] == "true"
    run_c, f3 = _finish(tracker, "c", 0.80, 100.0)  # a trade-off: also optimal
    assert [r["trial_id"] for r in f3.points] == ["b", "c"]
    # hypervolume on the normalised objectives (params / params_total), reference (0, 1)
    assert f3.hypervolume == pytest.approx(0.95 * (1 - 0.4) + 0.80 * (0.4 - 0.1))
    hv = client.get_metric_history(tracker.parent_id, "hypervolume")
    assert [m.step for m in hv] == [1, 2, 3]
    final = tracker.finish()
    names = {a.path for a in client.list_artifacts(tracker.parent_id)}
    assert {"trials.csv", "frontier.csv", "frontier.html", "frontier_params.png", "spec.yaml"} <= names
    assert "pareto.csv" not in names
    assert client.get_run(tracker.parent_id).info.status == "FINISHED"
    assert final.hypervolume == f3.hypervolume
    # trials.csv: every trial, the frontier first; frontier.csv: the frontier only
    trials = list(csv.DictReader(io.StringIO(final.to_csv())))
    assert [(r["trial_id"], r["pareto"]) for r in trials] == [("b", "True"), ("c", "True"), ("a", "False")]
    assert [r["trial_id"] for r in csv.DictReader(io.StringIO(final.to_csv(only_pareto=True)))] == ["b", "c"]
    # the description: the frontier table linking to the child runs, and the same hypervolume
    note = client.get_run(tracker.parent_id).data.tags["mlflow.note.content"]
    assert f"**Hypervolume:** {final.hypervolume:.4f}" in note
    assert f"(#/experiments/{tracker.experiment_id}/runs/{run_b})" in note
    assert "`val_accuracy` (max: higher is better)" in note


def test_failed_and_pruned_trials_are_recorded_and_never_on_the_frontier(tmp_path):
    tracker = _tracker(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run_f = tracker.run_for("f", "f", "cges", {})
    tracker.failed(run_f, "Traceback ...\nRuntimeError: boom")
    run_p = tracker.run_for("p", "p", "cges", {})
    tracker.pruned(run_p, 2)
    _, frontier = _finish(tracker, "ok", 0.9, 10.0)
    assert client.get_run(run_f).info.status == "FAILED"
    assert "boom" in client.get_run(run_f).data.tags["sparsetune.error"]
    assert client.get_run(run_p).info.status == "KILLED"
    assert [r["trial_id"] for r in frontier.rows] == ["ok"]


def test_cluster_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p"))
               for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"])
    assert any("mlflow server" in c and "--host 127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    text = (ROOT / "cluster.yaml").read_text().lower()
    assert not any(secret in text for secret in ("aws_secret", "secret_access_key", "password", "token:"))
    broken = copy.deepcopy(cfg)
    broken["head_node_type"] = "missing"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def test_frontier_figure_draws_every_trial_rings_the_frontier_and_merges_coinciding_stars():
    import matplotlib

    matplotlib.use("Agg")
    from search.plots import frontier_figure
    from search.tracking import Frontier

    rows = [{"regularizer": fam, "val_accuracy": acc, "params_nonzero": p, "params_total": 100}
            for fam, acc, p in [("l1", 0.9, 80), ("l1", 0.8, 90), ("cges", 0.7, 20), ("growl", 0.95, 100)]]
    frontier = Frontier.of(rows, OBJECTIVES)
    assert frontier.mask.tolist() == [True, False, True, True]
    extra = [{"label": "A (paper)", "val_accuracy": 0.1, "params_nonzero": 5},
             {"label": "B (paper)", "val_accuracy": 0.1, "params_nonzero": 5},
             {"label": "C (paper)", "val_accuracy": 0.5, "params_nonzero": 50}]
    fig = frontier_figure(frontier, "params_nonzero", "val_accuracy", extra=extra)
    ax = fig.axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["A (paper)\nB (paper)", "C (paper)"]  # one label per place, none drawn twice
    families = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"l1", "cges", "growl", "Pareto-optimal (all objectives)"} <= families
    ringed = [c for c in ax.collections if c.get_label() == "Pareto-optimal (all objectives)"]
    assert len(ringed) == 1 and len(ringed[0].get_offsets()) == 3


def test_repeated_epochs_are_written_once(tmp_path):
    """A trial retried or resumed from an older checkpoint reports epochs again: each is kept once,
    also by a tracker that found the run again after a restore."""
    tracker = _tracker(tmp_path)
    run = tracker.run_for("t", "cges_t", "cges", {"regularizer": {"name": "cges"}})
    for epoch in (1, 2, 3, 4):
        tracker.log_result(run, {"epoch": epoch, "train_loss": 1.0 / epoch})
    for epoch in (3, 4, 5):  # the worker died after epoch 4; the checkpoint was at epoch 2
        tracker.log_result(run, {"epoch": epoch, "train_loss": 1.0 / epoch})
    tracker.flush()
    restored = pickle.loads(pickle.dumps(tracker))  # the driver restarted (--resume)
    assert restored.run_for("t", "cges_t", "cges", {}) == run
    for epoch in (4, 5, 6):
        restored.log_result(run, {"epoch": epoch, "train_loss": 1.0 / epoch, "final": 1.0 * (epoch == 6),
                                  **({"test_accuracy": 0.9} if epoch == 6 else {})})
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    steps = [m.step for m in client.get_metric_history(run, "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(run, "test_accuracy")] == [6]


@pytest.mark.parametrize("live_s", [0.0, 1e9])
def test_the_frontier_is_on_the_parent_while_it_runs(tmp_path, live_s):
    """Refreshed after a trial completes, at most every live_s seconds (the first one at once)."""
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "exp", "exp-1", OBJECTIVES, "name: exp\n", {"trials": 3},
                      live_s=live_s)
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")

    def trials_csv() -> str:
        return Path(client.download_artifacts(tracker.parent_id, "trials.csv", str(tmp_path / "dl"))).read_text()

    _finish(tracker, "a", 0.90, 500.0)
    parent = client.get_run(tracker.parent_id)
    assert parent.info.status == "RUNNING"
    names = {a.path for a in client.list_artifacts(tracker.parent_id)}
    assert {"trials.csv", "frontier.csv", "frontier.html", "frontier_params.png"} <= names
    assert "1 trials: 1 complete. Running (refreshed" in parent.data.tags["mlflow.note.content"]
    _finish(tracker, "b", 0.95, 400.0)
    assert ("\nb,cges," in trials_csv()) == (live_s == 0.0)  # refreshed only if live_s has passed
    assert client.get_run(tracker.parent_id).info.status == "RUNNING"
    tracker.finish(outcome="complete")
    assert "\nb,cges," in trials_csv()
    note = client.get_run(tracker.parent_id).data.tags["mlflow.note.content"]
    assert "2 trials: 2 complete.\n" in note and "complete. complete" not in note


def test_one_hypervolume_with_a_reference_everywhere(tmp_path, monkeypatch, capsys):
    """The search's metric, the parent's description and `sparsetune frontier` agree, also with an
    explicit reference (which `frontier` used to drop)."""
    from search.cli import main

    objectives = [Objective(metric="val_accuracy", mode="max", reference=0.33),
                  Objective(metric="params_nonzero", mode="min")]
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "exp", "exp-1", objectives, "name: exp\n", {"trials": 3})
    for trial, acc, params in (("a", 0.9, 500.0), ("b", 0.5, 100.0), ("c", 0.3, 10.0)):
        _finish(tracker, trial, acc, params)
    final = tracker.finish()
    assert final.hypervolume == pytest.approx((0.9 - 0.33) * (1 - 0.5) + (0.5 - 0.33) * (0.5 - 0.1))
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    [metric] = [m for m in client.get_metric_history(tracker.parent_id, "hypervolume") if m.step == 3]
    assert metric.value == final.hypervolume
    assert f"{final.hypervolume:.4f}" in client.get_run(tracker.parent_id).data.tags["mlflow.note.content"]
    monkeypatch.chdir(tmp_path)
    assert main(["frontier", "--experiment", "exp", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--all"]) == 0
    out = capsys.readouterr().out
    assert f"hypervolume {final.hypervolume:.4f}" in out
    assert "pareto" in out


@pytest.mark.parametrize("command", ["frontier", "export"])
def test_frontier_and_export_load_neither_torch_nor_ray_nor_mlflow(tmp_path, command):
    """They start in about a second: a SQLite store is read without MLflow (search/store.py); of the
    training side they load only the torch-free trainables.schema."""
    tracker = _tracker(tmp_path)
    run = tracker.run_for("a", "cges_a", "cges", {"regularizer": {"name": "cges"}})
    tracker.log_result(run, {"epoch": 1, "val_accuracy": 0.9, "params_nonzero": 10.0, "params_total": 100.0})
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "config.yaml").write_text("seed: 3\n")
    tracker.complete(run, "a", tmp_path / "art")
    tracker.finish()
    extra = ", '--out', 'exported'" if command == "export" else ""
    code = ("import sys; from search.cli import main; "
            f"rc = main(['{command}', '--experiment', 'exp', '--tracking-uri', 'sqlite:///{tmp_path}/m.db'{extra}]); "
            "heavy = sorted(m for m in ('torch', 'ray', 'trainables.config', 'trainables.train', 'optuna', 'mlflow', "
            "'sqlalchemy', 'pandas') "
            "if m in sys.modules); print('LOADED', heavy, rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "LOADED [] 0" in out.stdout, out.stdout + out.stderr
    if command == "export":
        [exported] = (tmp_path / "exported").glob("rank0_cges_a.yaml")
        assert exported.read_text().endswith("seed: 3\n")


def test_frontier_of_a_missing_store_exits_2_without_traceback(tmp_path, monkeypatch, capsys):
    from search.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["frontier", "--experiment", "x"]) == 2
    err = capsys.readouterr().err
    assert "--tracking-uri: no MLflow store there" in err and "Traceback" not in err


def test_relative_paths_in_a_spec_are_resolved_from_where_the_search_starts(tmp_path, monkeypatch):
    """Every value that the config treats as a path (base, family constants, categorical
    choices) is made absolute on the driver; other strings are left alone."""
    from search.spec import resolve_paths

    (tmp_path / "a.csv").write_text("x,label\n1,0\n2,1\n3,0\n4,1\n5,0\n6,1\n7,0\n8,1\n9,0\n10,1\n")
    (tmp_path / "b.csv").write_text((tmp_path / "a.csv").read_text())
    monkeypatch.chdir(tmp_path)
    s = SearchSpec.model_validate({
        "name": "p", "trials": 2,
        "base": {"data": {"name": "arrays", "path": "a.csv", "target": "label"}, "model": {"name": "mlp"}},
        "space": {"data/path": {"type": "categorical", "choices": ["a.csv", "./b.csv"]}},
        "regularizers": {"l1": {"lam": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                         "cges": {"lam": 1e-3, "data/path": "b.csv"}}})
    out = resolve_paths(s)
    assert out.base["data"] == {"name": "arrays", "path": str(tmp_path / "a.csv"), "target": "label"}
    assert out.space["data/path"].choices == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert out.regularizers["cges"]["data/path"] == str(tmp_path / "b.csv")
    assert out.regularizers["l1"]["lam"] == s.regularizers["l1"]["lam"]
    assert resolve_paths(out) == out  # idempotent: nothing relative is left


class _Clock:
    """A fake ``time.monotonic`` for search.callbacks: progress lines without waiting."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def strftime(self, *args):
        import time

        return time.strftime(*args)


class _Trial:
    """What TrackingCallback reads of a Ray trial."""

    def __init__(self, trial_id: str, epochs: int, folder: Path):
        self.trial_id = trial_id
        self.config = {"data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [8]},
                       "optim": {"epochs": epochs}, "regularizer": {"name": "cges"}}
        self.status, self.last_result, self.folder = "RUNNING", None, folder

    def __str__(self) -> str:
        return f"cges_{self.trial_id}"

    @property
    def checkpoint(self):
        from contextlib import contextmanager

        folder = self.folder

        class _Checkpoint:
            @contextmanager
            def as_directory(self):
                yield str(folder)

        return _Checkpoint()


def test_progress_lines_start_every_30s_at_most_and_eta(tmp_path, monkeypatch, capsys):
    """One start line per trial; while a trial runs, a line (epoch k/N, val acc) at most every
    30 s, and at the first epoch that ends 30 s or more after the last line; on each finished
    trial's line an ETA from the finished trials' durations, none on the last."""
    import re

    import search.callbacks as tune_module

    clock = _Clock()
    monkeypatch.setattr(tune_module, "time", clock)
    objectives = [*OBJECTIVES, Objective(metric="flops_compact", mode="min")]
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "exp", "exp-1", objectives, "name: exp\n", {"trials": 3})
    callback = tune_module.TrackingCallback(tracker, total=3, concurrency=1)
    said: list[tuple[float, str]] = []  # (fake time, line)

    def heard():
        said.extend((clock.now, line) for line in capsys.readouterr().out.splitlines())

    # (trial, epochs, seconds per epoch): short epochs, epochs longer than 30 s, one quick trial
    plan = [("A", 20, 7.0), ("B", 4, 45.0), ("C", 1, 3.0)]
    for trial_id, epochs, seconds in plan:
        trial = _Trial(trial_id, epochs, tmp_path)
        callback.on_trial_start(0, [trial], trial)
        heard()
        for epoch in range(1, epochs + 1):
            clock.now += seconds
            final = epoch == epochs
            result = {"epoch": epoch, "final": float(final), "val_accuracy": 0.5 + epoch / 100,
                      **({"params_nonzero": 10.0 * epoch, "params_total": 1000.0, "flops_compact": 20.0,
                          "flops_dense": 100.0} if final else {})}
            callback.on_trial_result(0, [trial], trial, result)
            heard()
        trial.status, trial.last_result = "TERMINATED", result
        callback.on_trial_complete(0, [trial], trial)
        heard()

    lines = [line for _, line in said]
    starts = [line for line in lines if line.lstrip().startswith("start")]
    assert starts == ["  start  cges             A  (1 running, 0/3 done)",
                      "  start  cges             B  (1 running, 1/3 done)",
                      "  start  cges             C  (1 running, 2/3 done)"]
    progress = re.compile(r"^  \.\.\.    cges\s+(\w)  epoch (\d+)/(\d+)  val acc (0\.\d{3})  \((\S+)\)$")
    seen = [(t, progress.match(line).groups()) for t, line in said if progress.match(line)]
    assert [(g[0], int(g[1]), int(g[2])) for _, g in seen] == [
        ("A", 5, 20), ("A", 10, 20), ("A", 15, 20), ("B", 1, 4), ("B", 2, 4), ("B", 3, 4)]
    assert [g[4] for _, g in seen] == ["35s", "1m10s", "1m45s", "45s", "1m30s", "2m15s"]
    assert seen[0][1][3] == "0.550"  # the validation accuracy of the epoch it reports
    for (t0, g0), (t1, g1) in zip(seen, seen[1:]):
        if g0[0] == g1[0]:
            assert t1 - t0 >= 30.0  # never more often than every 30 s
    finished = [line for line in lines if line.startswith("[")]
    assert len(finished) == 3
    assert finished[0].startswith("[  1/3] cges             A ") and finished[0].endswith("| ETA 4m40s")  # 2 × 140 s
    assert finished[1].endswith("| ETA 2m40s")  # mean of 140 s and 180 s, 1 left
    assert "ETA" not in finished[2]


def test_every_command_has_a_one_line_help_in_one_style():
    import argparse

    from search.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert sorted(helps) == sorted(sub.choices)  # every command has one
    for name, text in helps.items():
        assert text and "\n" not in text and text[0].islower() and text[-1] not in ".:", (name, text)


def test_the_printed_links_show_this_search_and_its_parent(tmp_path):
    """The runs link filters to this search's runs (MLflow's own search syntax, run here as the UI
    runs it), and the parent link opens the run that holds the frontier."""
    from urllib.parse import parse_qs, unquote, urlsplit

    first, second = _tracker(tmp_path), Tracker(f"sqlite:///{tmp_path}/m.db", "exp", "exp-2", OBJECTIVES,
                                                "name: exp\n", {"trials": 2})
    _finish(first, "a", 0.9, 500.0)
    _finish(second, "b", 0.8, 400.0)
    query = parse_qs(urlsplit(first.url).fragment.split("?", 1)[1])
    assert query["orderByKey"] == ["metrics.`val_accuracy`"] and query["orderByAsc"] == ["false"]
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    shown = client.search_runs([first.experiment_id], unquote(query["searchFilter"][0]))
    assert {r.info.run_id for r in shown} == {first.parent_id, first.run_for("a", "cges_a", "cges", {})}
    assert first.parent_url == f"http://127.0.0.1:5000/#/experiments/{first.experiment_id}/runs/{first.parent_id}"


def test_the_study_names_its_objectives_for_optuna_dashboard(tmp_path):
    from search.samplers import make_searcher

    s = spec(objectives=[{"metric": "val_accuracy", "mode": "max"}, {"metric": "flops_compact", "mode": "min"}])
    make_searcher(s, f"sqlite:///{tmp_path}/o.db", "u-1")
    study = optuna.load_study(study_name="u-1", storage=f"sqlite:///{tmp_path}/o.db")  # as the dashboard reads it
    assert study.metric_names == ["val_accuracy", "flops_compact"]


def test_a_search_whose_every_trial_is_at_chance_says_so(tmp_path, monkeypatch, capsys):
    from search import run as run_module
    from search.cli import main
    from search.progress import summary

    tracker = _tracker(tmp_path)
    for trial, flag in (("a", 1), ("b", 1)):
        run = tracker.run_for(trial, f"cges_{trial}", "cges", {"regularizer": {"name": "cges"}})
        tracker.log_result(run, {"epoch": 1, "val_accuracy": 0.1, "params_nonzero": 10.0, "params_total": 100.0,
                                 "val_at_chance": flag, "val_chance_accuracy": 0.11})
        frontier = tracker.complete(run, trial, None)
    assert frontier.at_chance
    assert "**Every trial is at chance level:** no better than always answering" in tracker.describe(frontier)
    assert summary({"val_accuracy": 0.1, "val_at_chance": 1}).endswith("(at chance level)")
    assert "chance" not in summary({"val_accuracy": 0.9, "val_at_chance": 0})

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "u", "base": {"data": {"name": "digits"}}, "trials": 2,
                                         "space": {"optim/lr": {"type": "loguniform", "low": 0.01, "high": 0.3}}}))
    outcome = run_module.SearchOutcome("u-1", str(tmp_path / "ray"), frontier, complete=True)
    monkeypatch.setattr(run_module, "run_search", lambda *a, **k: outcome)
    assert main(["search", str(spec_file)]) == 0  # it ran as told
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("sparsetune search: warning: every trial is at chance level: no better")
    # one trial that learned: a frontier, no warning
    outcome.frontier.rows[0]["val_at_chance"] = 0
    assert not outcome.frontier.at_chance and main(["search", str(spec_file)]) == 0
    assert "chance" not in capsys.readouterr().err


def test_a_trial_resumes_from_its_newest_loadable_checkpoint(tmp_path):
    """After a killed driver Ray may name a checkpoint that was deleted since (or that is an
    empty stand-in), and newer ones, one half written, may sit beside it."""
    import json

    import torch
    from ray import tune

    from search.trainable import EPOCH_FILE, STATE_FILE, newest_state

    config = {"seed": 1}

    def write(name: str, epoch: int, torn: bool = False) -> str:
        d = tmp_path / name
        d.mkdir()
        (d / EPOCH_FILE).write_text(json.dumps({"epoch": epoch}))
        if torn:
            (d / STATE_FILE).write_bytes(b"PK\x03\x04 half of a zip")
        else:
            torch.save({"config": config, "epoch": epoch}, d / STATE_FILE)
        return str(d)

    named = tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000001"))  # deleted since
    assert newest_state(named) is None  # nothing loadable: the trial starts over
    (tmp_path / "checkpoint_000001").mkdir()  # the empty stand-in the callback leaves for Ray
    write("checkpoint_000002", 3)
    write("checkpoint_000003", 4)
    write("checkpoint_000004", 6, torn=True)  # the driver died while it was written
    assert newest_state(named)["epoch"] == 4
    assert newest_state(None) is None  # Ray names none: a fresh start
    ray_own = tune.Checkpoint.from_directory(write("checkpoint_000006", 5))
    assert newest_state(ray_own)["epoch"] == 5  # normally: Ray's own, the newest


def test_a_torn_experiment_state_is_set_aside_for_the_one_before_it(tmp_path):
    """A driver killed while Ray copied its experiment state leaves the newest session's files
    torn; the resume restores the session before it (the stores make up the rest)."""
    import json

    from search.run import _set_aside_torn_state

    def session(name: str, torn: bool = False) -> None:
        text = json.dumps({"trial_data": [], "name": name})
        (tmp_path / f"experiment_state-{name}.json").write_text(text[:10] if torn else text)
        (tmp_path / f"search_gen_state-{name}.json").write_text("{}")
        (tmp_path / f"searcher-state-{name}.pkl").write_bytes(pickle.dumps({"s": name}))

    session("2026-01-01_10-00-00")
    session("2026-01-01_11-00-00", torn=True)
    said = []
    _set_aside_torn_state(str(tmp_path), said.append)
    assert sorted(p.name for p in tmp_path.glob("experiment_state-*.json")) == ["experiment_state-2026-01-01_10-00-00.json"]
    assert (tmp_path / "searcher-state-2026-01-01_11-00-00.pkl.torn").exists()
    assert len(said) == 1 and "2026-01-01_11-00-00 is torn" in said[0]
    session("2026-01-01_12-00-00")  # a whole one: nothing set aside
    _set_aside_torn_state(str(tmp_path), said.append)
    assert len(list(tmp_path.glob("experiment_state-*.json"))) == 2 and len(said) == 1


def test_frontier_and_export_constraints_keep_only_the_runs_that_meet_them():
    """--max-params / --max-compact-params / --max-flops / --min-accuracy, then the frontier of
    what is left (a run the constraint removes no longer dominates anything)."""
    import argparse

    from search.commands import _constrained
    from search.frontier import Frontier

    objectives = [Objective(metric="val_accuracy", mode="max"), Objective(metric="params_nonzero", mode="min")]
    rows = [{"trial_id": t, "run_id": t, "val_accuracy": acc, "params_nonzero": nz, "params_compact": pc,
             "params_total": 1000.0, "flops_compact": fl, "flops_dense": 100.0}
            for t, acc, nz, pc, fl in [("a", 0.95, 900.0, 1000.0, 90.0), ("b", 0.90, 300.0, 800.0, 60.0),
                                        ("c", 0.85, 200.0, 400.0, 30.0), ("d", 0.50, 100.0, 100.0, 10.0)]]
    frontier = Frontier.of(rows, objectives)

    def kept(**limits) -> list[str]:
        args = argparse.Namespace(**{"max_params": None, "max_compact_params": None, "max_flops": None,
                                     "min_accuracy": None, **limits})
        f = _constrained(frontier, args)
        return sorted(r["trial_id"] for r, keep in zip(f.rows, f.mask) if keep)

    assert kept() == ["a", "b", "c", "d"]
    assert kept(max_params=300) == ["b", "c", "d"]
    assert kept(max_compact_params=500) == ["c", "d"]  # b has 300 non-zero but stores 800
    assert kept(max_flops=50, min_accuracy=0.6) == ["c"]


def test_a_run_found_after_a_killed_driver_gets_the_epochs_it_lost_from_the_result(tmp_path):
    """Epochs buffered in a killed driver never reached MLflow, and a trial resumed from a newer
    checkpoint does not report them again: its result.json history fills the gaps, once each."""
    import json

    tracker = _tracker(tmp_path)
    tracker.flush_s = 1e9  # everything buffered until the trial ends
    run = tracker.run_for("t1", "cges_t1", "cges", {"regularizer": {"name": "cges"}})
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_accuracy": 0.5 + e / 10, "phase": "train"} for e in (1, 2, 3, 4)]
    tracker.log_result(run, history[0])
    tracker.flush(run)  # epoch 1 reached MLflow ...
    tracker.log_result(run, history[1])  # ... epoch 2 was buffered when the driver died
    restored = pickle.loads(pickle.dumps(tracker))
    assert restored.run_for("t1", "cges_t1", "cges", {}) == run
    # resumed from epoch 3's checkpoint: epoch 4 is reported, then the trial ends
    restored.log_result(run, {**history[3], "params_nonzero": 10.0, "params_total": 100.0, "final": 1.0})
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "result.json").write_text(json.dumps({"val_accuracy": 0.9, "history": history}))
    restored.complete(run, "t1", tmp_path / "art")
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    for key in ("train_loss", "val_accuracy"):
        steps = sorted(m.step for m in client.get_metric_history(run, key))
        assert steps == [1, 2, 3, 4], (key, steps)
    assert {m.step: m.value for m in client.get_metric_history(run, "train_loss")}[2] == 0.5


def test_the_final_checkpoint_found_after_a_kill_is_whole_and_the_runs_end(tmp_path):
    """A trial Ray never recorded is adopted from its newest checkpoint whose ``result.json`` reads
    whole and is the run's end: not a half-copied one (a re-run killed while Ray copied it), not a
    path's point (``point`` without ``points``)."""
    import json

    import search.callbacks as tune_module

    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "exp", "exp-1", OBJECTIVES, "name: exp\n", {"trials": 1})
    callback = tune_module.TrackingCallback(tracker, total=1)
    callback.experiment_path = str(tmp_path / "exp")
    trial_dir = tmp_path / "exp" / "train_trial_abc12_00000"

    def checkpoint(k: int, text: str | None) -> Path:
        folder = trial_dir / f"checkpoint_{k:06d}"
        folder.mkdir(parents=True)
        if text is not None:
            (folder / "result.json").write_text(text)
        return folder

    assert callback._final_checkpoint("abc12_00000") is None
    checkpoint(0, None)  # a state-only checkpoint: no run saved in it
    checkpoint(1, json.dumps({"point": 0, "target": 0.5, "val_accuracy": 0.9}))
    assert callback._final_checkpoint("abc12_00000") is None  # a point is not the run's end
    final = checkpoint(2, json.dumps({"point": 1, "points": [{}, {}], "val_accuracy": 0.8}))
    checkpoint(3, "")  # torn
    checkpoint(4, '{"val_accuracy": 0.')  # torn part way
    assert callback._final_checkpoint("abc12_00000") == final
    plain = checkpoint(5, json.dumps({"val_accuracy": 0.7, "history": []}))  # a run without a path
    assert callback._final_checkpoint("abc12_00000") == plain
    assert callback._final_checkpoint("other_00001") is None


def test_a_path_search_eta_counts_the_stages_left(tmp_path, monkeypatch):
    """With paths, the ETA is the mean stage (time between a trial's points, or from its start)
    times the stages left: the running trials' own and a whole path per trial not started."""
    import search.callbacks as tune_module

    clock = _Clock()
    monkeypatch.setattr(tune_module, "time", clock)
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "exp", "exp-1", OBJECTIVES, "name: exp\n", {"trials": 3})
    callback = tune_module.TrackingCallback(tracker, total=3, concurrency=1, quiet=True)
    trial = _Trial("A", 2, tmp_path)
    trial.config["path"] = {"targets": [0.3, 0.6, 0.9]}
    callback.on_trial_start(0, [trial], trial)
    assert callback._eta() == ""  # nothing finished, no stage measured

    def point(seconds, k):
        clock.now += seconds
        callback.on_trial_result(0, [trial], trial, {"epoch": 2 * k, "final": 0.0, "val_accuracy": 0.9,
                                                     "point": k - 1, "stages_done": k})

    point(10.0, 1)
    assert callback._eta() == " | ETA 1m20s"  # 10 s × (2 of A's + 3 + 3 for the two waiting)
    clock.now += 5.0
    callback.on_trial_result(0, [trial], trial, {"epoch": 3, "final": 0.0, "val_accuracy": 0.9})  # mid-stage
    point(25.0, 2)
    assert callback._eta() == " | ETA 2m20s"  # mean of 10 s and 30 s, × 7 stages
