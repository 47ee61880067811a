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
import tempfile
import time
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
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from trainables.config import TrialConfig  # noqa: E402

from .spec import (  # noqa: E402
    Distribution,
    SearchSpec,
    SpecError,
    candidate_configs,
    resolve_storage,
    resolve_tracking_uri,
)
from .tracking import Frontier, Tracker  # noqa: E402

__all__ = [
    "train_trial",
    "FullBudgetOptunaSearch",
    "SpaceDefinition",
    "TrackingCallback",
    "make_sampler",
    "run_search",
    "SearchOutcome",
    "find_resumable",
    "STATE_FILE",
]

STATE_FILE = "state.pt"
log = logging.getLogger("sparsetune")


# ----------------------------------------------------------------------------- the trainable


def train_trial(config: dict[str, Any], checkpoint_every_s: float = 0.0) -> None:
    """One trial: ``fit`` reporting every epoch, with a checkpoint when ``checkpoint_every_s``
    seconds have passed since the last one and on the last epoch; resumed from Tune's checkpoint
    if there is one."""
    import torch

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
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
        fit(cfg, report, resume=resume, threads=max(1, int(cpus)))
    except TrainingDiverged as e:
        # deterministic: report it instead of raising, so Ray does not retry the same divergence
        tune.report({"trial_failed": 1.0, "final": 0.0, "error": f"TrainingDiverged: {e}"})


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


class TrackingCallback(tune.Callback):
    """Turns Ray's trial events into MLflow runs (via :class:`Tracker`) and progress lines."""

    def __init__(self, tracker: Tracker, total: int, quiet: bool = False):
        self.tracker = tracker
        self.total = total
        self.quiet = quiet
        self.done = 0
        self.frontier: Frontier | None = None
        self.complete = False
        self._reconciled = False
        self._start = time.time()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(done=0, frontier=None, complete=False, _reconciled=False)
        return state

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
                    if not self._settle(trial, replay=True):
                        self.done += 1  # recorded before the interruption: keep counting from it

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.tracker.log_result(self._run(trial), result)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._settle(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._settle(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self.tracker.retried(self._run(trial), _error_text(trial))
        self._say(f"        {_name(trial)} failed and is retried from its last checkpoint")

    def _settle(self, trial, replay: bool = False) -> bool:
        """Record how the trial ended; False if a replayed trial was already recorded."""
        run = self._run(trial)
        if replay and self.tracker.client.get_run(run).info.status != "RUNNING":
            return False
        result = trial.last_result or {}
        self.done += 1
        head = f"[{self.done:>3}/{self.total}] {_name(trial)}"
        if trial.status == "ERROR":
            error = _error_text(trial)
            self.tracker.failed(run, error)
            self._say(f"{head} FAILED: {error.strip().splitlines()[-1][:200]}")
        elif result.get("trial_failed"):
            self.tracker.failed(run, str(result.get("error", "")))
            self._say(f"{head} FAILED: {result.get('error', '')[:200]}")
        elif result.get("final") == 1.0 and trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as d:
                self.frontier = self.tracker.complete(run, trial.trial_id, Path(d))
            self._say(f"{head} {_summary(result)}  | frontier {int(self.frontier.mask.sum())} trials,"
                      f" hypervolume {self.frontier.hypervolume:.4f}")
        else:
            self.tracker.pruned(run, int(result.get("epoch", 0)))
            self._say(f"{head} stopped early at epoch {result.get('epoch', 0)} (not on the frontier)")
        return True

    def on_experiment_end(self, trials: list, **info) -> None:
        self.complete = len(trials) >= self.total and all(t.status in ("TERMINATED", "ERROR") for t in trials)
        self.frontier = self.tracker.finish("FINISHED" if self.complete else "KILLED")


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
    trainable = tune.with_parameters(train_trial, checkpoint_every_s=spec.checkpoint_every_s)
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


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
    frontier: Frontier
    complete: bool  # False when interrupted: resume with --resume


def run_search(spec: SearchSpec, spec_yaml: str, *, address: str | None = None, resume: str | None = None,
               quiet: bool = False) -> SearchOutcome:
    """Run (or resume) a search; returns its frontier and whether every trial has ended."""
    storage = resolve_storage(spec.storage)
    uri = resolve_tracking_uri(spec.tracking_uri)
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
        else:
            tracker = Tracker(uri, spec.name, search_id, list(spec.objectives), spec_yaml, _search_params(spec))
            callback = TrackingCallback(tracker, spec.trials, quiet)
            tuner = _new_tuner(spec, storage, search_id, callback)
        callback.quiet = quiet
        _say_start(callback, spec, search_id, storage, uri, resumed=bool(path))
        tuner.fit()
        return SearchOutcome(search_id, f"{storage.rstrip('/')}/{search_id}", callback.frontier,
                             complete=callback.complete)
    finally:
        if started:
            ray.shutdown()


def _callback_of(tuner: tune.Tuner) -> TrackingCallback:
    for cb in tuner._local_tuner.get_run_config().callbacks or []:
        if isinstance(cb, TrackingCallback):
            return cb
    raise RuntimeError("the restored search has no sparsetune tracking callback")


def _new_tuner(spec: SearchSpec, storage: str, search_id: str, callback: TrackingCallback) -> tune.Tuner:
    searcher = FullBudgetOptunaSearch(space=SpaceDefinition(spec), metric=spec.objective_names(),
                                      mode=spec.objective_modes(), sampler=make_sampler(spec))
    if spec.scheduler:
        s = spec.scheduler
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=s.metric, mode=s.mode, max_t=max_epochs(spec),
                                  grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=spec.trials, max_concurrent_trials=spec.concurrency,
        reuse_actors=True, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    run_config = tune.RunConfig(
        name=search_id, storage_path=storage, callbacks=[callback], verbose=0,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    return tune.Tuner(_trainable(spec), param_space=dict(spec.base), tune_config=tune_config, run_config=run_config)


def _trial_name(trial) -> str:
    return f"{_family(trial)}_{trial.trial_id}"


def _search_params(spec: SearchSpec) -> dict[str, Any]:
    return {"sampler": spec.sampler, "trials": spec.trials, "concurrency": spec.concurrency,
            "objectives": ",".join(f"{o.metric}:{o.mode}" for o in spec.objectives),
            "families": ",".join(spec.families) or "-", "allocation": spec.allocation,
            "scheduler": spec.scheduler.type if spec.scheduler else "none", "seed": spec.seed,
            "resources": f"cpu={spec.resources.cpu:g},gpu={spec.resources.gpu:g}",
            "checkpoint_every_s": spec.checkpoint_every_s}


def _say_start(callback: TrackingCallback, spec: SearchSpec, search_id: str, storage: str, uri: str,
               resumed: bool) -> None:
    verb = "resuming" if resumed else "starting"
    callback._say(f"{verb} search {search_id}: {spec.trials} trials, {spec.concurrency} at a time, "
                  f"sampler {spec.sampler}, families {', '.join(spec.families) or '-'}")
    callback._say(f"  Ray storage: {storage}/{search_id}")
    callback._say(f"  MLflow: {uri} (experiment {spec.name!r}); browse with: mlflow ui --backend-store-uri {uri}")
    if spec.sampler == "nsga2" and len(spec.families) > 1:
        callback._say("  note: NSGA-II evolves only the parameters every trial shares; each family's own "
                      "parameters are sampled at random (use sampler: tpe to model them)")
