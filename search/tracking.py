"""MLflow tracking of a search: the only MLflow writer, running in the Ray driver.

(Over 400 lines on purpose: being the only writer is the point; its parts — runs, trial events,
the frontier, the parent's description — share one client, one set of caches and the tags.)

One MLflow experiment per spec name; in it one parent run per search (tag ``sparsetune.search_id``)
and one child run per trial (tags ``sparsetune.trial_id``, ``sparsetune.regularizer``,
``sparsetune.state`` = complete / pruned / failed, ``sparsetune.pareto`` = true / false) holding the
trial's flattened config as params, per-epoch metrics, the final metrics under their result.json
names, and its exact ``config.yaml``, ``result.json`` and ``compact_model.pt`` as artifacts (they
travel from the trial in its final checkpoint). On the parent: ``hypervolume`` and ``frontier_size``
as step metrics (step = complete trials) after every finished trial, and the frontier's artifacts
(``trials.csv``, ``frontier.csv``, ``frontier.html``, plots) and description, refreshed while the
search runs (at most every ``live_s`` seconds) and written in full when it ends.

Ray does not restore callbacks' state, so runs are always found again by their tags: a resumed
search reuses its parent run and its trials' child runs, never duplicating them.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from trainables.schema import ARTIFACTS, RESULT_FILE

from . import faults
from .frontier import CHANCE_CAUSES, Frontier, LiveFrontier, Objective, better, objective_matrix, objectives_to_json
from .locations import run_url, runs_url
from .store import TAG, ClientReader, RunRecord, candidate_of, failure_summary, load_frontier, row_of

__all__ = ["Tracker", "Frontier", "objective_matrix", "ARTIFACTS", "failure_summary"]

ENDED = ("complete", "failed", "pruned", "stopped")  # sparsetune.state of a trial whose end is recorded
INTERRUPTED = "interrupted"  # sparsetune.state of a trial the search stopped before it ended
MAX_TAG = 4000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_NOT_METRICS = {"training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
                "time_since_restore", "iterations_since_restore", "done", "final", "epoch"}


def _step(result: dict) -> int:
    """The step an epoch's metrics are logged at: the epoch."""
    return int(result.get("epoch", result.get("training_iteration", 0)))


def _epoch_scalars(result: dict):
    """The (name, value) pairs of a report that are metrics (finite numbers; not Ray's bookkeeping)."""
    return [(k, v) for k, v in result.items() if k not in _NOT_METRICS and _numeric(v) and "/" not in k]


