"""MLflow tracking of a search: the only MLflow writer, running in the Ray driver.

One MLflow experiment per spec name; in it one parent run per search (tag ``sparsetune.search_id``)
and one child run per trial (tags ``sparsetune.trial_id``, ``sparsetune.regularizer``,
``sparsetune.state`` = complete / pruned / failed, ``sparsetune.pareto`` = true / false) holding the
trial's flattened config as params, per-epoch metrics, the final metrics under their result.json
names, and its exact ``config.yaml``, ``result.json`` and ``compact_model.pt`` as artifacts (they
travel from the trial in its final checkpoint). On the parent: ``hypervolume`` after every finished
trial, and ``pareto.csv`` plus frontier plots.

Ray does not restore callbacks' state, so runs are always found again by their tags: a resumed
search reuses its parent run and its trials' child runs, never duplicating them.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from . import pareto
from .spec import DENSE_REFERENCE, Objective

__all__ = ["Tracker", "Frontier", "load_frontier", "find_search", "objective_matrix", "ARTIFACTS"]

ARTIFACTS = ("config.yaml", "result.json", "compact_model.pt")
TAG = "sparsetune"
MAX_TAG = 4000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def objective_matrix(rows: list[dict], objectives: list[Objective]) -> tuple[np.ndarray, np.ndarray]:
    """Objective values and hypervolume reference, normalised so searches compare.

    A "min" objective with a dense counterpart (``params_nonzero`` -> ``params_total``,
    ``flops_compact`` -> ``flops_dense``) is divided by it: 1.0 is the dense network, the
    reference. Other objectives keep their units; the reference is the objective's ``reference``
    or 0 for a "max" objective (accuracy). The hypervolume of the result is then in [0, 1] for the
    default objectives.
    """
    values = np.full((len(rows), len(objectives)), np.nan)
    reference = np.zeros(len(objectives))
    for j, o in enumerate(objectives):
        dense = DENSE_REFERENCE.get(o.metric) if o.mode == "min" and o.reference is None else None
        reference[j] = 1.0 if dense else (o.reference if o.reference is not None else 0.0)
        for i, row in enumerate(rows):
            v = row.get(o.metric)
            if v is None:
                continue
            values[i, j] = v / row[dense] if dense and row.get(dense) else v
    return values, reference


@dataclass
class Frontier:
    """The finished trials of one search, and which are Pareto-optimal."""

    rows: list[dict]  # one per finished trial: run_id, trial_id, regularizer, metrics, params
    objectives: list[Objective]
    mask: np.ndarray
    hypervolume: float

    @classmethod
    def of(cls, rows: list[dict], objectives: list[Objective]) -> Frontier:
        values, reference = objective_matrix(rows, objectives)
        modes = [o.mode for o in objectives]
        if not rows:
            return cls(rows, objectives, np.zeros(0, bool), 0.0)
        mask = pareto.nondominated_mask(values, modes)
        return cls(rows, objectives, mask, pareto.hypervolume(values, modes, reference))

    @property
    def points(self) -> list[dict]:
        """Pareto-optimal rows, most accurate (first objective) first."""
        first = self.objectives[0]
        chosen = [r for r, keep in zip(self.rows, self.mask) if keep]
        return sorted(chosen, key=lambda r: r.get(first.metric, 0), reverse=first.mode == "max")

    def columns(self) -> list[str]:
        metrics = [o.metric for o in self.objectives]
        extra = ["test_accuracy", "params_total", "params_unique", "sparsity", "flops_dense"]
        keys = sorted({k for r in self.rows for k in r if k.startswith("param:")})
        params = [k for k in keys if len({r.get(k) for r in self.rows}) > 1]  # what the search varied
        return ["trial_id", "regularizer", "pareto", *metrics, *[e for e in extra if e not in metrics],
                "run_id", *params]

    def to_csv(self, only_pareto: bool = False) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), extrasaction="ignore")
        writer.writeheader()
        for row, keep in zip(self.rows, self.mask):
            if keep or not only_pareto:
                writer.writerow({**row, "pareto": bool(keep)})
        return buf.getvalue()


def find_search(client: MlflowClient, experiment: str, search_id: str | None = None):
    """The parent run of a search (the latest one of the experiment if ``search_id`` is None)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None, None
    filt = f"tags.`{TAG}.kind` = 'search'"
    if search_id:
        filt += f" and tags.`{TAG}.search_id` = '{search_id}'"
    runs = client.search_runs([exp.experiment_id], filt, order_by=["attributes.start_time DESC"], max_results=1)
    return exp, (runs[0] if runs else None)


