"""End-to-end searches with a real local Ray and a real SQLite MLflow store (tiny digits trials)."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from search import pareto
from search.cli import main
from search.spec import SearchSpec, validate_spec
from search.run import run_search

# trial data that takes 1 s to load: tests racing a clock against trials hold on any machine
SLOW_DIGITS = {"name": "python", "factory": f"{Path(__file__).parent / 'slow_data.py'}:digits",
               "kwargs": {"seconds": 1.0}}

pytestmark = pytest.mark.ray

TAG = "sparsetune"


def tiny(tmp_path: Path, **changes) -> dict:
    spec = {
        "name": "tiny",
        "base": {"device": "cpu", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [16]},
                 "optim": {"epochs": 3, "lr": 0.1}},
        "regularizers": {
            "cges": {"lam": {"type": "loguniform", "low": 1e-3, "high": 5e-2}},
            "growl": {"lambda1": {"type": "loguniform", "low": 0.05, "high": 2.0},
                      "p": {"type": "uniform", "low": 0.2, "high": 1.0}, "layers": "all"},
        },
        "trials": 6, "concurrency": 2, "seed": 0,
        "storage": str(tmp_path / "ray"), "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "checkpoint_every_s": 0.0,  # every epoch: these tests resume trials from mid-trial checkpoints
    }
    spec.update(changes)
    return spec


def run(spec_dict: dict):
    spec = SearchSpec.model_validate(spec_dict)
    validate_spec(spec)
    return spec, run_search(spec, yaml.safe_dump(spec_dict), quiet=True)


def mlflow_runs(tmp_path: Path, name: str = "tiny"):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(f"{TAG}.kind") == "search"]
    children = [r for r in runs if f"{TAG}.trial_id" in r.data.tags]
    return client, parents, children


def optuna_study(outcome):
    """The study as optuna-dashboard sees it: from the RDB storage, not from Ray's pickle."""
    import optuna

    return optuna.load_study(study_name=outcome.search_id, storage=outcome.optuna_storage)


