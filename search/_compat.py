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

__all__ = ["optuna_trial_of", "reopen_generator", "reset_timeout", "restored_callbacks", "restored_search_alg",
           "set_restored_time_budget", "study_of", "tell_once", "timeout_spent"]


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
    so its ``on_trial_complete`` and ours never tell the same trial twice)."""
    searcher._ot_study.tell(searcher._ot_trials[trial_id], values, state=state)
    searcher._completed_trials.add(trial_id)


def study_of(searcher: OptunaSearch) -> optuna.Study:
    """The Optuna study behind the searcher (``OptunaSearch`` keeps it in ``_ot_study``)."""
    return searcher._ot_study
