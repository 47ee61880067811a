"""Optuna behind Ray: the sampler a spec names, and the searcher that tells Optuna the truth.

``OptunaSearch`` gets every objective (``metric=[...]``, ``mode=[...]``) and owns the space
(define-by-run, :mod:`search.space`). ``TuneConfig(metric=...)`` is never set: it would silently
make the study single-objective (ecosystem.md §1.2).
"""

from __future__ import annotations

import json

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from . import _compat, faults, pareto
from .frontier import finite, objective_matrix
from .history import BoundedTPESampler
from .trainable import POINTS_KEY
from .space import SpaceDefinition
from .spec import SearchSpec

__all__ = ["TRIAL_ATTR", "FullBudgetOptunaSearch", "make_sampler", "make_searcher"]

TRIAL_ATTR = "ray_trial_id"  # user attribute of each Optuna trial: the Tune trial that runs it


class FullBudgetOptunaSearch(OptunaSearch):
    """OptunaSearch that records PRUNED / FAIL / COMPLETE from how the trial really ended:
    COMPLETE with the final objective values only when the trial reached its last epoch, PRUNED
    when a scheduler stopped it earlier (plain OptunaSearch would tell COMPLETE with early-epoch
    values, which pollute the Pareto front), FAIL on an error or a non-finite objective.

    It also survives a driver that was killed (:meth:`reconcile`): the study in the RDB storage is
    written at once, Ray's copy of this searcher only every few seconds, so after a kill the study
    can hold trials that the restored searcher never heard of. Those asked but not finished are
    handed out again (their parameters, under the new Tune trial that runs them); those finished
    count toward ``total`` (the search's trial count), so the study ends with ``total`` trials,
    each told once."""

    def __init__(self, *args, total: int | None = None, objectives: list | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.total = total
        self.objectives = objectives  # with their hypervolume references: a path trial's told point
        self._reusable: list[int] = []  # storage ids of asked, unfinished trials that Ray never recorded
        self.adopted: list[optuna.trial.FrozenTrial] = []  # finished trials that Ray never recorded

    def suggest(self, trial_id: str) -> dict | None:
        if not _compat.knows(self, trial_id):
            if self._reusable:
                _compat.adopt_trial(self, trial_id, self._reusable.pop(0))
            elif self.total is not None and _compat.asked(self) + len(self.adopted) >= self.total:
                return Searcher.FINISHED
        config = super().suggest(trial_id)
        _compat.trial_of(self, trial_id).set_user_attr(TRIAL_ATTR, trial_id)
        faults.point("asked")
        return config

    @property
    def reusable(self) -> int:
        """Asked trials that Ray never recorded, still to be suggested again."""
        return len(self._reusable)

    def reconcile(self) -> list[optuna.trial.FrozenTrial]:
        """After a restore: the study's trials that this (restored) searcher does not know. The
        unfinished ones are queued to be suggested again; the finished ones are returned (and
        counted toward ``total``): their results are in the study, and Ray will never run them."""
        known = _compat.known_numbers(self)
        self._reusable, self.adopted = [], []
        for t in _compat.study_of(self).get_trials(deepcopy=False):
            if t.number in known:
                continue
            if t.state.is_finished():
                self.adopted.append(t)
            else:
                self._reusable.append(_compat.storage_id(t))
        return self.adopted

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if _compat.optuna_trial_of(self, trial_id) is None:
            return
        state, values = optuna.trial.TrialState.FAIL, None
        if not error and result and not result.get("trial_failed"):
            if result.get("final") == 1.0:
                values = [result.get(m) for m in self.metric]
                if result.get(POINTS_KEY) and self.objectives:
                    values = self._best_point(json.loads(result[POINTS_KEY])) or values
                if all(finite(v) for v in values):
                    state = optuna.trial.TrialState.COMPLETE
                else:
                    values = None
            else:
                state = optuna.trial.TrialState.PRUNED
        _compat.tell_once(self, trial_id, values, state)
        faults.point("told")


    def _best_point(self, points: list[dict]) -> list | None:
        """A path trial is told the objective values of its point with the largest hypervolume of
        its own (the volume it alone dominates, normalised as the search's frontier is): one trial,
        one told point, as Optuna's samplers expect (docs/RESULTS.md says what is measured of it)."""
        rows = [p for p in points if all(finite(p.get(m)) for m in self.metric)]
        if not rows:
            return None
        values, reference = objective_matrix(rows, self.objectives)
        modes = [o.mode for o in self.objectives]
        own = [pareto.hypervolume(values[i:i + 1], modes, reference) for i in range(len(rows))]
        best = rows[max(range(len(rows)), key=lambda i: (own[i], -i))]
        return [best[m] for m in self.metric]


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":  # multivariate + group: the space is conditional per family
            return BoundedTPESampler(history=spec.sampler_history, seed=spec.seed, multivariate=True, group=True,
                                     constant_liar=True, n_startup_trials=max(4, min(10, spec.trials // 3)))
        if spec.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, min(50, spec.trials // 4)))
        if spec.sampler == "gp":
            return optuna.samplers.GPSampler(seed=spec.seed)
        return optuna.samplers.RandomSampler(seed=spec.seed)



def make_searcher(spec: SearchSpec, optuna_url: str, study_name: str) -> FullBudgetOptunaSearch:
    """Optuna's sampler behind Ray, with its study in the RDB storage (optuna-dashboard reads it;
    only the driver writes it, so SQLite is enough)."""
    import warnings

    storage = optuna.storages.RDBStorage(optuna_url)
    searcher = FullBudgetOptunaSearch(space=SpaceDefinition(spec), metric=spec.objective_names(),
                                      mode=spec.objective_modes(), sampler=make_sampler(spec),
                                      storage=storage, study_name=study_name, total=spec.trials,
                                      objectives=list(spec.objectives))
    with warnings.catch_warnings():  # experimental in Optuna 5; optuna-dashboard shows these names
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _compat.study_of(searcher).set_metric_names(spec.objective_names())
    return searcher