def test_search_end_to_end(ray_session, tmp_path, monkeypatch, capsys):
    spec_dict = tiny(tmp_path)
    spec_dict["objectives"] = [{"metric": "val_accuracy", "mode": "max", "reference": 0.33},
                               {"metric": "params_nonzero", "mode": "min"}, {"metric": "flops_compact", "mode": "min"}]
    spec, outcome = run(spec_dict)
    assert outcome.complete
    client, parents, children = mlflow_runs(tmp_path)

    # one parent, one FINISHED child per trial, with metrics, params and tags
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6 and len({c.data.tags[f"{TAG}.trial_id"] for c in children}) == 6
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags[f"{TAG}.state"] == "complete"
        assert c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert c.data.tags[f"{TAG}.regularizer"] in ("cges", "growl")
        for key in ("val_accuracy", "test_accuracy", "params_nonzero", "flops_compact", "params_total"):
            assert key in c.data.metrics
        assert c.data.params["regularizer/name"] == c.data.tags[f"{TAG}.regularizer"]
        history = client.get_metric_history(c.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2, 3]  # each epoch once
        assert {a.path for a in client.list_artifacts(c.info.run_id)} >= {"config.yaml", "result.json",
                                                                           "compact_model.pt"}
    # conditional space: GrOWL's knobs never on a CGES trial and vice versa
    for c in children:
        if c.data.tags[f"{TAG}.regularizer"] == "cges":
            assert "regularizer/lambda1" not in c.data.params and "regularizer/lam" in c.data.params
        else:
            assert "regularizer/lam" not in c.data.params and "regularizer/p" in c.data.params
    # the Pareto tags agree with pareto.py on the children's own metrics
    names, modes = spec.objective_names(), spec.objective_modes()
    values = np.array([[c.data.metrics[m] for m in names] for c in children])
    mask = pareto.nondominated_mask(values, modes)
    assert [c.data.tags[f"{TAG}.pareto"] == "true" for c in children] == list(mask)
    # hypervolume logged after every finished trial; the last equals pareto.py's
    hv = client.get_metric_history(parents[0].info.run_id, "hypervolume")
    assert sorted(m.step for m in hv) == [1, 2, 3, 4, 5, 6]
    dense = np.array([children[0].data.metrics["params_total"], children[0].data.metrics["flops_dense"]])
    normalised = np.column_stack([values[:, 0], values[:, 1] / dense[0], values[:, 2] / dense[1]])
    expected = pareto.hypervolume(normalised, modes, [0.33, 1.0, 1.0])
    assert max(hv, key=lambda m: m.step).value == pytest.approx(expected)
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {
        "trials.csv", "frontier.csv", "frontier.html", "frontier_params.png", "frontier_flops.png", "spec.yaml",
        "importances.json"}
    # one hypervolume: the metric, the parent's description, the outcome and `sparsetune frontier`
    last = max(hv, key=lambda m: m.step).value
    assert outcome.frontier.hypervolume == last
    note = client.get_run(parents[0].info.run_id).data.tags["mlflow.note.content"]
    assert f"**Hypervolume:** {last:.4f}" in note and note.count("](#/experiments/") == int(mask.sum())
    html = Path(client.download_artifacts(parents[0].info.run_id, "frontier.html", str(tmp_path / "h"))).read_text()
    assert "Pareto-optimal" in html and "higher is better" in html and "cges" in html
    trials_csv = Path(client.download_artifacts(parents[0].info.run_id, "trials.csv", str(tmp_path / "t"))).read_text()
    flags = [line.split(",")[3] for line in trials_csv.splitlines()[1:]]
    assert flags == sorted(flags, key=lambda f: f != "True") and flags.count("True") == int(mask.sum())
    # the study stayed multi-objective, and what Optuna was told matches MLflow
    study = optuna_study(outcome)
    assert len(study.directions) == 3
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6 and all(len(t.values) == 3 for t in complete)
    assert sorted(tuple(t.values) for t in complete) == sorted(map(tuple, values.tolist()))

    # export the frontier, then re-run an exported config: same parameter counts
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["export", "--experiment", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "exp")]) == 0
    files = sorted((tmp_path / "exp").glob("rank*.yaml"))
    assert len(files) == int(mask.sum())
    chosen = files[0]
    assert main(["train", str(chosen), "--out", str(tmp_path / "rerun"), "--quiet"]) == 0
    rerun = json.loads((tmp_path / "rerun/result.json").read_text())
    index = {row.split(",")[0]: row for row in (tmp_path / "exp/index.csv").read_text().splitlines()[1:]}
    original = next(c for c in children if c.data.tags[f"{TAG}.trial_id"] in chosen.name)
    capsys.readouterr()
    assert main(["frontier", "--experiment", "tiny", "--tracking-uri", uri]) == 0
    assert f"hypervolume {last:.4f}" in capsys.readouterr().out
    assert rerun["params_nonzero"] == original.data.metrics["params_nonzero"]
    assert rerun["flops_compact"] == original.data.metrics["flops_compact"]
    assert rerun["val_accuracy"] == pytest.approx(original.data.metrics["val_accuracy"], abs=0.005)
    assert chosen.name in index
    # the exported YAML is exactly the config the trial ran (the MLflow artifact)
    artifact = client.download_artifacts(original.info.run_id, "config.yaml", str(tmp_path / "dl"))
    assert yaml.safe_load(Path(artifact).read_text()) == yaml.safe_load(chosen.read_text())


def test_scheduler_stopped_trials_are_pruned_not_on_frontier(ray_session, tmp_path):
    spec_dict = tiny(tmp_path, trials=8, concurrency=1,
                     scheduler={"type": "asha", "metric": "val_loss", "mode": "min", "grace_period": 1,
                                "reduction_factor": 2})
    spec_dict["base"]["optim"]["epochs"] = 4
    spec_dict["space"] = {"optim/lr": {"type": "loguniform", "low": 1e-3, "high": 0.3}}
    spec, outcome = run(spec_dict)
    assert outcome.complete
    _, _, children = mlflow_runs(tmp_path)
    pruned = [c for c in children if c.data.tags[f"{TAG}.state"] == "pruned"]
    complete = [c for c in children if c.data.tags[f"{TAG}.state"] == "complete"]
    assert len(children) == 8 and pruned and complete
    assert all(c.info.status == "KILLED" and c.data.tags[f"{TAG}.pareto"] == "false" for c in pruned)
    assert all(int(c.data.tags[f"{TAG}.pruned_at_epoch"]) < 4 for c in pruned)
    study = optuna_study(outcome)
    assert len(study.directions) == 3  # still multi-objective with a scheduler
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") == len(pruned) and states.count("COMPLETE") == len(complete)
    assert {r["trial_id"] for r in outcome.frontier.rows} == {c.data.tags[f"{TAG}.trial_id"] for c in complete}


