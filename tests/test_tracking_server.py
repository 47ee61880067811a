"""A search tracked by a real ``mlflow server`` process (SQLite backend, served artifacts) on
127.0.0.1, as on a cluster: killed mid-search and resumed, then ``frontier`` and ``export`` read
it back over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from test_search_e2e import TAG, _start, tiny

pytestmark = pytest.mark.ray


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--serve-artifacts",
         "--artifacts-destination", str(tmp_path / "served"), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            out = server.stdout.read() if server.poll() is not None else ""
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server did not start: {out[-3000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def test_search_through_a_tracking_server_survives_a_killed_driver_and_reads_back(tmp_path, mlflow_server):
    spec_dict = tiny(tmp_path, trials=4, concurrency=2, tracking_uri=mlflow_server,
                     optuna_storage=f"sqlite:///{tmp_path}/optuna.db")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict))
    work = tmp_path / "elsewhere"  # nothing may land in the working directory
    work.mkdir()
    first = _start(["search", str(path)], work, SPARSETUNE_FAULT="recorded:2")  # dies after 2 trials
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 137, out[-3000:]
    assert f"MLflow: {mlflow_server}" in out

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("tiny")
    [parent] = client.search_runs([exp.experiment_id], f"tags.`{TAG}.kind` = 'search'")
    assert parent.info.status == "RUNNING"  # the driver died: nothing closed it
    # the live frontier reached the server's artifact store while the search ran
    live = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "trials.csv" in live, live

    resumed = _start(["search", str(path), "--resume"], work)
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out[-3000:]
    runs = client.search_runs([exp.experiment_id], max_results=100)
    [parent] = [r for r in runs if r.data.tags.get(f"{TAG}.kind") == "search"]
    children = [r for r in runs if f"{TAG}.trial_id" in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert len({c.data.tags[f"{TAG}.trial_id"] for c in children}) == len(children) == 4
    assert {(c.info.status, c.data.tags[f"{TAG}.state"]) for c in children} == {("FINISHED", "complete")}
    # artifacts are served: a trial's exact config comes back over HTTP
    local = Path(client.download_artifacts(children[0].info.run_id, "config.yaml", str(tmp_path)))
    assert yaml.safe_load(local.read_text())["model"]["hidden"] == [16]
    assert not (tmp_path / "mlruns").exists() and not list(work.iterdir())

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    front = subprocess.run([sys.executable, "-m", "search.cli", "frontier", "--experiment", "tiny",
                            "--tracking-uri", mlflow_server, "--all"], cwd=work, env=env, text=True,
                           capture_output=True, timeout=300)
    assert front.returncode == 0, front.stderr[-3000:]
    assert sum(c.data.tags[f"{TAG}.trial_id"] in front.stdout for c in children) == 4
    export = subprocess.run([sys.executable, "-m", "search.cli", "export", "--experiment", "tiny",
                             "--tracking-uri", mlflow_server, "--out", str(tmp_path / "exported")], cwd=work,
                            env=env, text=True, capture_output=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    exported = sorted((tmp_path / "exported").glob("*.yaml"))
    on_front = [c for c in children if c.data.tags[f"{TAG}.pareto"] == "true"]
    assert len(exported) == len(on_front) > 0
    by_trial = {c.data.tags[f"{TAG}.trial_id"]: c for c in on_front}
    for f in exported:  # the exported file is the config the trial ran, as the server holds it
        [trial_id] = [t for t in by_trial if t in f.name]
        ran = Path(client.download_artifacts(by_trial[trial_id].info.run_id, "config.yaml",
                                             str(tmp_path / trial_id)))
        assert yaml.safe_load(f.read_text()) == yaml.safe_load(ran.read_text())
