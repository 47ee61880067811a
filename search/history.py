"""MO-TPE with a bounded history: the sampler's cost stops growing with the search.

Optuna's multi-objective TPE splits every finished trial into its best 10% (``below``: the first
non-domination ranks, ties broken by hypervolume subset selection) and the rest (``above``), and
models both; at 10,000 trials that costs ~0.8-1.9 s per ``ask`` (docs/RESULTS.md, Performance
§8), most of it ranking every trial again for each parameter group. :class:`BoundedTPESampler`
shows TPE a view of the study instead:

- **the elite**: every finished trial dominated by fewer than ``ELITE`` (25) others, over the whole
  history (:class:`DominanceArchive` keeps it as trials finish, comparing each new one with the
  elite only). It holds the study's first ranks: the view's Pareto front is the study's, and an
  elite trial's rank in the view is its rank in the study; nothing good is forgotten. On a
  problem whose trials crowd onto a wide front the elite grows with the search, so the view takes
  at most ``history`` of it: those dominated by the fewest, the most recent first among equals
  (then the view's front is a subset of the study's);
- **the most recent** ``history`` finished trials (COMPLETE and PRUNED), and every running one (the
  constant liar's).

TPE splits the view as it splits a study (its best 10% are ``below``), so ``below`` is drawn from
the whole history's best ranks and the recent trials, and ``above`` from the recent ones. This is
not plain MO-TPE once a search holds more than ``history`` finished trials (below that the view is
the whole study, and nothing changes): ``bench/sampler_history.py`` measures the hypervolume it
reaches against plain MO-TPE's, and docs/RESULTS.md reports it.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from . import _compat

__all__ = ["ELITE", "MIN_HISTORY", "BoundedTPESampler", "DominanceArchive"]

ELITE = 25  # the elite: trials dominated by fewer than this many (the study's first ranks)
MIN_HISTORY = 250  # fewer recent trials than this would leave TPE's above set thin


class DominanceArchive:
    """The points (losses, minimised) dominated by fewer than ``k`` of all points inserted so far.

    Insertion order does not matter: a point dominated by ``k`` or more is dominated by ``k`` or
    more members (take a minimal dominator outside the archive: its own ``k`` dominators are all
    members), so it is rejected on arrival or dropped when its ``k``-th member dominator arrives."""

    def __init__(self, k: int = ELITE):
        self.k = k
        self.keys: list[int] = []
        self._losses: np.ndarray | None = None  # (members, objectives)
        self._dominators = np.zeros(0, dtype=np.int64)  # each member's dominator count

    def __len__(self) -> int:
        return len(self.keys)

    def best(self, n: int) -> set[int]:
        """At most ``n`` members: those dominated by the fewest, the most recently inserted first
        among equals (all of them when there are no more than ``n``)."""
        if len(self.keys) <= n:
            return set(self.keys)
        order = sorted(range(len(self.keys)), key=lambda i: (self._dominators[i], -i))
        return {self.keys[i] for i in order[:n]}

    def insert(self, key: int, losses) -> bool:
        """Add a point; returns whether it is a member. Non-finite losses are never members."""
        v = np.asarray(losses, dtype=float)
        if not np.all(np.isfinite(v)):
            return False
        if self._losses is None:
            self._losses = np.empty((0, v.size))
        m = self._losses
        dominated_by = np.all(m <= v, axis=1) & np.any(m < v, axis=1)
        count = int(dominated_by.sum())
        if count >= self.k:
            return False
        dominates = np.all(v <= m, axis=1) & np.any(v < m, axis=1)
        counts = self._dominators + dominates
        keep = counts < self.k
        self.keys = [key_ for key_, kept in zip(self.keys, keep) if kept] + [key]
        self._losses = np.vstack([m[keep], v])
        self._dominators = np.append(counts[keep], count)
        return True


def _losses(trial: optuna.trial.FrozenTrial, directions: list[StudyDirection]) -> list[float]:
    return [-v if d == StudyDirection.MAXIMIZE else v for v, d in zip(trial.values, directions)]


class BoundedTPESampler(optuna.samplers.TPESampler):
    """:class:`optuna.samplers.TPESampler` that models the study's elite and its ``history`` most
    recent finished trials (see the module's docstring); ``history=None`` is plain TPE."""

    def __init__(self, *, history: int | None = 1000, **kwargs):
        if history is not None and history < MIN_HISTORY:
            raise ValueError(f"history must be None or >= {MIN_HISTORY}, got {history}")
        super().__init__(**kwargs)
        self.history = history
        self._archive = DominanceArchive(ELITE)
        self._archived: set[int] = set()  # numbers of the COMPLETE trials inserted into the archive
        self._cached: tuple[int, object] | None = None  # (trial number, view) for the trial being sampled

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cached"] = None  # a view of the study as it was: never restored
        return state

    def view(self, study: optuna.Study, trial: optuna.trial.FrozenTrial):
        """What TPE reads as the study while it samples ``trial`` (read once per trial)."""
        if self.history is None:
            return study
        if self._cached is not None and self._cached[0] == trial.number:
            return self._cached[1]
        trials = study.get_trials(deepcopy=False)
        directions = study.directions
        finished = 0
        for t in trials:
            if t.state == TrialState.COMPLETE:
                finished += 1
                if t.number not in self._archived:
                    self._archived.add(t.number)
                    if t.values is not None and all(math.isfinite(v) for v in t.values):
                        self._archive.insert(t.number, _losses(t, directions))
            elif t.state == TrialState.PRUNED:
                finished += 1
        view: object = study
        if finished > self.history:
            # the elite first, in its own (stable) order: TPE's tie-break among its best trials
            # (hypervolume subset selection, cached by the trials' positions) is then solved again
            # less often; TPE sorts its two sets by number itself
            by_number = {t.number: t for t in trials}
            members = self._archive.best(self.history)
            recent = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)][-self.history:]
            view = _compat.StudyView(study, [by_number[n] for n in self._archive.keys if n in members] + [
                t for t in trials if t.number not in members and (
                    t.state in (TrialState.RUNNING, TrialState.WAITING) or t.number >= recent[0].number
                    and t.state in (TrialState.COMPLETE, TrialState.PRUNED))])
        self._cached = (trial.number, view)
        return view

    def infer_relative_search_space(self, study, trial):
        return super().infer_relative_search_space(self.view(study, trial), trial)

    def sample_relative(self, study, trial, search_space):
        return super().sample_relative(self.view(study, trial), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return super().sample_independent(self.view(study, trial), trial, param_name, param_distribution)