def test_moasha_prunes_dominated_trials_on_digits(ray_session, tmp_path):
    """MO-ASHA on the spec's objectives: stopped trials are PRUNED in Optuna, tagged pruned in
    MLflow, and never on the frontier, which holds exactly the complete trials' optimum."""
    spec_dict = tiny(tmp_path, trials=6, concurrency=1,
                     objectives=[{"metric": "val_accuracy", "mode": "max"}, {"metric": "params_nonzero", "mode": "min"}],
                     scheduler={"type": "moasha", "grace_period": 1, "reduction_factor": 2})
    spec_dict["base"]["optim"]["epochs"] = 4
    spec_dict["space"] = {"optim/lr": {"type": "loguniform", "low": 1e-3, "high": 0.3}}
    spec, outcome = run(spec_dict)
    assert outcome.complete
    _, _, children = mlflow_runs(tmp_path)
    pruned = [c for c in children if c.data.tags[f"{TAG}.state"] == "pruned"]
    complete = [c for c in children if c.data.tags[f"{TAG}.state"] == "complete"]
    assert len(children) == 6 and pruned and complete
    assert all(c.info.status == "KILLED" and c.data.tags[f"{TAG}.pareto"] == "false" for c in pruned)
    assert all(int(c.data.tags[f"{TAG}.pruned_at_epoch"]) in (1, 2) for c in pruned)  # rungs below max_t 4
    # the per-epoch objectives it ranked by were logged for every trial
    assert all("flops_estimate" in c.data.metrics and "weights_nonzero" in c.data.metrics for c in children)
    study = optuna_study(outcome)
    assert len(study.directions) == 2
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") == len(pruned) and states.count("COMPLETE") == len(complete)
    rows = {r["trial_id"] for r in outcome.frontier.rows}  # the finished trials the frontier is taken from
    on_front = {r["trial_id"] for r, keep in zip(outcome.frontier.rows, outcome.frontier.mask) if keep}
    assert rows == {c.data.tags[f"{TAG}.trial_id"] for c in complete} and on_front
    assert not on_front & {c.data.tags[f"{TAG}.trial_id"] for c in pruned}


