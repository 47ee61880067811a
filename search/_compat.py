"""Every use of a private Ray Tune or Optuna attribute, in one place.

Ray 2.60 and Optuna 5 are pinned (pyproject.toml); ``tests/test_compat.py`` exercises each
function below on real, small Ray and Optuna objects, so an upgrade that moves one of these
internals fails there, loudly, rather than in a user's search. Nothing else in ``search/`` reads
or writes an attribute of a Ray or Optuna object whose name starts with ``_``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from ray import tune
    from ray.tune.search import SearchGenerator
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.stopper import TimeoutStopper

__all__ = ["StudyView", "adopt_trial", "asked", "kept_checkpoints", "knows", "known_numbers", "optuna_trial_of",
           "reopen_generator", "reset_timeout", "restored_callbacks", "restored_search_alg",
           "set_restored_time_budget", "storage_id", "study_of", "tell_once", "timeout_spent", "trial_of"]


# ---------------------------------------------------------------- Tuner (restored) internals
# A restored ``Tuner`` exposes neither its search algorithm nor its callbacks nor a way to change
# its time budget; all three live on the ``TunerInternal`` behind ``Tuner._local_tuner``.


def _tuner_internal(tuner: tune.Tuner) -> Any:
    # Tuner._local_tuner: the driver-side TunerInternal (None only for Ray Client tuners, unused here)
    return tuner._local_tuner


def restored_callbacks(tuner: tune.Tuner) -> list:
    """The callbacks of a restored search's ``RunConfig`` (ours carries the tracking state)."""
    return _tuner_internal(tuner).get_run_config().callbacks or []


def restored_search_alg(tuner: tune.Tuner) -> SearchGenerator:
    """The restored search algorithm: the callback must tell it about trials the time budget
    stopped (Tune does not), and ``TunerInternal`` keeps it only in its private ``_tune_config``."""
    return _tuner_internal(tuner)._tune_config.search_alg


def set_restored_time_budget(tuner: tune.Tuner, seconds: float | None) -> None:
    """``--resume --time-budget``: ``Tuner.restore`` takes no ``TuneConfig``, so the budget is set
    on the restored one before ``fit``."""
    _tuner_internal(tuner)._tune_config.time_budget_s = seconds


# ---------------------------------------------------------------- SearchGenerator


def reopen_generator(generator: SearchGenerator) -> None:
    """Undo ``set_finished``: Tune marks the generator finished when the time budget stops the
    experiment and saves it so; ``SearchGenerator`` has no public way to clear the flag."""
    generator._finished = False


# ---------------------------------------------------------------- TimeoutStopper


def reset_timeout(stopper: TimeoutStopper, seconds: float | None = None) -> None:
    """Give the stopper its whole budget again (``seconds`` replaces it when given). Tune pickles
    the stopper with the budget already spent; ``TimeoutStopper`` keeps the total in
    ``_timeout_seconds`` and what is left in ``_budget``."""
    if seconds is not None:
        stopper._timeout_seconds = seconds
    stopper._budget = stopper._timeout_seconds


def timeout_spent(stopper: TimeoutStopper) -> None:
    """Spend the stopper's budget at once (what ``stop_all`` sees when the time is up)."""
    stopper._budget = -1.0


# ---------------------------------------------------------------- OptunaSearch
# OptunaSearch tells Optuna COMPLETE with early values for a trial a scheduler stopped; to tell
# the truth (PRUNED / FAIL / COMPLETE) it must reach its study and its Tune-id -> Optuna-trial map.


def optuna_trial_of(searcher: OptunaSearch, trial_id: str) -> optuna.trial.Trial | None:
    """The Optuna trial of a Tune trial not yet told to the study; None if told or unknown."""
    if trial_id in searcher._completed_trials:
        return None
    return searcher._ot_trials.get(trial_id)


def tell_once(searcher: OptunaSearch, trial_id: str, values: list | None, state: optuna.trial.TrialState) -> None:
    """Tell the study how the trial ended and record it as told (OptunaSearch's own bookkeeping,
    so its ``on_trial_complete`` and ours never tell the same trial twice). A trial the storage
    already holds as finished is not told again: after a killed driver, Ray runs again a trial whose
    end reached the study before Ray saved its state (the first result stands, as in MLflow)."""
    trial = searcher._ot_trials[trial_id]
    if not searcher._ot_study._storage.get_trial(trial._trial_id).state.is_finished():
        searcher._ot_study.tell(trial, values, state=state)
    searcher._completed_trials.add(trial_id)


def trial_of(searcher: OptunaSearch, trial_id: str) -> optuna.trial.Trial:
    """The Optuna trial that runs Tune trial ``trial_id`` (asked in ``suggest``)."""
    return searcher._ot_trials[trial_id]


def knows(searcher: OptunaSearch, trial_id: str) -> bool:
    return trial_id in searcher._ot_trials


def asked(searcher: OptunaSearch) -> int:
    """How many Optuna trials the searcher has asked for Tune trials."""
    return len(searcher._ot_trials)


def known_numbers(searcher: OptunaSearch) -> set[int]:
    """The numbers (in the study) of the Optuna trials the searcher has asked."""
    return {t.number for t in searcher._ot_trials.values()}


def storage_id(trial: optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (what ``optuna.trial.Trial`` is built from; not its number)."""
    return trial._trial_id


def adopt_trial(searcher: OptunaSearch, trial_id: str, storage_trial_id: int) -> None:
    """Let Tune trial ``trial_id`` run an Optuna trial asked earlier (and never told): the
    define-by-run space then returns that trial's parameters, which the storage holds."""
    import optuna

    searcher._ot_trials[trial_id] = optuna.trial.Trial(searcher._ot_study, storage_trial_id)


# ---------------------------------------------------------------- Trial (restored)


def kept_checkpoints(trial: Any) -> list:
    """The checkpoints Ray keeps for a trial (``CheckpointConfig.num_to_keep``) and will delete
    when newer ones arrive; Ray's checkpoint manager names them only in its private list."""
    manager = trial.run_metadata.checkpoint_manager
    results = list(manager._checkpoint_results) + [manager.latest_checkpoint_result]
    return [r.checkpoint for r in results if r is not None and r.checkpoint is not None]


def study_of(searcher: OptunaSearch) -> optuna.Study:
    """The Optuna study behind the searcher (``OptunaSearch`` keeps it in ``_ot_study``)."""
    return searcher._ot_study


# ---------------------------------------------------------------- Study, as a sampler sees it


class StudyView:
    """A study whose trials, as a sampler reads them, are ``trials`` (a subset, in number order).

    Optuna's TPE sampler and its group-decomposed search space read a study's history through the
    private ``Study._get_trials``; everything else (directions, storage, study id) is the study's.
    :class:`search.history.BoundedTPESampler` hands TPE such a view instead of the study."""

    def __init__(self, study: optuna.Study, trials: list[optuna.trial.FrozenTrial]):
        self._study = study
        self._trials = trials

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list:
        import copy

        trials = self._trials if states is None else [t for t in self._trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list:
        return self._get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)
