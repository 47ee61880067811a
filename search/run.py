"""Run (or resume) a search: Ray init, the ``Tuner`` and its pieces, resume discovery.

Objectives are final metrics (compaction and FLOP counting run once, at the end), so Ray's check
that every report carries the searcher's metrics is turned off for the driver (``search/__init__``
sets the driver's Tune environment before Ray is imported).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from . import _compat
from .budget import ResumableBudget, ResumableGenerator
from .callbacks import TrackingCallback
from .driver import (check_run_dir, new_search_id, prepare_stores, ray_saved_state, restore_sigterm, search_id_stamp,
                     settle_lost_start, sigterm_as_ctrl_c)
from .frontier import Frontier
from .importances import log_importances
from .progress import say_start, trial_family
from .samplers import make_searcher
from .schedulers import make_scheduler
from .spec import SearchSpec, SpecError, resolve_optuna_storage, resolve_paths, resolve_storage, resolve_tracking_uri
from .start import ensure_start, record_start, started_only, with_start
from .tracking import Tracker, failure_summary
from .trainable import make_trainable

__all__ = ["SearchOutcome", "find_resumable", "run_search"]


def find_resumable(storage: str, name: str) -> str:
    """The most recent restorable search of ``name`` in the storage path: the latest start time in
    its id (``search.driver``), then the latest change of its directory (two started in one second)."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage) if "://" in storage else (pyarrow.fs.LocalFileSystem(), storage)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    dirs = sorted((i for i in infos if i.type == pyarrow.fs.FileType.Directory and search_id_stamp(name, i.base_name)),
                  key=lambda i: (search_id_stamp(name, i.base_name), i.mtime_ns or 0), reverse=True)
    for info in dirs:
        path = f"{storage.rstrip('/')}/{info.base_name}"
        if tune.Tuner.can_restore(path) or started_only(path):
            return path
    raise SpecError([("--resume", f"no interrupted search named {name!r} to resume in the storage path", storage)])



_STATE_FILES = ("experiment_state-{}.json", "search_gen_state-{}.json", "searcher-state-{}.pkl")


def _set_aside_torn_state(path: str, say) -> None:
    """Ray restores the newest of its saved experiment states (its files are named by session), and
    a driver killed while Ray copied them to the storage can leave one torn: then the one before
    it is restored (renamed ``*.torn``, the torn one is kept for a post-mortem), and the stores
    make up the difference (``TrackingCallback._reconcile``). Local storage only."""
    import json
    import pickle

    if "://" in path:
        return
    folder = Path(path)
    sessions = sorted((p.name[len("experiment_state-"):-len(".json")] for p in folder.glob("experiment_state-*.json")),
                      reverse=True)
    for session in sessions[:-1]:  # the oldest is kept whatever it holds: Ray's error then names it
        try:
            json.loads((folder / _STATE_FILES[0].format(session)).read_text())
            json.loads((folder / _STATE_FILES[1].format(session)).read_text())
            with open(folder / _STATE_FILES[2].format(session), "rb") as f:
                pickle.load(f)
            return
        except Exception as e:  # torn (or missing): the session before it
            for name in _STATE_FILES:
                if (folder / name.format(session)).exists():
                    (folder / name.format(session)).rename(folder / (name.format(session) + ".torn"))
            say(f"  Ray's experiment state of {session} is torn ({type(e).__name__}); restoring the one before it")