def _start(args: list[str], cwd: Path, **env_changes: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_changes}
    return subprocess.Popen([sys.executable, "-m", "search.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_interrupted_search_resumes_without_loss_or_duplicates(tmp_path):
    # checkpoints only at the end: an interrupted trial starts over and reports its epochs again
    spec_dict = tiny(tmp_path, trials=6, concurrency=1, checkpoint_every_s=1e6)
    spec_dict["base"]["data"] = SLOW_DIGITS  # the interrupt lands before the last trials end
    spec_dict["base"]["optim"]["epochs"] = 6
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict))
    proc = _start(["search", str(path)], tmp_path)
    seen = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[  2/6]") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    seen.append(out)
    assert proc.returncode == 130, "".join(seen)[-3000:]
    assert "--resume" in "".join(seen)

    resumed = _start(["search", str(path), "--resume"], tmp_path)
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out[-3000:]
    [header] = [line for line in out.splitlines() if line.startswith("resuming search")]
    assert "6 trials" in header, header
    assert "optuna-dashboard sqlite:///" in out
    for noise in ("A new study created", "Creating initial MLflow database", "Token authentication"):
        assert noise not in "".join(seen) + out, noise

    client, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags[f"{TAG}.trial_id"] for c in children]
    assert len(trial_ids) == 6 and len(set(trial_ids)) == 6  # none lost, none duplicated
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags[f"{TAG}.state"] == "complete"
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "train_loss")]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # every epoch recorded, once
    # the trials finished before the interruption were not run again
    progress = re.compile(r"^\[\s*\d+/6\] \S+\s+(\w+) ")
    finished_first = [m.group(1) for m in map(progress.match, "".join(seen).splitlines()) if m]
    finished_after = [m.group(1) for m in map(progress.match, out.splitlines()) if m]
    numbers = [int(line[1:4]) for line in out.splitlines() if progress.match(line)]
    assert numbers == list(range(len(finished_first) + 1, 7))  # the count goes on where it stopped
    assert finished_first and not set(finished_first) & set(finished_after)
    assert sorted(finished_first + finished_after) == sorted(trial_ids)
    hv = client.get_metric_history(parents[0].info.run_id, "hypervolume")
    assert max(m.step for m in hv) == 6
    # the Optuna study lives on in the RDB storage: every trial, told once
    import optuna

    study = optuna.load_study(study_name=parents[0].info.run_name, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6


def test_driver_killed_at_every_point_of_a_trial_resumes_with_nothing_lost_or_duplicated(tmp_path):
    """The driver dies (``os._exit``, as ``kill -9``: no handler runs) at each point between the
    writes of a trial's life (search/faults.py), one point per round, then by a real SIGKILL while
    trials run; each ``--resume`` goes on. At the end: exit 0, every trial complete exactly once
    in MLflow and in the Optuna study with the same values, no run left open, and the frontier
    and hypervolume those of the recorded trials."""
    from search.faults import POINTS
    from search.frontier import Frontier
    from search.store import ClientReader, load_frontier

    import optuna

    spec_dict = tiny(tmp_path, trials=12, concurrency=2)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict))
    rounds = [("asked", 3), ("reported", 4), ("told", 1), ("artifacts", 1), ("recorded", 1), ("saving", 3)]
    assert {p for p, _ in rounds} == set(POINTS)
    log = []
    for i, (point, k) in enumerate(rounds):
        proc = _start(["search", str(path)] + (["--resume"] if i else []), tmp_path,
                      SPARSETUNE_FAULT=f"{point}:{k}")
        out, _ = proc.communicate(timeout=300)
        log.append(f"--- {point}:{k} rc={proc.returncode}\n{out}")
        assert proc.returncode == 137, "".join(log)[-4000:]  # the fault fired: killed there
        if i == 1:  # killed right after an Optuna ask, before Ray could save that trial: it runs again
            assert re.search(r"reconciled: \d+ trials .*; [1-9]\d* started then run again", out), out[-3000:]
    proc = _start(["search", str(path), "--resume"], tmp_path)  # a real kill -9 while trials run
    for line in proc.stdout:
        log.append(line)
        if line.startswith("  start"):
            break
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    final = _start(["search", str(path), "--resume"], tmp_path)
    out, _ = final.communicate(timeout=400)
    log.append(out)
    assert final.returncode == 0, "".join(log)[-6000:]

    client, [parent], children = mlflow_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    ids = [c.data.tags[f"{TAG}.trial_id"] for c in children]
    assert len(ids) == 12 and len(set(ids)) == 12, "".join(log)[-6000:]
    assert {(c.info.status, c.data.tags[f"{TAG}.state"]) for c in children} == {("FINISHED", "complete")}
    study = optuna.load_study(study_name=parent.info.run_name, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 12
    by_id = {c.data.tags[f"{TAG}.trial_id"]: c for c in children}
    objectives = SearchSpec.model_validate(spec_dict).objective_names()
    for t in study.trials:  # each Optuna trial is one MLflow run, with the same objective values
        run = by_id[t.user_attrs["ray_trial_id"]]
        assert t.values == [run.data.metrics[m] for m in objectives]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == [1, 2, 3]  # every epoch once
    frontier = load_frontier(ClientReader(client), parent.info.experiment_id, parent.info.run_id,
                             SearchSpec.model_validate(spec_dict).objectives)
    again = Frontier.of(frontier.rows, SearchSpec.model_validate(spec_dict).objectives)
    assert len(frontier.rows) == 12 and (frontier.mask == again.mask).all()
    pareto = {c.data.tags[f"{TAG}.trial_id"] for c in children if c.data.tags[f"{TAG}.pareto"] == "true"}
    assert pareto == {r["trial_id"] for r, keep in zip(again.rows, again.mask) if keep}
    hv = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert max(m.step for m in hv) == 12
    assert [m.value for m in hv if m.step == 12][-1] == pytest.approx(again.hypervolume, rel=1e-12)


def _two_trials_running(tmp_path: Path) -> tuple[Path, subprocess.Popen, list[str]]:
    """A 4-trial search whose trials train for hours on any machine, read until both of its first
    two are running (or it ended): its spec, its process and the lines it printed."""
    spec_dict = tiny(tmp_path, trials=4, concurrency=2)
    spec_dict["base"]["data"] = SLOW_DIGITS
    spec_dict["base"]["optim"]["epochs"] = 100_000
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict))
    proc = _start(["search", str(path)], tmp_path)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "(2 running" in line:
            break
    return path, proc, seen