def _children(client: MlflowClient, experiment_id: str, parent_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _row(run) -> dict:
    tags = run.data.tags
    row = {"run_id": run.info.run_id, "trial_id": tags.get(f"{TAG}.trial_id", ""),
           "regularizer": tags.get(f"{TAG}.regularizer", ""), **run.data.metrics}
    row.update({f"param:{k}": v for k, v in run.data.params.items()})
    return row


def load_frontier(client: MlflowClient, experiment_id: str, parent_id: str,
                  objectives: list[Objective]) -> Frontier:
    """The frontier over a search's complete (finished, full-budget) trials, read from MLflow."""
    rows = [_row(r) for r in _children(client, experiment_id, parent_id)
            if r.info.status == "FINISHED" and r.data.tags.get(f"{TAG}.state") == "complete"]
    rows.sort(key=lambda r: r["trial_id"])
    return Frontier.of(rows, objectives)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """A SQLite store keeps its artifacts beside the database file (not in the working directory);
    a tracking server decides for itself (``--artifacts-destination``)."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts" / experiment)
    return None


class Tracker:
    """Writes one search to MLflow. Holds only plain data, so Ray can pickle it with its callbacks."""

    def __init__(self, tracking_uri: str, experiment: str, search_id: str, objectives: list[Objective],
                 spec_yaml: str, search_params: dict[str, Any], flush_s: float = 5.0):
        self.tracking_uri = tracking_uri
        self.flush_s = flush_s  # per-epoch metrics reach MLflow at most this late (0: every epoch)
        self.experiment = experiment
        self.search_id = search_id
        self.objectives = objectives
        self.spec_yaml = spec_yaml
        self.search_params = search_params
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._rows: dict[str, dict] | None = None  # trial_id -> row of complete trials
        self._pareto: dict[str, bool] = {}
        self._logged_at = -1  # number of complete trials when the hypervolume was last logged
        self._fresh = False  # this tracker created the parent: no child run can exist yet
        self._pending: dict[str, list[Metric]] = {}  # run_id -> epoch metrics not yet written
        self._flushed: dict[str, float] = {}  # run_id -> time of its last write

    def __getstate__(self) -> dict:
        keep = ("tracking_uri", "experiment", "search_id", "objectives", "spec_yaml", "search_params", "flush_s")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- runs -----------------------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def parent_id(self) -> str:
        if self._parent_id is None:
            self._parent_id = self._find_or_create_parent()
        return self._parent_id

    def _find_or_create_parent(self) -> str:
        exp, run = find_search(self.client, self.experiment, self.search_id)
        if exp is None:
            self._experiment_id = self.client.create_experiment(self.experiment, _artifact_location(
                self.tracking_uri, self.experiment))
        else:
            self._experiment_id = exp.experiment_id
        if run is not None:
            self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        tags = {f"{TAG}.kind": "search", f"{TAG}.search_id": self.search_id}
        run = self.client.create_run(self._experiment_id, run_name=self.search_id, tags=tags)
        rid = run.info.run_id
        self._fresh = True
        params = [Param(k, str(v)[:6000]) for k, v in self.search_params.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(rid, params=params[i:i + 100])
        self.client.log_text(rid, self.spec_yaml, "spec.yaml")
        return rid

    def run_for(self, trial_id: str, trial_name: str, regularizer: str, config: dict) -> str:
        """The child run of a trial: found by tags (after a restore) or created with its params."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        parent = self.parent_id
        found = [] if self._fresh else self.client.search_runs(
            [self._experiment_id],
            f"tags.mlflow.parentRunId = '{parent}' and tags.`{TAG}.trial_id` = '{trial_id}'", max_results=1)
        if found:
            self._runs[trial_id] = found[0].info.run_id
            return self._runs[trial_id]
        tags = {"mlflow.parentRunId": parent, f"{TAG}.search_id": self.search_id,
                f"{TAG}.trial_id": trial_id, f"{TAG}.regularizer": regularizer, f"{TAG}.state": "running"}
        run = self.client.create_run(self._experiment_id, run_name=trial_name, tags=tags)
        rid = run.info.run_id
        from trainables.config import TrialConfig, flatten

        # the full config the trial runs (family defaults filled in), not just the sampled part
        full = TrialConfig.from_dict(config).to_dict()
        params = [Param(k, str(v)[:6000]) for k, v in flatten(full).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(rid, params=params[i:i + 100])
        self._runs[trial_id] = rid
        return rid

    # -- trial events ---------------------------------------------------------------------------

    def log_result(self, run_id: str, result: dict) -> None:
        """One epoch's scalar metrics, at step = epoch (the final epoch carries the final metrics).

        Buffered: written when ``flush_s`` seconds have passed since the run's last write, and
        when the trial ends. One SQLite transaction per epoch costs more than a whole epoch of a
        small trial (bench/ray_overhead.py); long epochs still appear live."""
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = _now_ms()
        skip = {"training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
                "time_since_restore", "iterations_since_restore", "done", "final", "epoch"}
        self._pending.setdefault(run_id, []).extend(
            Metric(k, float(v), ts, step) for k, v in result.items() if k not in skip and _numeric(v) and "/" not in k)
        if time.monotonic() - self._flushed.get(run_id, 0.0) >= self.flush_s or result.get("final") == 1.0:
            self.flush(run_id)

    def flush(self, run_id: str | None = None) -> None:
        """Write the buffered epoch metrics of one run (or of every run)."""
        for rid in [run_id] if run_id is not None else list(self._pending):
            metrics = self._pending.pop(rid, [])
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(rid, metrics=metrics[i:i + 1000])
            self._flushed[rid] = time.monotonic()

    def complete(self, run_id: str, trial_id: str, artifacts: Path | None) -> Frontier:
        """A trial that finished its full budget: artifacts, FINISHED, frontier and hypervolume."""
        self.flush(run_id)
        if artifacts is not None:
            for name in ARTIFACTS:
                if (artifacts / name).exists():
                    self.client.log_artifact(run_id, str(artifacts / name))
        self.client.set_tag(run_id, f"{TAG}.state", "complete")
        self.client.set_terminated(run_id, "FINISHED")
        rows = self._complete_rows()
        rows[trial_id] = _row(self.client.get_run(run_id))
        return self._update_frontier()

    def pruned(self, run_id: str, epoch: int) -> None:
        """Stopped early by the scheduler: kept, but never on the frontier (Optuna: PRUNED)."""
        self.flush(run_id)
        self.client.set_tag(run_id, f"{TAG}.state", "pruned")
        self.client.set_tag(run_id, f"{TAG}.pruned_at_epoch", str(epoch))
        self.client.set_tag(run_id, f"{TAG}.pareto", "false")
        self.client.set_terminated(run_id, "KILLED")

    def failed(self, run_id: str, error: str) -> None:
        self.flush(run_id)
        self.client.set_tag(run_id, f"{TAG}.state", "failed")
        self.client.set_tag(run_id, f"{TAG}.error", error[-MAX_TAG:])
        self.client.set_tag(run_id, f"{TAG}.pareto", "false")
        self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FAILED")

    def retried(self, run_id: str, error: str) -> None:
        self.client.set_tag(run_id, f"{TAG}.last_retry_error", error[-MAX_TAG:])

    # -- the frontier -----------------------------------------------------------------------------

    def _complete_rows(self) -> dict[str, dict]:
        if self._rows is None:
            frontier = load_frontier(self.client, self._experiment_id, self.parent_id, self.objectives)
            self._rows = {r["trial_id"]: r for r in frontier.rows}
            self._pareto = {}  # unknown: the next update writes every complete trial's tag
        return self._rows

    def _update_frontier(self) -> Frontier:
        rows = self._complete_rows()
        frontier = Frontier.of([rows[t] for t in sorted(rows)], self.objectives)
        for row, keep in zip(frontier.rows, frontier.mask):
            if self._pareto.get(row["trial_id"]) != bool(keep):
                self.client.set_tag(row["run_id"], f"{TAG}.pareto", "true" if keep else "false")
                self._pareto[row["trial_id"]] = bool(keep)
        if len(rows) != self._logged_at:
            ts = _now_ms()
            self.client.log_batch(self.parent_id, metrics=[
                Metric("hypervolume", frontier.hypervolume, ts, len(rows)),
                Metric("frontier_size", float(frontier.mask.sum()), ts, len(rows))])
            self._logged_at = len(rows)
        return frontier

    def finish(self, status: str = "FINISHED") -> Frontier:
        """Log the frontier table and plots on the parent run and close it."""
        from .plots import frontier_figures

        self.flush()  # epochs of trials still running (an interrupted search)
        frontier = self._update_frontier()
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "pareto.csv").write_text(frontier.to_csv())
            for name, fig in frontier_figures(frontier).items():
                fig.savefig(Path(tmp) / name, dpi=120, bbox_inches="tight")
            self.client.log_artifacts(self.parent_id, tmp)
        self.client.set_terminated(self.parent_id, status)
        return frontier
