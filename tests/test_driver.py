"""The driver's guards (search/driver.py) without a Ray runtime: search ids, the store lock."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from search.driver import new_search_id, search_id_stamp

ROOT = Path(__file__).parent.parent


def test_two_ids_made_in_the_same_second_differ_and_sort_after_an_older_one():
    now = 1_796_000_000.0  # a fixed moment: the test does not read the clock
    older = new_search_id("tiny", now - 1)
    legacy = f"tiny-{datetime.fromtimestamp(now - 1).strftime('%Y%m%d-%H%M%S')}"  # an id before the suffix
    ids = {new_search_id("tiny", now) for _ in range(20)}
    assert len(ids) > 1  # 6 random hex digits: 20 equal ids would be a 1 in 2^(24*19) chance
    for i in ids:
        assert i > older and i > legacy
        assert search_id_stamp("tiny", i) == datetime.fromtimestamp(now).strftime("%Y%m%d-%H%M%S")
    assert search_id_stamp("tiny", legacy) == legacy[len("tiny-"):]  # old ids still resume


@pytest.mark.parametrize("search_id", ["tiny-big-20261204-023534-abcd12", "tiny-20261204-0235", "tiny-notes",
                                       "tiny-20261204-023534-ABCDEF", "tiny-20261204-023534-abcd", "other-20261204-023534"])
def test_an_id_of_another_spec_or_no_search_is_no_search_of_the_spec(search_id):
    assert search_id_stamp("tiny", search_id) is None


def test_find_resumable_picks_the_latest_search_of_the_name_with_or_without_the_suffix(tmp_path, monkeypatch):
    from ray import tune

    from search.run import find_resumable

    for name in ("tiny-20261203-120000", "tiny-20261204-010000-0000ff", "tiny-20261204-010000",
                 "tiny-big-20261205-000000-aaaaaa", "tiny-20261201-000000-ffffff"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(tune.Tuner, "can_restore", staticmethod(lambda path: True))
    # two started in the same second: the one whose directory changed last
    os.utime(tmp_path / "tiny-20261204-010000", (1_000_000, 1_000_000))
    assert find_resumable(str(tmp_path), "tiny") == f"{tmp_path}/tiny-20261204-010000-0000ff"
    os.utime(tmp_path / "tiny-20261204-010000-0000ff", (1_000, 1_000))
    assert find_resumable(str(tmp_path), "tiny") == f"{tmp_path}/tiny-20261204-010000"
    (tmp_path / "tiny-20261204-010000").rmdir()
    (tmp_path / "tiny-20261204-010000-0000ff").rmdir()
    assert find_resumable(str(tmp_path), "tiny") == f"{tmp_path}/tiny-20261203-120000"
    assert find_resumable(str(tmp_path), "tiny-big") == f"{tmp_path}/tiny-big-20261205-000000-aaaaaa"


_CREATE = """
import sys
from search.driver import prepare_stores  # imported first: both create the stores at the same moment
import mlflow.tracking, optuna.storages  # noqa: F401
print("ready", flush=True)
sys.stdin.readline()  # released by the test, both at once
prepare_stores(sys.argv[1], sys.argv[2], "tiny")
print("created")
"""


def test_two_drivers_creating_the_same_fresh_sqlite_stores_at_once_both_succeed(tmp_path):
    """Two searches started together on a fresh store: MLflow's and Optuna's table creation (their
    migrations) run one process at a time, and both find one experiment afterwards."""
    uri, optuna_url = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE, uri, optuna_url], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    firsts = [p.stdout.readline() for p in procs]  # both have imported everything (or failed)
    for p in procs:  # both released together
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [first + p.communicate()[0] for first, p in zip(firsts, procs)]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "created" in out, out[-3000:]
    from mlflow.tracking import MlflowClient
    import optuna

    assert [e.name for e in MlflowClient(uri).search_experiments()].count("tiny") == 1
    optuna.create_study(storage=optuna_url, study_name="after")  # the storage is whole


def test_a_search_lost_before_ray_saved_it_is_settled_and_another_spec_is_refused(tmp_path):
    """What `--resume` does before running again a search whose driver died before Ray saved it:
    another spec or trial count is refused naming the field, and nothing is touched then (the
    tracking callback reconciles the rest: tests/test_search_e2e.py)."""
    import optuna
    from mlflow.tracking import MlflowClient

    from search.driver import settle_lost_start
    from search.frontier import Objective
    from search.spec import SpecError
    from search.tracking import Tracker

    uri, optuna_url = f"sqlite:///{tmp_path}/m.db", f"sqlite:///{tmp_path}/o.db"
    spec_yaml = "name: exp\ntrials: 3\nbase: {model: {name: mlp, hidden: [16]}}\n"
    tracker = Tracker(uri, "exp", "exp-1", [Objective(metric="val_accuracy", mode="max")], spec_yaml, {"trials": 3})
    lost = tracker.run_for("t1", "cges_t1", "cges", {"regularizer": {"name": "cges"}})
    study = optuna.create_study(storage=optuna_url, study_name="exp-1")
    study.ask()  # the dead driver's trial, RUNNING

    with pytest.raises(SpecError, match=r"trials: a resumed search runs the 3 trials it was started with"):
        settle_lost_start(uri, optuna_url, "exp", "exp-1", 4, spec_yaml)
    with pytest.raises(SpecError, match=r"--resume: the spec is not the one search exp-1 was started with"):
        settle_lost_start(uri, optuna_url, "exp", "exp-1", 3, spec_yaml.replace("[16]", "[300]"))
    assert MlflowClient(uri).get_run(lost).info.status == "RUNNING"  # nothing touched when refused

    settle_lost_start(uri, optuna_url, "exp", "exp-1", 3, "# the same spec, reformatted\n" + spec_yaml)  # accepted


@pytest.mark.parametrize("what", ["missing", "empty", "file"])
def test_resume_run_dir_that_is_no_search_is_one_line_naming_the_option(tmp_path, what):
    from search.driver import check_run_dir
    from search.spec import SpecError

    path = tmp_path / "ray" / "tiny-20261204-010000"
    if what == "empty":
        path.mkdir(parents=True)
    elif what == "file":
        path.parent.mkdir()
        path.write_text("")
    with pytest.raises(SpecError, match=r"--resume: not the Ray directory of a search") as e:
        check_run_dir(str(path))
    assert f"(got {str(path)!r}"[:60] in str(e.value) and "\n" not in str(e.value)  # long values are cut at 80
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "tuner.pkl").write_bytes(b"")
    assert check_run_dir(str(tmp_path / "ok")) == str(tmp_path / "ok")