def test_two_ctrl_c_stop_at_once_leave_no_run_running_and_say_how_to_resume(tmp_path):
    path, proc, seen = _two_trials_running(tmp_path)
    proc.send_signal(signal.SIGINT)  # their runs were opened before the start lines
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    seen.append(out)
    text = "".join(seen)
    assert proc.returncode == 130, text[-3000:]
    assert f"sparsetune search {path} --resume" in text, text[-3000:]
    client, [parent], children = mlflow_runs(tmp_path)
    assert parent.info.status == "KILLED" and len(children) == 2
    for c in children:
        assert c.info.status == "KILLED" and c.data.tags[f"{TAG}.state"] == "interrupted"


def test_sigterm_stops_like_ctrl_c_exits_130_and_leaves_no_run_running(tmp_path):
    """`kill PID` (what a scheduler, systemd or `timeout` sends) stops the search as a first Ctrl-C
    does, not with Ray's C++ stack dump and an abort (exit 134) that left every run RUNNING."""
    path, proc, seen = _two_trials_running(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    seen.append(out)
    text = "".join(seen)
    assert proc.returncode == 130, text[-3000:]
    assert f"interrupted; continue it with: sparsetune search {path} --resume" in text, text[-3000:]
    for dump in ("SIGTERM received", "Aborted", "PC: @", "Traceback"):
        assert dump not in text, text[-3000:]
    client, [parent], children = mlflow_runs(tmp_path)
    assert parent.info.status == "KILLED" and len(children) == 2
    for c in children:
        assert c.info.status == "KILLED" and c.data.tags[f"{TAG}.state"] == "interrupted"
    # Tune saved the experiment (its state, not only tuner.pkl): --resume finds it and restores it
    from search.driver import ray_saved_state
    from search.run import find_resumable

    assert find_resumable(str(tmp_path / "ray"), "tiny") == f"{tmp_path / 'ray'}/{parent.info.run_name}"
    assert ray_saved_state(f"{tmp_path / 'ray'}/{parent.info.run_name}")


def test_resume_of_a_search_killed_before_ray_saved_it_runs_its_spec(tmp_path):
    """`kill -9` of the driver in its first seconds leaves tuner.pkl (all `Tuner.can_restore` asks
    for) but no experiment state: restoring it ran one trial of the built-in defaults (hidden
    [300], 10 epochs, device auto) and exited 130. A resume runs the spec under the same id."""
    spec_dict = tiny(tmp_path, trials=3, concurrency=1)
    spec_dict["base"]["optim"]["epochs"] = 2
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict))
    proc = _start(["search", str(path)], tmp_path)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("  Ray storage:"):
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
    proc.communicate(timeout=60)
    [search_dir] = (tmp_path / "ray").iterdir()
    assert (search_dir / "tuner.pkl").exists(), "".join(seen)
    # how the reported search was left: Tune had not saved the experiment yet (on a slow machine it
    # has not either; on a fast one it may have, so what it saved is removed)
    for saved in ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl"):
        for f in search_dir.glob(saved):
            f.unlink()

    refused = _start(["search", str(path), "--resume", "--trials", "5"], tmp_path)
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode == 2, out[-3000:]
    assert "trials: a resumed search runs the 3 trials it was started with" in out, out[-3000:]

    resumed = _start(["search", str(path), "--resume"], tmp_path)
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out[-3000:]
    assert f"resuming search {search_dir.name}: 3 trials" in out, out[-3000:]
    client, [parent], children = mlflow_runs(tmp_path)
    assert parent.info.status == "FINISHED" and parent.info.run_name == search_dir.name
    complete = [c for c in children if c.data.tags[f"{TAG}.state"] == "complete"]
    assert len(complete) == 3
    for c in complete:  # the spec's network and training, not the built-in defaults
        assert c.data.params["model/hidden"] == "[16]" and c.data.params["optim/epochs"] == "2"
        assert c.data.params["device"] == "cpu"
    # the dead driver's started trials ran again (their Optuna trials, under new Tune trials): 3
    # trials in all, each once in MLflow and in the study, nothing left open or failed
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    import optuna

    study = optuna.load_study(study_name=search_dir.name, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.trials) == sorted(
        c.data.tags[f"{TAG}.trial_id"] for c in children)


