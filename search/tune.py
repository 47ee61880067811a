"""Run a search: Ray Tune ``Tuner`` + Optuna's multi-objective samplers + MLflow tracking.

- The trainable is ``trainables.fit`` reporting every epoch through ``tune.report`` with a
  checkpoint (the resumable training state; on the last epoch also ``config.yaml``,
  ``result.json`` and ``compact_model.pt``, which the driver logs to MLflow).
- ``OptunaSearch`` gets every objective (``metric=[...]``, ``mode=[...]``) and owns the space
  (define-by-run, conditional per regularizer family). ``TuneConfig(metric=...)`` is never set:
  it would silently make the study single-objective (ecosystem.md §1.2).
- :class:`FullBudgetOptunaSearch` tells Optuna the truth about how each trial ended: COMPLETE
  with the final objective values only when the trial reached its last epoch, PRUNED when a
  scheduler stopped it earlier (plain OptunaSearch would tell COMPLETE with early-epoch values,
  which pollute the Pareto front), FAIL on an error or a non-finite objective.
- Objectives are final metrics (compaction and FLOP counting run once, at the end), so Ray's
  check that every report carries the searcher's metrics is turned off for the driver.
- Paths are absolute: Ray runs each trial in its own working directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# short trials checkpoint every few hundred milliseconds; Ray's "snapshotting may become a
# bottleneck" warning then fires every epoch and drowns the progress lines
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402
from ray.tune.search import ConcurrencyLimiter, SearchGenerator  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from ray.tune.stopper import TimeoutStopper  # noqa: E402

from trainables.config import TrialConfig  # noqa: E402

from .frontier import Frontier  # noqa: E402
from .spec import (  # noqa: E402
    Distribution,
    SearchSpec,
    SpecError,
    candidate_configs,
    resolve_optuna_storage,
    resolve_paths,
    resolve_storage,
    resolve_tracking_uri,
)
from .tracking import Tracker, failure_summary  # noqa: E402

__all__ = [
    "train_trial",
    "FullBudgetOptunaSearch",
    "SpaceDefinition",
    "TrackingCallback",
    "make_sampler",
    "make_scheduler",
    "run_search",
    "SearchOutcome",
    "find_resumable",
    "STATE_FILE",
]

STATE_FILE = "state.pt"
log = logging.getLogger("sparsetune")


# ----------------------------------------------------------------------------- the trainable


def train_trial(config: dict[str, Any], checkpoint_every_s: float = 0.0, import_paths: tuple[str, ...] = ()) -> None:
    """One trial: ``fit`` reporting every epoch, with a checkpoint when ``checkpoint_every_s``
    seconds have passed since the last one and on the last epoch; resumed from Tune's checkpoint
    if there is one. ``import_paths`` (the driver's directory and PYTHONPATH) go on ``sys.path``
    where they exist, so a user's ``model.factory`` module imports in the worker as in the driver."""
    import torch

    for path in reversed(import_paths):
        if path not in sys.path and os.path.isdir(path):
            sys.path.insert(0, path)

    from trainables import TrainingDiverged, fit, save_run

    cfg = TrialConfig.from_dict(config)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, weights_only=True)

    last_checkpoint = time.monotonic()

    def report(epoch) -> None:
        nonlocal last_checkpoint
        metrics = {k: v for k, v in epoch.metrics.items()
                   if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        metrics["final"] = 1.0 if epoch.result is not None else 0.0
        if epoch.result is None and time.monotonic() - last_checkpoint < checkpoint_every_s:
            tune.report(metrics)
            return
        last_checkpoint = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            torch.save(epoch.state(), Path(d) / STATE_FILE)
            if epoch.result is not None:
                save_run(epoch.result, d)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    try:  # as many torch threads as the trial's resources.cpu: concurrent trials never share cores
        fit(cfg, report, resume=resume, threads=_trial_cpus())
    except Exception as e:
        if _retryable(e):
            raise  # Ray retries it (max_failures), from the last checkpoint
        # deterministic (a bad config, unreadable data, a diverging loss...): the same config fails
        # the same way again, so report it instead of raising, and Ray does not retry it
        tune.report({"trial_failed": 1.0, "final": 0.0, "cause": _one_line(e),
                     "error": "".join(traceback.format_exception(e))})


def _trial_cpus() -> int:
    """The CPUs Ray gave this trial (at least 1; 1 outside a Tune trial, e.g. in a unit test)."""
    try:
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    except Exception:  # no trial context
        cpus = 1
    return max(1, int(cpus))


def _retryable(e: BaseException) -> bool:
    """Only what can succeed on a retry: running out of (GPU) memory, which other trials sharing
    the device may have freed by then. A dead worker or node never reaches this code: Ray sees it
    and retries the trial. Everything else a trial raises is deterministic."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"


def _one_line(e: BaseException) -> str:
    from trainables import TrainingDiverged
    from trainables.config import ConfigError

    text = " ".join(str(e).split())
    if isinstance(e, ConfigError):  # its message already says "invalid config: field: ... (got ...)"
        return text[:500]
    return f"{'training diverged' if isinstance(e, TrainingDiverged) else type(e).__name__}: {text}"[:500]


# ----------------------------------------------------------------------------- the searcher


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class FullBudgetOptunaSearch(OptunaSearch):
    """OptunaSearch that records PRUNED / FAIL / COMPLETE from how the trial really ended."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        state, values = optuna.trial.TrialState.FAIL, None
        if not error and result and not result.get("trial_failed"):
            if result.get("final") == 1.0:
                values = [result.get(m) for m in self.metric]
                if all(_finite(v) for v in values):
                    state = optuna.trial.TrialState.COMPLETE
                else:
                    values = None
            else:
                state = optuna.trial.TrialState.PRUNED
        self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        self._completed_trials.add(trial_id)


class SpaceDefinition:
    """The define-by-run space of a spec. A plain callable object, because Ray saves the searcher
    (and this with it) with pickle when it checkpoints the experiment."""

    def __init__(self, spec: SearchSpec):
        self.families = spec.families
        self.allocation = spec.allocation
        self.entries = {f: spec.family_entries(f) for f in (spec.families or [None])}

    def __call__(self, trial) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        family = None
        if self.families:
            if self.allocation == "round_robin":
                family = self.families[trial.number % len(self.families)]
                fixed["regularizer/name"] = family
            else:
                family = trial.suggest_categorical("regularizer/name", self.families)
            trial.set_user_attr("regularizer", family)  # shown by optuna-dashboard, used for importances
        for path, entry in self.entries[family].items():
            if path == "regularizer/name":
                continue
            if isinstance(entry, Distribution):
                value = _suggest(trial, path, entry)
                if entry.type == "categorical" and not _primitive(entry.choices):
                    fixed[path] = json.loads(value)  # Optuna keeps the JSON text, the trial the value
            else:
                fixed[path] = entry
        return fixed


def _primitive(choices: list) -> bool:
    return all(c is None or isinstance(c, (bool, int, float, str)) for c in choices)


def _suggest(trial, path: str, d: Distribution) -> Any:
    if d.type == "loguniform":
        return trial.suggest_float(path, d.low, d.high, log=True)
    if d.type == "uniform":
        return trial.suggest_float(path, d.low, d.high, step=d.step)
    if d.type == "int":
        return trial.suggest_int(path, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
    choices = d.choices if _primitive(d.choices) else [json.dumps(c) for c in d.choices]
    return trial.suggest_categorical(path, choices)


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":  # multivariate + group: the space is conditional per family
            return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=max(4, min(10, spec.trials // 3)))
        if spec.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, min(50, spec.trials // 4)))
        if spec.sampler == "gp":
            return optuna.samplers.GPSampler(seed=spec.seed)
        return optuna.samplers.RandomSampler(seed=spec.seed)


def max_epochs(spec: SearchSpec) -> int:
    """The most epochs (training + retraining) any trial of the spec can run: ASHA's ``max_t``."""
    best = 1
    for _, data, _ in candidate_configs(spec):
        cfg = TrialConfig.from_dict(data)
        best = max(best, cfg.optim.epochs + (cfg.tying.retrain_epochs if cfg.tying.enabled else 0))
    return best


# ----------------------------------------------------------------------------- tracking + progress


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class TrackingCallback(tune.Callback):
    """Turns Ray's trial events into MLflow runs (via :class:`Tracker`) and progress lines: one
    when a trial starts, one at most every ``progress_s`` seconds while it runs (epoch k/N and
    validation accuracy, so a long trial is never silent), and one when it ends, with the
    frontier so far and an ETA from the finished trials' durations."""

    def __init__(self, tracker: Tracker, total: int, concurrency: int = 1, quiet: bool = False,
                 time_budget_s: float | None = None, progress_s: float = 30.0):
        self.tracker = tracker
        self.total = total
        self.concurrency = concurrency
        self.quiet = quiet
        self.time_budget_s = time_budget_s
        self.progress_s = progress_s
        self.search_alg = None  # the search algorithm (set by run_search; not pickled)
        self._fresh_state()

    def _fresh_state(self) -> None:
        self.done = 0
        self.frontier: Frontier | None = None
        self.complete = False
        self.budget_hit = False
        self._reconciled = False
        self._started: dict[str, float] = {}  # trial_id -> when it (re)started
        self._durations: list[float] = []
        self._said: dict[str, float] = {}  # trial_id -> time of its last progress line
        self._epochs: dict[str, int] = {}  # trial_id -> epochs it runs
        self._settled: set[str] = set()  # trials whose end is recorded (or was, before a restore)

    def __getstate__(self) -> dict:
        keep = ("tracker", "total", "concurrency", "quiet", "time_budget_s", "progress_s")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.search_alg = None
        self._fresh_state()

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def _run(self, trial) -> str:
        return self.tracker.run_for(trial.trial_id, str(trial), _family(trial), trial.config)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self._reconciled:  # after a restore: settle trials that ended before the interruption
            self._reconciled = True
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self._settled.add(trial.trial_id)
                    if not self._settle(trial, replay=True):
                        self.done += 1  # recorded before the interruption: keep counting from it

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._run(trial)
        self._started[trial.trial_id] = time.monotonic()
        self._said[trial.trial_id] = time.monotonic()
        running = sum(t.status == "RUNNING" or t is trial for t in trials)  # Tune marks it RUNNING after this hook
        self._say(f"  start  {_name(trial)}  ({running} running, {self.done}/{self.total} done)")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.tracker.log_result(self._run(trial), result)
        now = time.monotonic()
        if now - self._said.get(trial.trial_id, now) >= self.progress_s and result.get("final") != 1.0:
            self._said[trial.trial_id] = now
            acc = result.get("val_accuracy")
            self._say(f"  ...    {_name(trial)}  epoch {int(result.get('epoch', 0))}/{self._total_epochs(trial)}"
                      + (f"  val acc {acc:.3f}" if _finite(acc) else "")
                      + f"  ({_duration(now - self._started.get(trial.trial_id, now))})")

    def _total_epochs(self, trial) -> int:
        if trial.trial_id not in self._epochs:
            cfg = TrialConfig.from_dict(trial.config)
            self._epochs[trial.trial_id] = cfg.optim.epochs + (cfg.tying.retrain_epochs if cfg.tying.enabled else 0)
        return self._epochs[trial.trial_id]

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._settle(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._settle(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self.tracker.retried(self._run(trial), _error_text(trial))
        self._say(f"        {_name(trial)} lost its worker and is retried from its last checkpoint")

    def _budget_reached(self) -> bool:
        """Whether Tune's time-budget stopper has stopped the experiment: its decision, not a clock
        of this callback's own (which would start at another moment and disagree with it for a
        few seconds, labelling trials as stopped by the budget while Tune went on)."""
        return self.time_budget_s is not None and _ResumableBudget.reached

    def _settle(self, trial, replay: bool = False) -> bool:
        """Record how the trial ended; False if a replayed trial was already recorded."""
        run = self._run(trial)
        if replay and self.tracker.client.get_run(run).info.status != "RUNNING":
            return False
        result = trial.last_result or {}
        self._settled.add(trial.trial_id)
        self.done += 1
        if trial.trial_id in self._started:
            self._durations.append(time.monotonic() - self._started.pop(trial.trial_id))
        head = f"[{self.done:>3}/{self.total}] {_name(trial)}"
        if trial.status == "ERROR":
            error = _error_text(trial)
            self.tracker.failed(run, error)
            self._say(f"{head} FAILED: {error.strip().splitlines()[-1][:200]}")
        elif result.get("trial_failed"):
            self.tracker.failed(run, str(result.get("error", "")), str(result.get("cause", "")) or None)
            self._say(f"{head} FAILED: {str(result.get('cause') or result.get('error', ''))[:200]}")
        elif result.get("final") == 1.0 and trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as d:
                self.frontier = self.tracker.complete(run, trial.trial_id, Path(d))
            self._say(f"{head} {_summary(result)}  | frontier {int(self.frontier.mask.sum())} trials,"
                      f" hypervolume {self.frontier.hypervolume:.4f}{self._eta()}")
        elif self._budget_reached():
            self.budget_hit = True
            self.tracker.stopped(run, int(result.get("epoch", 0)))
            self._say(f"{head} stopped by the time budget at epoch {result.get('epoch', 0)}")
        else:
            self.tracker.pruned(run, int(result.get("epoch", 0)))
            self._say(f"{head} stopped early at epoch {result.get('epoch', 0)} (not on the frontier)")
        return True

    def _eta(self) -> str:
        left = self.total - self.done
        if not left or not self._durations:
            return ""
        mean = sum(self._durations) / len(self._durations)
        return f" | ETA {_duration(mean * math.ceil(left / self.concurrency))}"

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        """When the time budget runs out, Tune stops the trials still running (or waiting for a
        worker) without calling any trial hook or telling the searcher
        (``TuneController._stop_experiment_if_needed``). They are recorded here, in the step that
        stopped them: stopped (or complete, if their last epoch was in), and told to the searcher
        as Ray would have, so that the experiment state Tune saves next does not hold them as
        live: the concurrency limiter of a resumed search would wait for them forever."""
        if not self._budget_reached():
            return
        for trial in trials:
            if trial.status == "TERMINATED" and trial.trial_id not in self._settled:
                self._settle(trial)
                if self.search_alg is not None:
                    self.search_alg.on_trial_complete(trial.trial_id, result=trial.last_result or {"final": 0.0})

    def on_experiment_end(self, trials: list, **info) -> None:
        self.complete = len(trials) >= self.total and all(t.status in ("TERMINATED", "ERROR") for t in trials)
        self.budget_hit = self.budget_hit or (not self.complete and self._budget_reached())
        if self.complete:
            outcome = "complete"
        elif self.budget_hit:
            outcome = (f"time budget of {_duration(self.time_budget_s)} reached: {self.total - len(trials)} trials "
                       "not started (continue with --resume)")
        else:
            outcome = "interrupted (continue with --resume)"
        self.frontier = self.tracker.finish("FINISHED" if self.complete else "KILLED", outcome)


def _family(trial) -> str:
    return (trial.config.get("regularizer") or {}).get("name", "none")


def _name(trial) -> str:
    return f"{_family(trial):<16} {trial.trial_id}"


def _summary(r: dict) -> str:
    parts = []
    for key, fmt in (("val_accuracy", "val acc {:.3f}"), ("params_nonzero", "params {:,.0f}"),
                     ("flops_compact", "FLOPs {:,.0f}"), ("sparsity", "sparsity {:.0%}")):
        if _finite(r.get(key)):
            parts.append(fmt.format(r[key]))
    return "  ".join(parts)


def _error_text(trial) -> str:
    """The trial's error as Ray recorded it.

    Ray writes ``error.txt`` into the driver's staging directory first and copies it to the
    storage path later, so the staging copy is read first; the storage copy (read through the
    storage filesystem, so remote too) covers a driver that restored the trial from storage.
    """
    local = trial.error_file
    try:
        if local and os.path.isfile(local):
            with open(local, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if text.strip():
                return text
        error = trial.get_error()
    except OSError as e:
        return f"(the error file could not be read: {e})"
    return str(error) if error is not None else "unknown error (Ray recorded none)"


# ----------------------------------------------------------------------------- Ray internals
# The only places that touch private Ray attributes; tests/test_search_units.py checks that they
# still exist, so a Ray upgrade that moves them fails loudly there, not in a user's search.


class _ResumableGenerator(SearchGenerator):
    """Tune marks the search algorithm finished when the time budget stops the experiment, and
    saves that with it; a search resumed after its time budget goes on with the trials it has
    not started yet (the trial count still ends it)."""

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._finished = False


def _callback_of(tuner: tune.Tuner) -> TrackingCallback:
    for cb in tuner._local_tuner.get_run_config().callbacks or []:
        if isinstance(cb, TrackingCallback):
            return cb
    raise RuntimeError("the restored search has no sparsetune tracking callback")


class _ResumableBudget(TimeoutStopper):
    """Tune's time budget, started afresh when the search is resumed.

    Tune saves its stopper with the experiment state and restores it with the budget already
    spent, so with ``TuneConfig(time_budget_s=...)`` a resumed search stops at its first step.
    This stopper resets its budget when it is unpickled; ``next_budget_s`` (``--resume
    --time-budget``) replaces it."""

    next_budget_s: float | None = None
    reached = False  # set when the budget stops the experiment (one search per driver process)

    def stop_all(self) -> bool:
        if super().stop_all():
            _ResumableBudget.reached = True
        return _ResumableBudget.reached

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if _ResumableBudget.next_budget_s is not None:
            self._timeout_seconds = _ResumableBudget.next_budget_s
        self._budget = self._timeout_seconds


def _search_alg_of(tuner: tune.Tuner) -> SearchGenerator:
    return tuner._local_tuner._tune_config.search_alg


def _set_time_budget(tuner: tune.Tuner, seconds: float | None) -> None:
    tuner._local_tuner._tune_config.time_budget_s = seconds


# ----------------------------------------------------------------------------- running


def find_resumable(storage: str, name: str) -> str:
    """The most recent restorable search of ``name`` in the storage path."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage) if "://" in storage else (pyarrow.fs.LocalFileSystem(), storage)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    dirs = sorted((i for i in infos if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(name + "-")),
                  key=lambda i: i.base_name, reverse=True)
    for info in dirs:
        path = f"{storage.rstrip('/')}/{info.base_name}"
        if tune.Tuner.can_restore(path):
            return path
    raise SpecError([("--resume", f"no interrupted search named {name!r} to resume in the storage path", storage)])


def _trainable(spec: SearchSpec):
    trainable = tune.with_parameters(train_trial, checkpoint_every_s=spec.checkpoint_every_s,
                                     import_paths=_import_paths())
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _import_paths() -> tuple[str, ...]:
    """Where the driver imports a user's modules from: its current directory, then PYTHONPATH.
    Ray workers start elsewhere (and trials run in their own directories), so a trial puts these on
    its ``sys.path``; on a cluster the code travels with ``ray job submit --working-dir``."""
    paths = [os.getcwd()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return tuple(dict.fromkeys(os.path.abspath(p) for p in paths))


def _init_ray(address: str | None) -> bool:
    """Join ``address`` ("auto": the cluster this node belongs to), or start a local Ray instance
    of our own (``address="local"``: never attach by accident to another process's cluster)."""
    if ray.is_initialized():
        return False
    ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    return True


@dataclass
class SearchOutcome:
    search_id: str
    path: str  # the Ray experiment directory (what --resume restores)
    frontier: Frontier  # complete trials, with the pruned / failed / stopped ones in ``others``
    complete: bool  # False when interrupted or stopped by the time budget: resume with --resume
    budget_hit: bool = False  # stopped by the time budget
    url: str = ""  # the MLflow UI's runs table
    optuna_storage: str = ""

    @property
    def failures(self) -> list[tuple[int, str]]:
        """(count, cause) per distinct cause of failed trials."""
        return failure_summary(self.frontier.others)


def run_search(spec: SearchSpec, spec_yaml: str, *, address: str | None = None, resume: str | None = None,
               quiet: bool = False, time_budget_s: float | None = None) -> SearchOutcome:
    """Run (or resume) a search; returns its frontier and how it ended.

    ``time_budget_s`` overrides the spec's (also when resuming: a resumed search gets its budget
    afresh)."""
    spec = resolve_paths(spec)  # relative paths are relative to where the search is started, not to a trial
    budget = time_budget_s if time_budget_s is not None else spec.time_budget_s
    storage = resolve_storage(spec.storage)
    uri = resolve_tracking_uri(spec.tracking_uri)
    optuna_url = resolve_optuna_storage(spec.optuna_storage, uri)
    path = (find_resumable(storage, spec.name) if resume == "latest" else resume) if resume else None
    search_id = Path(path).name if path else f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = _init_ray(address)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if spec.resources.gpu > 0 and gpus < spec.resources.gpu:
            raise SpecError([("resources.gpu", f"the Ray cluster has {gpus:g} GPUs", spec.resources.gpu)])
        if path:
            tuner = tune.Tuner.restore(path, trainable=_trainable(spec), resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
            callback = _callback_of(tuner)
            callback.search_alg = _search_alg_of(tuner)
            if time_budget_s is not None:
                _set_time_budget(tuner, time_budget_s)
                callback.time_budget_s = time_budget_s
                _ResumableBudget.next_budget_s = time_budget_s
        else:
            tracker = Tracker(uri, spec.name, search_id, list(spec.objectives), spec_yaml, _search_params(spec),
                              compares=_compares(spec), optuna_storage=optuna_url)
            callback = TrackingCallback(tracker, spec.trials, spec.concurrency, quiet, budget)
            tuner = _new_tuner(spec, storage, search_id, callback, optuna_url, budget)
        callback.quiet = quiet
        _say_start(callback, spec, search_id, storage, uri, optuna_url, resumed=bool(path), budget=budget)
        tuner.fit()
        if callback.done:
            _log_importances(callback.tracker, optuna_url, search_id, spec, callback)
        return SearchOutcome(search_id, f"{storage.rstrip('/')}/{search_id}", callback.frontier,
                             complete=callback.complete, budget_hit=callback.budget_hit,
                             url=callback.tracker.url, optuna_storage=optuna_url)
    finally:
        _ResumableBudget.next_budget_s = None
        _ResumableBudget.reached = False
        if started:
            ray.shutdown()


def make_searcher(spec: SearchSpec, optuna_url: str, study_name: str) -> FullBudgetOptunaSearch:
    """Optuna's sampler behind Ray, with its study in the RDB storage (optuna-dashboard reads it;
    only the driver writes it, so SQLite is enough)."""
    storage = optuna.storages.RDBStorage(optuna_url)
    return FullBudgetOptunaSearch(space=SpaceDefinition(spec), metric=spec.objective_names(),
                                  mode=spec.objective_modes(), sampler=make_sampler(spec),
                                  storage=storage, study_name=study_name)


def make_scheduler(spec: SearchSpec):
    """The trial scheduler the spec asks for (FIFO: every trial runs its full budget)."""
    s = spec.scheduler
    if s is None:
        return FIFOScheduler()
    if s.type == "moasha":  # stops are recorded as PRUNED like ASHA's: the last report is not final
        from .schedulers import MOASHAScheduler

        return MOASHAScheduler([(o.metric, o.mode) for o in spec.objectives], max_t=s.max_t or max_epochs(spec),
                               grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    return ASHAScheduler(time_attr="training_iteration", metric=s.metric, mode=s.mode, max_t=max_epochs(spec),
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _new_tuner(spec: SearchSpec, storage: str, search_id: str, callback: TrackingCallback, optuna_url: str,
               budget: float | None) -> tune.Tuner:
    searcher = ConcurrencyLimiter(make_searcher(spec, optuna_url, search_id), max_concurrent=spec.concurrency)
    callback.search_alg = _ResumableGenerator(searcher)
    tune_config = tune.TuneConfig(
        search_alg=callback.search_alg, scheduler=make_scheduler(spec), num_samples=spec.trials,
        reuse_actors=True, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    run_config = tune.RunConfig(
        name=search_id, storage_path=storage, callbacks=[callback], verbose=0,
        stop=_ResumableBudget(budget) if budget else None,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    return tune.Tuner(_trainable(spec), param_space=dict(spec.base), tune_config=tune_config, run_config=run_config)


def _log_importances(tracker: Tracker, optuna_url: str, search_id: str, spec: SearchSpec,
                     callback: TrackingCallback) -> None:
    """Per-objective hyperparameter importances (Optuna's default evaluator) over the complete
    trials, for the parameters every trial has, and per family for its own parameters."""
    import warnings

    study = optuna.load_study(study_name=search_id, storage=optuna_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    groups = {"all": done}
    for family in spec.families:
        groups[family] = [t for t in done if t.user_attrs.get("regularizer") == family]
    out: dict[str, dict[str, float]] = {}
    skipped = []
    for group, trials in groups.items():
        if len(trials) < 3:
            continue
        sub = optuna.create_study(directions=study.directions)
        sub.add_trials(trials)
        for i, name in enumerate(spec.objective_names()):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values = optuna.importance.get_param_importances(sub, target=lambda t, i=i: t.values[i])
            except (ValueError, RuntimeError) as e:  # e.g. no parameter shared by every trial
                skipped.append(f"{group}/{name}: {e}")
                continue
            if values:
                out[f"{group}/{name}"] = {k: float(v) for k, v in values.items()}
    if out:
        tracker.log_importances(out)
    for line in skipped[:3]:
        callback._say(f"  importances not computed for {line}")


def _trial_name(trial) -> str:
    return f"{_family(trial)}_{trial.trial_id}"


def _compares(spec: SearchSpec) -> str:
    """The experiment's description: what its searches compare."""
    families = ", ".join(spec.families) or (spec.base.get("regularizer") or {}).get("name", "one regularizer")
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in spec.objectives)
    data = (spec.base.get("data") or {}).get("name", "digits")
    model = (spec.base.get("model") or {}).get("name", "mlp")
    return (f"Multi-objective search (sparsetune) comparing structured-sparsity regularizers **{families}** "
            f"on `{model}` / `{data}`: Pareto frontier of {objectives}. One parent run per search (its "
            "description holds the frontier; `frontier.html` plots it), one child run per trial.")


def _search_params(spec: SearchSpec) -> dict[str, Any]:
    return {"sampler": spec.sampler, "trials": spec.trials, "concurrency": spec.concurrency,
            "families": ",".join(spec.families) or "-", "allocation": spec.allocation,
            "scheduler": spec.scheduler.type if spec.scheduler else "none", "seed": spec.seed,
            "resources": f"cpu={spec.resources.cpu:g},gpu={spec.resources.gpu:g}",
            "checkpoint_every_s": spec.checkpoint_every_s, "time_budget_s": spec.time_budget_s,
            "reproducible": spec.reproducible}


def _say_start(callback: TrackingCallback, spec: SearchSpec, search_id: str, storage: str, uri: str,
               optuna_url: str, resumed: bool, budget: float | None) -> None:
    verb = "resuming" if resumed else "starting"
    callback._say(f"{verb} search {search_id}: {spec.trials} trials, {spec.concurrency} at a time, "
                  f"sampler {spec.sampler}, families {', '.join(spec.families) or '-'}"
                  + (f", time budget {_duration(budget)}" if budget else ""))
    callback._say(f"  reproducible: {'yes (one trial at a time, no time budget)' if spec.reproducible else 'no: '}"
                  + ("" if spec.reproducible else "with concurrency > 1 or a time budget, which trials finish "
                     "first depends on the machine, and so does what the sampler suggests next"))
    callback._say(f"  Ray storage: {storage}/{search_id}")
    callback._say(f"  MLflow: {uri} (experiment {spec.name!r}); browse with: mlflow ui --backend-store-uri {uri}")
    callback._say(f"  runs: {callback.tracker.url}")
    callback._say(f"  Optuna study {search_id!r}: optuna-dashboard {optuna_url}")
    if spec.sampler == "nsga2" and len(spec.families) > 1:
        callback._say("  note: NSGA-II evolves only the parameters every trial shares; each family's own "
                      "parameters are sampled at random (use sampler: tpe to model them)")
