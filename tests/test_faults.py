"""Faults during a search, with a real local Ray: a trial that raises, a trial whose loss becomes
NaN, a worker killed with SIGKILL, a node removed from a multi-node cluster. Invariants: the
search finishes, every trial is recorded in MLflow exactly once with the right status (FINISHED,
or FAILED with its error), finished trials are never re-run, and the frontier and hypervolume are
computed over all finished trials."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from search import pareto
from search.spec import SearchSpec, validate_spec
from search.run import run_search

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TAG = "sparsetune"
HERE = Path(__file__).parent


def corrupt_npz(path: Path, n: int = 200) -> Path:
    """A .npz whose X has an intact header but truncated data: it passes the pre-flight check
    (which reads headers only) and fails when a trial loads it."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, rng.normal(size=(n, 8)).astype(np.float32))
    ybuf = io.BytesIO()
    np.lib.format.write_array(ybuf, rng.integers(0, 3, size=n))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", buf.getvalue()[: len(buf.getvalue()) // 2])
        z.writestr("y.npy", ybuf.getvalue())
    return path


def base_spec(tmp_path: Path, **changes) -> dict:
    spec = {
        "name": "faults",
        "base": {"device": "cpu", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [16]},
                 "optim": {"epochs": 4, "lr": 0.1}},
        "space": {"optim/lr": {"type": "loguniform", "low": 0.05, "high": 0.2}},
        "trials": 4, "concurrency": 2, "seed": 0,
        "storage": str(tmp_path / "ray"), "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "checkpoint_every_s": 0.0,  # every epoch: the fault tests resume from mid-trial checkpoints
    }
    spec.update(changes)
    return spec


def runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("faults")
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get(f"{TAG}.kind") == "search"]
    children = [r for r in all_runs if f"{TAG}.trial_id" in r.data.tags]
    return client, parents, children


def study(path: str):
    [state] = sorted(Path(path).glob("searcher-state-*.pkl"))[-1:]
    with open(state, "rb") as f:
        return pickle.load(f)["_ot_study"]


def check_frontier_over_finished(client, parents, children, objectives: list[str], modes: list[str]):
    done = [c for c in children if c.data.tags[f"{TAG}.state"] == "complete"]
    values = np.array([[c.data.metrics[m] for m in objectives] for c in done])
    mask = pareto.nondominated_mask(values, modes)
    assert [c.data.tags[f"{TAG}.pareto"] == "true" for c in done] == list(mask)
    hv = client.get_metric_history(parents[0].info.run_id, "hypervolume")
    assert max(m.step for m in hv) == len(done)