def test_relative_data_path_is_resolved_where_the_search_starts(ray_session, tmp_path, monkeypatch):
    """Ray runs trials in their own directories: a relative path in the spec means the directory
    the search was started from (here not the directory Ray was started from)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    y = (X[:, 0] > 0).astype(int)
    (tmp_path / "data").mkdir()
    rows = ["a,b,c,d,e,f,label"] + [",".join(f"{v:.4f}" for v in x) + f",{t}" for x, t in zip(X, y)]
    (tmp_path / "data" / "table.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path / "data")
    spec_dict = tiny(tmp_path, trials=2, concurrency=1)
    spec_dict["base"]["data"] = {"name": "arrays", "path": "table.csv", "target": "label"}
    spec_dict["base"]["optim"]["epochs"] = 1
    spec, outcome = run(spec_dict)
    assert outcome.complete and not outcome.failures
    _, _, children = mlflow_runs(tmp_path)
    assert [c.data.tags[f"{TAG}.state"] for c in children] == ["complete", "complete"]
    assert {c.data.params["data/path"] for c in children} == {str(tmp_path / "data" / "table.csv")}


def test_all_failed_search_exits_1_with_one_line_per_cause_and_no_retry(ray_session, tmp_path, monkeypatch, capsys):
    """A deterministic failure (unreadable data) is recorded at once, not retried from a
    checkpoint; a search where no trial completed exits non-zero and says why, once per cause."""
    from test_faults import corrupt_npz

    spec_dict = tiny(tmp_path, trials=3, concurrency=1, max_failures=2)
    spec_dict["base"]["data"] = {"name": "arrays", "path": str(corrupt_npz(tmp_path / "bad.npz"))}
    spec_dict["base"]["optim"]["epochs"] = 1
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict))
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "3 of 3 trials failed:" in err
    cause_lines = [line for line in err.splitlines() if line.startswith("  3 × ")]
    assert len(cause_lines) == 1, err
    assert "no trial completed" in err and "export it with" not in err
    client, parents, children = mlflow_runs(tmp_path)
    assert len(children) == 3
    for c in children:
        assert c.info.status == "FAILED" and c.data.tags[f"{TAG}.state"] == "failed"
        assert f"{TAG}.last_retry_error" not in c.data.tags  # never retried
        error = Path(client.download_artifacts(c.info.run_id, "error.txt", str(tmp_path / c.info.run_id))).read_text()
        assert error.count("Traceback (most recent call last)") == 1
    note = parents[0].data.tags["mlflow.note.content"]
    assert "**Failures** (3 trials)" in note and cause_lines[0].strip()[len("3 × "):] in note


def test_same_spec_and_seed_give_the_same_search_with_concurrency_1(ray_session, tmp_path):
    def trials(folder: Path):
        folder.mkdir()
        spec_dict = tiny(folder, trials=5, concurrency=1)
        spec_dict["base"]["optim"]["epochs"] = 2
        spec_dict["space"] = {"optim/lr": {"type": "loguniform", "low": 0.02, "high": 0.3}}
        spec, outcome = run(spec_dict)
        assert spec.reproducible and outcome.complete
        study = optuna_study(outcome)
        return [(t.user_attrs["regularizer"], t.params, t.values) for t in study.trials]

    first, second = trials(tmp_path / "a"), trials(tmp_path / "b")
    assert len(first) == 5 and first == second


def test_time_budget_stops_the_search_and_resume_goes_on_with_the_trials_not_started(
        ray_session, tmp_path, monkeypatch, capsys):
    """Far more trials than the budget allows: the search stops when the budget is spent and exits
    0; the trial running then is `stopped` (not failed), the trials not started are no failures
    (no run, no Optuna trial), the parent records the outcome; `--resume` runs trials not started
    yet, with a fresh budget, and never runs a recorded trial again."""
    # the budget must cover starting the trials' worker (torch imports: 30 s on a loaded 2-core
    # machine); each trial's data takes 1 s to load, so 200 trials cannot finish in it on any machine
    spec_dict = tiny(tmp_path, trials=200, concurrency=1, time_budget_s=60.0)
    spec_dict["base"]["data"] = SLOW_DIGITS
    spec_dict["base"]["optim"]["epochs"] = 2
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict))
    monkeypatch.chdir(tmp_path)
    progress = re.compile(r"^\[\s*(\d+)/200\] \S+\s+(\w+) ")
    outcome_tag = re.compile(r"^time budget of 1m(?:00|10)s reached: (\d+) trials not started \(continue with --resume\)$")

    def check_round() -> tuple[dict[str, str], list[tuple[int, str]], str]:
        out, err = capsys.readouterr()
        assert "time budget reached; continue it with: " in err and "--resume" in err, (err, out[-4000:])
        assert "failed" not in err
        client, [parent], children = mlflow_runs(tmp_path)
        assert parent.info.status == "KILLED"  # not complete: resumable
        not_started = int(outcome_tag.match(parent.data.tags[f"{TAG}.outcome"]).group(1))
        assert not_started == 200 - len(children) > 0
        assert f"reached: {not_started} trials not started" in parent.data.tags["mlflow.note.content"]
        states = {c.data.tags[f"{TAG}.trial_id"]: c.data.tags[f"{TAG}.state"] for c in children}
        assert set(states.values()) <= {"complete", "stopped"} and "complete" in states.values(), (states, out[-3000:])
        for c in children:
            if c.data.tags[f"{TAG}.state"] == "stopped":  # the trial the budget interrupted
                assert c.info.status == "KILLED" and c.data.tags[f"{TAG}.pareto"] == "false"
                assert int(c.data.tags[f"{TAG}.stopped_at_epoch"]) < 2
            else:
                assert c.info.status == "FINISHED"
        assert len({c.info.run_id for c in children}) == len(states) == len(children)  # no duplicate
        # Optuna was asked only for the trials that started, and none of them failed
        import optuna

        study = optuna.load_study(study_name=parent.info.run_name, storage=f"sqlite:///{tmp_path}/optuna.db")
        assert len(study.trials) == len(children)
        assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
        lines = [(int(m.group(1)), m.group(2)) for m in map(progress.match, out.splitlines()) if m]
        return states, lines, out

    assert main(["search", str(path)]) == 0
    first, first_lines, out = check_round()
    assert [n for n, _ in first_lines] == list(range(1, len(first) + 1))
    assert "time budget 1m00s" in out

    # a resume runs what it was started with: another trial count is refused, a new budget is taken
    assert main(["search", str(path), "--resume", "--trials", "300"]) == 2
    assert "a resumed search runs the 200 trials it was started with" in capsys.readouterr().err
    assert main(["search", str(path), "--resume", "--time-budget", "70"]) == 0
    second, second_lines, out = check_round()
    assert "resuming search" in out
    [header] = [line for line in out.splitlines() if line.startswith("resuming search")]
    assert "200 trials" in header and "time budget 1m10s" in header, header
    assert len(second) > len(first)
    assert {t: second[t] for t in first} == first  # recorded trials kept as they were, not run again
    assert {t for _, t in second_lines} == set(second) - set(first)  # only new trials ran
    assert [n for n, _ in second_lines] == list(range(len(first) + 1, len(second) + 1))  # the count goes on