def experiment_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """A SQLite store keeps its artifacts beside the database file (not in the working directory);
    a tracking server decides for itself (``--artifacts-destination``)."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts" / experiment)
    return None


class Tracker:
    """Writes one search to MLflow. Holds only plain data, so Ray can pickle it with its callbacks."""

    def __init__(self, tracking_uri: str, experiment: str, search_id: str, objectives: list[Objective],
                 spec_yaml: str, search_params: dict[str, Any], flush_s: float = 5.0,
                 compares: str = "", optuna_storage: str | None = None, live_s: float = 30.0):
        self.tracking_uri = tracking_uri
        self.live_s = live_s  # the parent's frontier artifacts are refreshed at most this often
        self.flush_s = flush_s  # per-epoch metrics reach MLflow at most this late (0: every epoch)
        self.experiment = experiment
        self.search_id = search_id
        self.objectives = objectives
        self.spec_yaml = spec_yaml
        self.search_params = search_params
        self.compares = compares  # what the search compares, in words (the experiment description)
        self.optuna_storage = optuna_storage
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._configs: dict[str, dict] = {}  # trial_id -> the config it runs (its path points' source)
        self._rows: dict[str, dict] | None = None  # trial_id -> row of complete trials
        self._pareto: dict[str, bool] = {}  # trial_id -> its sparsetune.pareto tag as written
        self._live: LiveFrontier | None = None  # the frontier of _rows, kept up to date
        self._dirty: set[str] = set()  # trials whose pareto tag may differ from _pareto
        self._logged_at = -1  # number of complete trials when the hypervolume was last logged
        self._fresh = False  # this tracker created the parent: no child run can exist yet
        self._pending: dict[str, list[Metric]] = {}  # run_id -> epoch metrics not yet written
        self._flushed: dict[str, float] = {}  # run_id -> time of its last write
        self._steps: dict[str, dict[str, int]] = {}  # run_id -> metric -> last step written
        self._found: set[str] = set()  # runs found again after a restore (they may lack epochs)
        self._published = -math.inf  # time of the last refresh of the parent's frontier artifacts

    def __getstate__(self) -> dict:
        keep = ("tracking_uri", "experiment", "search_id", "objectives", "spec_yaml", "search_params", "flush_s",
                "compares", "optuna_storage", "live_s")
        return {k: self.__dict__.get(k) for k in keep}

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
    def reader(self) -> ClientReader:
        """Reads runs back (the frontier) through the same client that writes them."""
        return ClientReader(self.client)

    @property
    def parent_id(self) -> str:
        if self._parent_id is None:
            self._parent_id = self._find_or_create_parent()
        return self._parent_id

    @property
    def experiment_id(self) -> str:
        self.parent_id  # noqa: B018  (finds or creates the experiment)
        return self._experiment_id

    @property
    def url(self) -> str:
        """The MLflow UI's runs table of this search only (its parent and trials), best first."""
        first = self.objectives[0]
        return runs_url(self.tracking_uri, self.experiment_id, first.metric, first.mode == "min",
                        search_filter=f"tags.`{TAG}.search_id` = '{self.search_id}'")

    @property
    def parent_url(self) -> str:
        """The MLflow UI's page of the parent run: the description, the frontier and its artifacts."""
        return run_url(self.tracking_uri, self.experiment_id, self.parent_id)

    def _find_or_create_parent(self) -> str:
        exp_id, run = self.reader.find_search(self.experiment, self.search_id)
        if exp_id is None:
            self._experiment_id = self.client.create_experiment(self.experiment, experiment_artifact_location(
                self.tracking_uri, self.experiment))
        else:
            self._experiment_id = exp_id
        # a training experiment, so the UI opens on its runs (not on the GenAI overview), and a
        # description of what it compares
        self.client.set_experiment_tag(self._experiment_id, "mlflow.experimentKind", "custom_model_development")
        if self.compares:
            self.client.set_experiment_tag(self._experiment_id, "mlflow.note.content", self.compares)
        if run is not None:
            self.client.update_run(run.run_id, status="RUNNING")
            return run.run_id
        tags = {f"{TAG}.kind": "search", f"{TAG}.search_id": self.search_id,
                "mlflow.note.content": f"Search `{self.search_id}` is running.\n\n" + self._objectives_md()}
        run = self.client.create_run(self._experiment_id, run_name=self.search_id, tags=tags)
        rid = run.info.run_id
        self._fresh = True
        params = [Param(k, str(v)[:6000]) for k, v in self.search_params.items()]
        params.append(Param("objectives", objectives_to_json(self.objectives)))
        for i in range(0, len(params), 100):
            self.client.log_batch(rid, params=params[i:i + 100])
        self.client.log_text(rid, self.spec_yaml, "spec.yaml")
        return rid

    def run_for(self, trial_id: str, trial_name: str, regularizer: str, config: dict) -> str:
        """The child run of a trial: found by tags (after a restore) or created with its params."""
        self._configs[trial_id] = config
        if trial_id in self._runs:
            return self._runs[trial_id]
        parent = self.parent_id
        found = [] if self._fresh else self.client.search_runs(
            [self._experiment_id],
            f"tags.mlflow.parentRunId = '{parent}' and tags.`{TAG}.trial_id` = '{trial_id}'", max_results=1)
        if found:
            rid = found[0].info.run_id
            self._runs[trial_id] = rid
            if found[0].data.tags.get(f"{TAG}.state") == INTERRUPTED:  # it goes on now
                self.client.set_tag(rid, f"{TAG}.state", "running")
                self.client.update_run(rid, status="RUNNING")
            self._load_steps(rid, found[0].data.metrics)
            self._found.add(rid)
            return rid
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

    def _backfill(self, run_id: str, artifacts: Path) -> None:
        """Write the epochs of ``result.json``'s history that the run does not hold (see ``complete``)."""
        if not (artifacts / RESULT_FILE).exists():
            return
        history = json.loads((artifacts / RESULT_FILE).read_text()).get("history", [])
        held: dict[str, set[int]] = {}
        missing = []
        ts = _now_ms()
        for epoch in history:
            step = _step(epoch)
            for k, v in _epoch_scalars(epoch):
                if k not in held:
                    held[k] = {m.step for m in self.client.get_metric_history(run_id, k)}
                if step not in held[k]:
                    held[k].add(step)
                    missing.append(Metric(k, float(v), ts, step))
        for i in range(0, len(missing), 1000):
            self.client.log_batch(run_id, metrics=missing[i:i + 1000])

    def _load_steps(self, run_id: str, metrics: dict) -> None:
        """What a found run already holds: a trial resumed from an older checkpoint repeats epochs."""
        self._steps[run_id] = {key: max((m.step for m in self.client.get_metric_history(run_id, key)), default=-1)
                               for key in metrics}

    # -- trial events ---------------------------------------------------------------------------

    def log_result(self, run_id: str, result: dict) -> None:
        """One epoch's scalar metrics, at step = epoch (the final epoch carries the final metrics).

        Each (metric, epoch) is written once: a trial retried or resumed from a checkpoint older
        than its last report repeats those epochs, and the repeats are dropped (training resumes
        with the checkpoint's random state, so they hold the same values).

        Buffered: written when ``flush_s`` seconds have passed since the run's last write, and
        when the trial ends. One SQLite transaction per epoch costs more than a whole epoch of a
        small trial (bench/ray_overhead.py); long epochs still appear live."""
        step = _step(result)
        ts = _now_ms()
        last = self._steps.setdefault(run_id, {})
        fresh = []
        for k, v in _epoch_scalars(result):
            if step <= last.get(k, -1):
                continue
            last[k] = step
            fresh.append(Metric(k, float(v), ts, step))
        self._pending.setdefault(run_id, []).extend(fresh)
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
        """A trial that finished its full budget: artifacts, FINISHED, frontier and hypervolume.

        A run found again after a restore gets the epochs it lacks from the trial's ``result.json``
        history: a driver killed while epochs were still buffered lost them, and a trial resumed
        from a newer checkpoint never reports them again."""
        self.flush(run_id)
        if artifacts is not None and run_id in self._found:
            self._backfill(run_id, artifacts)
        if artifacts is not None:
            for name in ARTIFACTS:
                if (artifacts / name).exists():
                    self.client.log_artifact(run_id, str(artifacts / name))
        faults.point("artifacts")
        points = None
        if artifacts is not None and (artifacts / RESULT_FILE).exists():
            points = json.loads((artifacts / RESULT_FILE).read_text()).get("points")
        if points:  # a path trial: its points are the candidates, not its own run
            self.client.set_tag(run_id, f"{TAG}.path", "true")
        self.client.set_tag(run_id, f"{TAG}.state", "complete")
        self.client.set_terminated(run_id, "FINISHED")
        if points:  # those not recorded as they came (a driver that was down), from the trial's summary
            for p in points:
                self.point(run_id, trial_id, p, artifacts if p is points[-1] else None, update=False)
        else:
            row = row_of(RunRecord.of(self.client.get_run(run_id)))
            live = self._live_frontier()  # a first load already reads this trial back from the store
            if self._rows.get(trial_id) != row:
                self._rows[trial_id] = row
                self._dirty.update(live.add(row))
        frontier = self._update_frontier()
        if time.monotonic() - self._published >= self.live_s:
            # a watcher sees the frontier so far (complete trials; the others join at the end)
            self._publish(frontier, f"running (refreshed {time.strftime('%H:%M:%S')}, at most every "
                                    f"{self.live_s:g} s)")
        return frontier

    def point(self, trial_run: str, trial_id: str, metrics: dict, artifacts: Path | None,
              update: bool = True) -> Frontier | None:
        """One point of a path trial: a run nested under the trial's (tags ``point``, ``target``,
        ``search_parent``), complete, with the point's metrics, config and artifacts (``artifacts``:
        the point's saved run; None: a point whose checkpoint is gone, recorded from the trial's
        summary of its points), and a frontier candidate. Recorded once (a repeat is ignored)."""
        key = candidate_of(trial_id, metrics["point"])
        self._complete_rows()
        if key in self._rows:
            return self._update_frontier() if update else None
        parent = self.parent_id
        found = self.client.search_runs(
            [self._experiment_id], f"tags.`{TAG}.search_parent` = '{parent}' and tags.`{TAG}.trial_id` = "
                                   f"'{trial_id}' and tags.`{TAG}.point` = '{int(metrics['point'])}'", max_results=1)
        if found:
            rid = found[0].info.run_id
        else:
            trial = self.client.get_run(trial_run)
            tags = {"mlflow.parentRunId": trial_run, f"{TAG}.search_parent": parent,
                    f"{TAG}.search_id": self.search_id, f"{TAG}.trial_id": trial_id,
                    f"{TAG}.point": str(int(metrics["point"])), f"{TAG}.target": f"{metrics['target']:g}",
                    f"{TAG}.regularizer": trial.data.tags.get(f"{TAG}.regularizer", ""), f"{TAG}.state": "running"}
            rid = self.client.create_run(self._experiment_id, run_name=f"{trial.info.run_name}/p{int(metrics['point'])}",
                                         tags=tags).info.run_id
            from trainables.config import TrialConfig, flatten

            # the point's config: the trial's, its path truncated after this point
            cfg = TrialConfig.from_dict(self._configs[trial_id])
            full = cfg.at_point(int(metrics["point"])).to_dict()
            params = [Param(k, str(v)[:6000]) for k, v in flatten(full).items()]
            ts = _now_ms()
            values = [Metric(k, float(v), ts, int(metrics.get("epoch", 0))) for k, v in metrics.items() if _numeric(v)]
            for i in range(0, max(len(params), len(values)), 100):
                self.client.log_batch(rid, params=params[i:i + 100], metrics=values[i:i + 100])
            if artifacts is not None:
                for name in ARTIFACTS:
                    if (artifacts / name).exists():
                        self.client.log_artifact(rid, str(artifacts / name))
            else:
                self.client.set_tag(rid, f"{TAG}.artifacts", "missing: recorded from the trial's summary of its points")
            self.client.set_tag(rid, f"{TAG}.state", "complete")
            self.client.set_terminated(rid, "FINISHED")
        row = row_of(RunRecord.of(self.client.get_run(rid)))
        self._rows[key] = row
        self._dirty.update(self._live_frontier().add(row))
        return self._update_frontier() if update else None

    def pruned(self, run_id: str, epoch: int) -> None:
        """Stopped early by the scheduler: kept, but never on the frontier (Optuna: PRUNED)."""
        self.flush(run_id)
        self._tags(run_id, state="pruned", pruned_at_epoch=str(epoch), pareto="false")
        self.client.set_terminated(run_id, "KILLED")

    def stopped(self, run_id: str, epoch: int) -> None:
        """Stopped by the search's time budget: not a failure, never on the frontier."""
        self.flush(run_id)
        self._tags(run_id, state="stopped", stopped_at_epoch=str(epoch), pareto="false")
        self.client.set_terminated(run_id, "KILLED")

    def failed(self, run_id: str, error: str, cause: str | None = None) -> None:
        """A trial that failed: its error (``error.txt``, tag ``error``) and a one-line ``cause``
        that the search's summary groups trials by."""
        self.flush(run_id)
        cause = cause or _cause(error)
        self._tags(run_id, state="failed", error=error[-MAX_TAG:], cause=cause[:MAX_TAG], pareto="false")
        self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FAILED")

    def _tags(self, run_id: str, **tags: str) -> None:
        """Several ``sparsetune.<name>`` tags of one run in one write (one transaction)."""
        self.client.log_batch(run_id, tags=[RunTag(f"{TAG}.{k}", v) for k, v in tags.items()])

    def retried(self, run_id: str, error: str) -> None:
        """A trial that lost its worker, retried from its last checkpoint: an epoch whose checkpoint
        was saved but whose report never reached the driver is not reported again, so its end
        backfills the epochs it lacks from ``result.json`` (as a run found after a restore)."""
        self.client.set_tag(run_id, f"{TAG}.last_retry_error", error[-MAX_TAG:])
        self._found.add(run_id)

    # -- the frontier -----------------------------------------------------------------------------

    def _complete_rows(self) -> dict[str, dict]:
        if self._rows is None:
            frontier = load_frontier(self.reader, self.experiment_id, self.parent_id, self.objectives)
            self._rows = {r["candidate"]: r for r in frontier.rows}
            self._pareto = {}  # unknown: the next update writes every complete trial's tag
            self._live = None
        return self._rows

    def _live_frontier(self) -> LiveFrontier:
        """The frontier of the complete trials, kept in memory: built once from the store (as
        ``_complete_rows``), then one trial at a time (``complete``)."""
        rows = self._complete_rows()
        if self._live is None:
            self._live = LiveFrontier(self.objectives, list(rows.values()))
            self._dirty = set(rows)  # every complete trial's tag is checked once
        return self._live

    def _update_frontier(self) -> Frontier:
        """Pareto tags of the trials whose membership changed, and the parent's ``hypervolume``
        and ``frontier_size`` at step = complete trials. Returns ``Frontier.of`` over the
        complete trials (a snapshot of the live frontier: no O(n^2) recomputation)."""
        live = self._live_frontier()
        for tid in sorted(self._dirty):  # a trial stays dirty until its tag is written
            keep = live.member(tid)
            if self._pareto.get(tid) != keep:
                self.client.set_tag(self._rows[tid]["run_id"], f"{TAG}.pareto", "true" if keep else "false")
                self._pareto[tid] = keep
            self._dirty.discard(tid)
        if len(live) != self._logged_at:
            ts = _now_ms()
            self.client.log_batch(self.parent_id, metrics=[
                Metric("hypervolume", live.hypervolume, ts, len(live)),
                Metric("frontier_size", float(live.size), ts, len(live))])
            self._logged_at = len(live)
        return live.frontier()

    def trial_runs(self) -> dict[str, RunRecord]:
        """This search's child runs by trial id (after a restore: what MLflow already holds)."""
        return {r.tags[f"{TAG}.trial_id"]: r for r in self.reader.children(self.experiment_id, self.parent_id)
                if f"{TAG}.trial_id" in r.tags}

    def discard(self, run_id: str) -> None:
        """Delete the run of an attempt that the search abandoned (a trial started after Ray last
        saved its state, before the driver was killed: its parameters run again under a new trial)."""
        self._runs = {t: r for t, r in self._runs.items() if r != run_id}
        self.client.delete_run(run_id)

    def adopt(self, run_id: str, trial_id: str, state: str, values: dict[str, float],
              checkpoint: Path | None) -> None:
        """Record the end of a trial that reached the Optuna study but not MLflow before the driver
        was killed (and that Ray, whose state was older, never recorded): from its final checkpoint
        (epochs, final metrics, artifacts) when it has one, else from the study's values."""
        self._load_steps(run_id, self.client.get_run(run_id).data.metrics)
        self._found.add(run_id)
        if state == "complete":
            if checkpoint is not None:  # its epochs (what MLflow lacks of them: complete's backfill), then the result
                payload = json.loads((checkpoint / RESULT_FILE).read_text())
                history = payload.pop("history", [])
                self.log_result(run_id, {**(history[-1] if history else {}), **payload, "final": 1.0})
            else:
                self.log_result(run_id, {**values, "final": 1.0})
            self.complete(run_id, trial_id, checkpoint)
        elif state == "pruned":
            self.pruned(run_id, -1)
        else:
            self.failed(run_id, "the trial failed; its error was not recorded (the search's driver was killed "
                                "before it reached MLflow)", "failed (error not recorded: the driver was killed)")

    def recorded(self, run_id: str) -> bool:
        """Whether the run's end is recorded (complete, failed, pruned or stopped)."""
        return self.client.get_run(run_id).data.tags.get(f"{TAG}.state") in ENDED

    def _close_running(self) -> None:
        """A search that stops before its trials end (Ctrl-C): their runs are KILLED and tagged
        ``interrupted``, not left RUNNING; a resume reopens them."""
        for rid in self._runs.values():
            run = self.client.get_run(rid)
            if run.info.status == "RUNNING" and run.data.tags.get(f"{TAG}.state") not in ENDED:
                self._tags(rid, state=INTERRUPTED, pareto="false")
                self.client.set_terminated(rid, "KILLED")

    def finish(self, status: str = "FINISHED", outcome: str = "") -> Frontier:
        """Close the search's parent run: the frontier as ``trials.csv``, ``frontier.csv``,
        ``frontier.html`` and PNG plots, and a markdown description that summarises it.
        Returns the frontier over every trial recorded (with the pruned and failed ones)."""
        self.flush()  # epochs of trials still running (an interrupted search)
        if status != "FINISHED":
            self._close_running()
        self._update_frontier()
        frontier = load_frontier(self.reader, self.experiment_id, self.parent_id, self.objectives)
        self._publish(frontier, outcome)
        if outcome:
            self.client.set_tag(self.parent_id, f"{TAG}.outcome", outcome)
        self.client.set_terminated(self.parent_id, status)
        return frontier

    def _publish(self, frontier: Frontier, outcome: str) -> None:
        """The frontier's artifacts and the description on the parent run (replacing the last)."""
        import matplotlib.pyplot as plt

        from .plots import frontier_figures, frontier_html

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "trials.csv").write_text(frontier.to_csv())
            (Path(tmp) / "frontier.csv").write_text(frontier.to_csv(only_pareto=True))
            (Path(tmp) / "frontier.html").write_text(frontier_html(frontier, self.search_id))
            for name, fig in frontier_figures(frontier, title=self._title(frontier)).items():
                fig.savefig(Path(tmp) / name, dpi=120, bbox_inches="tight")
                plt.close(fig)  # refreshed many times in one driver: pyplot must not keep them
            self.client.log_artifacts(self.parent_id, tmp)
        self.client.set_tag(self.parent_id, "mlflow.note.content", self.describe(frontier, outcome))
        self._published = time.monotonic()

    def log_importances(self, importances: dict[str, dict[str, float]]) -> None:
        """Per-objective hyperparameter importances (Optuna's), as ``importance/<objective>/<param>``
        metrics and ``importances.json`` on the parent run."""
        ts = _now_ms()
        metrics = [Metric(f"importance/{obj}/{param}", float(v), ts, 0)
                   for obj, values in importances.items() for param, v in values.items() if _numeric(v)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.parent_id, metrics=metrics[i:i + 1000])
        self.client.log_dict(self.parent_id, importances, "importances.json")

    # -- the description ----------------------------------------------------------------------------

    def _title(self, frontier: Frontier) -> str:
        n = len(frontier.rows) + len(frontier.others)
        return f"{self.search_id}: {len(frontier.rows)} complete of {n} trials"

    def _objectives_md(self) -> str:
        return "**Objectives:** " + ", ".join(f"`{o.metric}` ({o.mode}: {better(o)})" for o in self.objectives)

    def describe(self, frontier: Frontier, outcome: str = "") -> str:
        """The parent run's description (markdown): objectives, the frontier table with links to
        the child runs, the hypervolume, and the failures with their causes."""
        n = len(frontier.rows) + len(frontier.others)
        states = {"complete": len(frontier.rows)}
        for r in frontier.others:
            states[r["state"]] = states.get(r["state"], 0) + 1
        lines = [f"### Search `{self.search_id}`", "",
                 f"{n} trials: " + ", ".join(f"{v} {k}" for k, v in states.items() if v)
                 + (f". {outcome[0].upper()}{outcome[1:]}." if outcome not in ("", "complete") else "."),
                 "", self._objectives_md(), "",
                 f"**Hypervolume:** {frontier.hypervolume:.4f} (objectives normalised by the dense network; "
                 "reference: " + ", ".join(f"`{o.metric}` {ref:g}" for o, ref in
                                          zip(self.objectives, objective_matrix([], self.objectives)[1])) + ")",
                 "", f"**Pareto frontier** ({int(frontier.mask.sum())} of {len(frontier.rows)} complete trials):", ""]
        if frontier.at_chance:
            lines[4:4] = [f"**Every trial is at chance level:** {CHANCE_CAUSES}.", ""]
        metrics = [o.metric for o in self.objectives]
        cols = ["family", "trial", *metrics, *(["test_accuracy"] if "test_accuracy" not in metrics else [])]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in frontier.points:
            link = f"[{r['trial_id']}](#/experiments/{self.experiment_id}/runs/{r['run_id']})"
            values = [_fmt(r.get(m)) for m in cols[2:]]
            lines.append("| " + " | ".join([r["regularizer"], link, *values]) + " |")
        failures = failure_summary(frontier.others)
        if failures:
            lines += ["", f"**Failures** ({sum(k for k, _ in failures)} trials):", ""]
            lines += [f"- {k} × {cause}" for k, cause in failures]
        lines += ["", "Artifacts: `frontier.html` (interactive: hover for each trial's hyperparameters), "
                      "`trials.csv`, `frontier.csv`, `frontier_params.png`, `frontier_flops.png`."]
        if self.optuna_storage:
            lines += ["", f"Optuna study `{self.search_id}`: `optuna-dashboard {self.optuna_storage}`"]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if not _numeric(value):
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"


def _cause(error: str) -> str:
    """The last non-empty line of an error text (a traceback ends with the exception)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