def test_raising_and_diverging_trials_are_recorded_as_failed(ray_session, tmp_path):
    spec_dict = base_spec(tmp_path, trials=4, regularizers={
        "l1": {"lam": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        # a huge learning rate with a per-epoch prox: the loss becomes NaN in the first epoch
        "group_lasso": {"lam": 1e-3, "optim/lr": 1e12},
        # data that passes validation but cannot be read in the trial: the trial raises
        "growl": {"lambda1": 0.1, "data/name": "arrays", "data/path": str(corrupt_npz(tmp_path / "bad.npz"))},
    })
    spec_dict.pop("space")
    spec = SearchSpec.model_validate(spec_dict)
    validate_spec(spec)
    outcome = run_search(spec, yaml.safe_dump(spec_dict), quiet=True)
    assert outcome.complete

    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    by_family: dict[str, list] = {}
    for c in children:
        by_family.setdefault(c.data.tags[f"{TAG}.regularizer"], []).append(c)
    assert sorted((k, len(v)) for k, v in by_family.items()) == [("group_lasso", 1), ("growl", 1), ("l1", 2)]
    for c in by_family["l1"]:
        assert c.info.status == "FINISHED" and c.data.tags[f"{TAG}.state"] == "complete"
    [diverged] = by_family["group_lasso"]
    assert diverged.info.status == "FAILED" and diverged.data.tags[f"{TAG}.state"] == "failed"
    assert "TrainingDiverged" in diverged.data.tags[f"{TAG}.error"]
    assert "epoch 1" in diverged.data.tags[f"{TAG}.error"]
    [raised] = by_family["growl"]
    assert raised.info.status == "FAILED" and raised.data.tags[f"{TAG}.state"] == "failed"
    assert "Error" in raised.data.tags[f"{TAG}.error"]  # the exception, as Ray recorded it
    assert any(a.path == "error.txt" for a in client.list_artifacts(raised.info.run_id))
    states = sorted(t.state.name for t in study(outcome.path).trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    assert {r["trial_id"] for r in outcome.frontier.rows} == {c.data.tags[f"{TAG}.trial_id"] for c in by_family["l1"]}
    check_frontier_over_finished(client, parents, children, spec.objective_names(), spec.objective_modes())


def mid_trial(storage: Path, min_checkpoints: int = 2) -> bool:
    """Some trial is running and has written checkpoints: its last reported result (Ray's
    per-trial result.json, one JSON line per report) is not its final epoch yet."""
    for trial_dir in storage.glob("*/*"):
        lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").exists() else []
        try:
            last = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:  # a line being written
            continue
        if last is not None and last.get("final") == 0.0 and len(list(trial_dir.glob("checkpoint_*"))) >= min_checkpoints:
            return True
    return False


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _trial_workers() -> list[int]:
    """Trial actors of *this* process's Ray instance (its raylet is our child, the workers its
    children), never those of another Ray instance on the machine."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    mine = []
    for line in out.splitlines():
        if "ray::ImplicitFunc" not in line:
            continue
        pid = ancestor = int(line.split()[0])
        while ancestor > 1 and ancestor != os.getpid():
            ancestor = _parent(ancestor)
        if ancestor == os.getpid():
            mine.append(pid)
    return mine


def test_worker_killed_with_sigkill_is_retried_from_its_checkpoint(ray_session, tmp_path):
    spec_dict = base_spec(tmp_path, trials=3, concurrency=1)
    spec_dict["base"]["optim"]["epochs"] = 40
    spec = SearchSpec.model_validate(spec_dict)
    killed: list[int] = []
    finished = threading.Event()

    def killer():
        # no fixed deadline: on a loaded machine the first trial may take minutes to get going
        while not finished.is_set() and not killed:
            # once a running trial has written a few epochs' checkpoints, kill the worker running it
            if mid_trial(tmp_path / "ray"):
                for pid in _trial_workers():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        outcome = run_search(spec, yaml.safe_dump(spec_dict), quiet=True)
    finally:
        finished.set()
        thread.join()
    assert killed, "no trial worker was found to kill"
    assert outcome.complete

    client, parents, children = runs(tmp_path)
    assert len(children) == 3 and len({c.data.tags[f"{TAG}.trial_id"] for c in children}) == 3
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags[f"{TAG}.state"] == "complete"
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 41))  # each epoch once, also in the retried trial
    retried = [c for c in children if f"{TAG}.last_retry_error" in c.data.tags]
    assert len(retried) == 1  # the killed trial was retried (from its checkpoint) and finished
    assert [t.state.name for t in study(outcome.path).trials] == ["COMPLETE"] * 3
    check_frontier_over_finished(client, parents, children, spec.objective_names(), spec.objective_modes())


def test_multinode_search_survives_losing_a_worker_node(tmp_path):
    """Head + 2 worker nodes on this machine (ray.cluster_utils.Cluster), one removed mid-search.
    Runs in a subprocess: a process can join only one Ray cluster."""
    spec_dict = base_spec(tmp_path, trials=4, concurrency=2)
    spec_dict["base"]["optim"]["epochs"] = 30
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_dict))
    proc = subprocess.run([sys.executable, str(HERE / "multinode_search.py"), str(tmp_path / "spec.yaml")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["removed_node"] and report["complete"]

    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and len({c.data.tags[f"{TAG}.trial_id"] for c in children}) == 4
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags[f"{TAG}.state"] == "complete"
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 31))  # each epoch once
    assert any(f"{TAG}.last_retry_error" in c.data.tags for c in children)  # a trial lost its node
    spec = SearchSpec.model_validate(spec_dict)
    check_frontier_over_finished(client, parents, children, spec.objective_names(), spec.objective_modes())