def _quiet_libraries() -> None:
    """Keep the search's own lines readable: Optuna's "A new study created" (one per study, and per
    importance sub-study), MLflow's table-creation lines, and Ray's note that token authentication
    is on (it stays on) are logged below the level shown."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


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
    url: str = ""  # the MLflow UI's runs table (this search's runs)
    optuna_storage: str = ""
    parent_url: str = ""  # the MLflow UI's page of the parent run (the description and the frontier)

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
    path = (find_resumable(storage, spec.name) if resume == "latest" else check_run_dir(resume)) if resume else None
    search_id = Path(path).name if path else new_search_id(spec.name)
    # the driver died before Ray saved the search: restoring it would run the built-in defaults
    # (search/driver.py); it runs again from the spec under its id
    restart = bool(path) and not ray_saved_state(path)
    path = None if restart else path
    _quiet_libraries()
    started = _init_ray(address)
    previous_sigterm = sigterm_as_ctrl_c()  # after ray.init, whose C++ handler would abort the driver
    try:
        prepare_stores(uri, optuna_url, spec.name)  # one driver at a time creates a fresh store
        if restart:
            settle_lost_start(uri, optuna_url, spec.name, search_id, spec.trials, spec_yaml)
        gpus = ray.cluster_resources().get("GPU", 0)
        if spec.resources.gpu > 0 and gpus < spec.resources.gpu:
            raise SpecError([("resources.gpu", f"the Ray cluster has {gpus:g} GPUs", spec.resources.gpu)])
        start_dir = Path(storage) / search_id  # the start (spec ``start``) beside Ray's experiment files
        if path:
            _set_aside_torn_state(path, say=print if not quiet else lambda _: None)
            tuner = tune.Tuner.restore(path, trainable=make_trainable(spec), resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
            callback = _callback_of(tuner)
            callback.search_alg = _compat.restored_search_alg(tuner)
            callback.restored = True
            callback.experiment_path = path
            if callback.total != spec.trials:
                raise SpecError([("trials", f"a resumed search runs the {callback.total} trials it was started "
                                            f"with; start a new search for {spec.trials}", spec.trials)])
            if time_budget_s is not None:
                _compat.set_restored_time_budget(tuner, time_budget_s)
                callback.time_budget_s = time_budget_s
                ResumableBudget.next_budget_s = time_budget_s
            budget = callback.time_budget_s  # what the restored search runs with (fresh), not the file's
            callback.quiet = quiet
            say_start(callback._say, spec, search_id, storage, uri, optuna_url, callback.tracker.url,
                      resumed=True, budget=budget)
            if spec.start is not None:  # the restored trials already name its weights
                record_start(callback.tracker, spec, ensure_start(spec, start_dir, say=callback._say))
        else:
            tracker = Tracker(uri, spec.name, search_id, list(spec.objectives), spec_yaml, _search_params(spec),
                              compares=_compares(spec), optuna_storage=optuna_url)
            callback = TrackingCallback(tracker, spec.trials, spec.concurrency, quiet, budget)
            callback.experiment_path = f"{storage.rstrip('/')}/{search_id}"
            callback.restored = restart  # a lost start: the study and MLflow may hold its trials
            callback.quiet = quiet
            if spec.start is not None:  # trained once (or reused), then named in every trial's config
                say_start(callback._say, spec, search_id, storage, uri, optuna_url, callback.tracker.url,
                          resumed=restart, budget=budget)
                start = ensure_start(spec, start_dir, say=callback._say)
                record_start(tracker, spec, start)
                spec = with_start(spec, start)
            tuner = _new_tuner(spec, storage, search_id, callback, optuna_url, budget)
            if spec.start is None:  # after the Tuner (tuner.pkl): a search it names is resumable
                say_start(callback._say, spec, search_id, storage, uri, optuna_url, callback.tracker.url,
                          resumed=restart, budget=budget)
        try:
            tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: Tune stops at once, without on_experiment_end
            callback.complete = False
            callback.frontier = callback.tracker.finish("KILLED", "interrupted (continue with --resume)")
            return SearchOutcome(search_id, f"{storage.rstrip('/')}/{search_id}", callback.frontier, complete=False,
                                 url=callback.tracker.url, optuna_storage=optuna_url,
                                 parent_url=callback.tracker.parent_url)
        if callback.done:
            log_importances(callback.tracker, optuna_url, search_id, spec, callback._say)
        return SearchOutcome(search_id, f"{storage.rstrip('/')}/{search_id}", callback.frontier,
                             complete=callback.complete, budget_hit=callback.budget_hit,
                             url=callback.tracker.url, optuna_storage=optuna_url,
                             parent_url=callback.tracker.parent_url)
    finally:
        ResumableBudget.next_budget_s = None
        ResumableBudget.reached = False
        if started:
            ray.shutdown()
        restore_sigterm(previous_sigterm)



def _new_tuner(spec: SearchSpec, storage: str, search_id: str, callback: TrackingCallback, optuna_url: str,
               budget: float | None) -> tune.Tuner:
    searcher = ConcurrencyLimiter(make_searcher(spec, optuna_url, search_id), max_concurrent=spec.concurrency)
    callback.search_alg = ResumableGenerator(searcher)
    tune_config = tune.TuneConfig(
        search_alg=callback.search_alg, scheduler=make_scheduler(spec), num_samples=spec.trials,
        reuse_actors=True, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    run_config = tune.RunConfig(
        name=search_id, storage_path=storage, callbacks=[callback], verbose=0,
        stop=ResumableBudget(budget) if budget else None,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    return tune.Tuner(make_trainable(spec), param_space=dict(spec.base), tune_config=tune_config, run_config=run_config)



def _trial_name(trial) -> str:
    return f"{trial_family(trial)}_{trial.trial_id}"


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



def _callback_of(tuner: tune.Tuner) -> TrackingCallback:
    for cb in _compat.restored_callbacks(tuner):
        if isinstance(cb, TrackingCallback):
            return cb
    raise RuntimeError("the restored search has no sparsetune tracking callback")
