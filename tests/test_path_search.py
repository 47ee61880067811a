"""A search over sparsity paths: every point of every trial is a frontier candidate, with its own
nested MLflow run, its rows in trials.csv / frontier.csv, and an exported config that re-runs it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.cli import main
from search.run import run_search
from search.spec import SearchSpec, validate_spec

pytestmark = pytest.mark.ray

TAG = "sparsetune"


def _searched(spec_dict: dict, tmp_path: Path):
    """Run the search of ``spec_dict`` to completion; its spec, outcome, MLflow client, parent run,
    trial runs and point runs."""
    spec = SearchSpec.model_validate(spec_dict)
    validate_spec(spec)
    outcome = run_search(spec, yaml.safe_dump(spec_dict), quiet=True)
    assert outcome.complete
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(spec_dict["name"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get(f"{TAG}.kind") == "search")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    points = [r for r in runs if r.data.tags.get(f"{TAG}.search_parent") == parent.info.run_id]
    return spec, outcome, client, parent, trials, points


def test_a_path_search_records_every_point_as_a_candidate(ray_session, tmp_path, monkeypatch):
    spec_dict = {
        "name": "paths",
        "base": {"device": "cpu", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [16]},
                 "optim": {"epochs": 1, "lr": 0.1},
                 "path": {"targets": [0.3, 0.6], "finetune_epochs": 1}},
        "regularizers": {"group_lasso": {"lam": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
                         "magnitude": {}},
        "trials": 2, "concurrency": 1, "seed": 0,
        "storage": str(tmp_path / "ray"), "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
    }
    spec, outcome, client, parent, trials, points = _searched(spec_dict, tmp_path)
    assert len(trials) == 2 and all(t.data.tags[f"{TAG}.path"] == "true" for t in trials)
    # one nested run per point: under its trial's run, complete, its own metrics and artifacts
    assert len(points) == 4
    by_trial = {t.info.run_id: t for t in trials}
    for p in points:
        trial = by_trial[p.data.tags["mlflow.parentRunId"]]
        assert p.data.tags[f"{TAG}.trial_id"] == trial.data.tags[f"{TAG}.trial_id"]
        assert p.info.status == "FINISHED" and p.data.tags[f"{TAG}.state"] == "complete"
        k = int(p.data.tags[f"{TAG}.point"])
        assert p.data.metrics["point"] == k and p.data.metrics["target"] == [0.3, 0.6][k]
        assert p.data.metrics["epoch"] == 2 * (k + 1)  # epochs trained up to this point
        assert {a.path for a in client.list_artifacts(p.info.run_id)} >= {"config.yaml", "result.json",
                                                                           "compact_model.pt"}
        assert p.data.params["path/targets"] == str([0.3, 0.6][:k + 1])
    # the last point is the trial's own final result
    for t in trials:
        last = next(p for p in points if p.data.tags["mlflow.parentRunId"] == t.info.run_id
                    and p.data.tags[f"{TAG}.point"] == "1")
        assert last.data.metrics["test_accuracy"] == t.data.metrics["test_accuracy"]
    # the frontier is over points: trials.csv has one row per point, with trial_id, point, target
    assert len(outcome.frontier.rows) == 4
    local = client.download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path / "t"))
    rows = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert list(rows[0])[:3] == ["trial_id", "point", "target"]
    assert sorted((r["trial_id"], r["point"]) for r in rows) == sorted(
        (p.data.tags[f"{TAG}.trial_id"], str(float(p.data.tags[f"{TAG}.point"]))) for p in points)
    assert sum(r["pareto"] == "True" for r in rows) == int(outcome.frontier.mask.sum())
    # the study was told one point per trial: the one with the largest hypervolume of its own
    import optuna

    study = optuna.load_study(study_name=outcome.search_id, storage=outcome.optuna_storage)
    told = sorted(tuple(t.values) for t in study.trials)
    names = spec.objective_names()
    candidates = {tuple(p.data.metrics[m] for m in names) for p in points}
    assert len(told) == 2 and set(told) <= candidates

    # export the frontier; a point's exported config re-runs to exactly that point
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["export", "--experiment", "paths", "--tracking-uri", uri, "--out", str(tmp_path / "exp")]) == 0
    files = sorted((tmp_path / "exp").glob("rank*.yaml"))
    assert files and all("_p00" in f.name or "_p001" in f.name for f in files)
    first = next((f for f in files if f.name.endswith("_p000.yaml")), files[0])
    exported = yaml.safe_load(first.read_text())
    point = next(p for p in points if first.name.endswith(
        f"{p.data.tags[f'{TAG}.trial_id']}_p{int(p.data.tags[f'{TAG}.point']):03d}.yaml"))
    assert exported["path"]["targets"] == [0.3, 0.6][:int(point.data.tags[f"{TAG}.point"]) + 1]
    assert main(["train", str(first), "--out", str(tmp_path / "rerun"), "--quiet", "--threads", "1"]) == 0
    rerun = json.loads((tmp_path / "rerun/result.json").read_text())
    for key in ("test_accuracy", "val_accuracy", "params_compact", "flops_compact"):
        assert rerun[key] == point.data.metrics[key], key


def test_a_path_trial_stopped_by_the_scheduler_keeps_the_points_it_measured(tmp_path):
    """MO-ASHA (or ASHA) stops a path trial at a stage: the trial's run is PRUNED, never a row,
    but every point it measured before that stays a complete frontier candidate, across a fresh
    load of the store (what ``frontier`` and a resumed driver read)."""
    from search.spec import Objective
    from search.store import candidate_of, load_frontier
    from search.tracking import Tracker

    objectives = [Objective(metric="val_accuracy", mode="max"), Objective(metric="params_nonzero", mode="min")]
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri, "paths", "paths-1", objectives, "name: paths\n", {"trials": 2})
    config = {"data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [8]}, "optim": {"epochs": 1},
              "regularizer": {"name": "group_lasso", "lam": 0.01}, "path": {"targets": [0.3, 0.6, 0.9]}}
    run = tracker.run_for("t1", "group_lasso_t1", "group_lasso", config)
    for k, (acc, params) in enumerate([(0.95, 700), (0.93, 400)]):
        tracker.point(run, "t1", {"point": k, "target": [0.3, 0.6][k], "epoch": 2 * (k + 1),
                                  "val_accuracy": acc, "params_nonzero": params}, None)
    tracker.pruned(run, 4)  # stopped at stage 2, before its third point
    other = tracker.run_for("t2", "group_lasso_t2", "group_lasso", config)
    tracker.point(other, "t2", {"point": 0, "target": 0.3, "epoch": 2, "val_accuracy": 0.5, "params_nonzero": 800},
                  None)
    client = MlflowClient(uri)
    frontier = load_frontier(tracker.reader, tracker.experiment_id, tracker.parent_id, objectives)
    assert sorted(r["candidate"] for r in frontier.rows) == sorted(
        [candidate_of("t1", 0), candidate_of("t1", 1), candidate_of("t2", 0)])
    on = {r["candidate"] for r, m in zip(frontier.rows, frontier.mask) if m}
    assert on == {candidate_of("t1", 0), candidate_of("t1", 1)}  # t2's point is dominated
    assert client.get_run(run).info.status == "KILLED"
    assert client.get_run(run).data.tags[f"{TAG}.state"] == "pruned"


def test_mo_asha_ranks_path_trials_at_their_points_and_a_stopped_one_keeps_them(ray_session, tmp_path):
    """MO-ASHA in a path search: rungs are stages. Every trial measures its first point; one the
    scheduler stops there is PRUNED in MLflow and Optuna but keeps that point as a candidate; one
    it lets go measures every point. (Which trials stop depends on their values: the assertions
    hold either way.)"""
    import optuna

    spec_dict = {
        "name": "paths-moasha",
        "base": {"device": "cpu", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [16]},
                 "optim": {"epochs": 1, "lr": 0.1}, "path": {"targets": [0.3, 0.6], "finetune_epochs": 0}},
        "regularizers": {"magnitude": {"every": 5}},
        "space": {"optim/lr": {"type": "loguniform", "low": 0.01, "high": 0.3}},
        "objectives": [{"metric": "val_accuracy", "mode": "max"}],
        "scheduler": {"type": "moasha", "grace_period": 1, "reduction_factor": 100},
        "trials": 4, "concurrency": 1, "seed": 0,
        "storage": str(tmp_path / "ray"), "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
    }
    spec, outcome, client, parent, trials, points = _searched(spec_dict, tmp_path)
    assert len(trials) == 4
    study = optuna.load_study(study_name=outcome.search_id, storage=outcome.optuna_storage)
    told = {t.user_attrs["ray_trial_id"]: t.state.name for t in study.trials}
    for t in trials:
        tid, state = t.data.tags[f"{TAG}.trial_id"], t.data.tags[f"{TAG}.state"]
        mine = sorted(int(p.data.tags[f"{TAG}.point"]) for p in points if p.data.tags[f"{TAG}.trial_id"] == tid)
        assert state in ("complete", "pruned")
        # stopped at its first rung (stage 1): its first point only; else both
        assert mine == ([0] if state == "pruned" else [0, 1]), (tid, state, mine)
        assert told[tid] == ("PRUNED" if state == "pruned" else "COMPLETE")
        history = client.get_metric_history(t.info.run_id, "stages_done")
        assert [int(m.value) for m in history] == [k + 1 for k in mine]  # reported at each point
    assert {r["candidate"] for r in outcome.frontier.rows} == {
        f"{p.data.tags[f'{TAG}.trial_id']}/p{int(p.data.tags[f'{TAG}.point']):03d}" for p in points}
