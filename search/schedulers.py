"""Pareto-aware early stopping: multi-objective asynchronous successive halving (MO-ASHA).

Schmucker et al. 2021 ("Multi-objective multi-fidelity hyperparameter optimization with
application to fairness"); Syne Tune's ``MOASHA`` is the reference implementation. It is ASHA
(Li et al. 2020; Ray's ``AsyncHyperBandScheduler``) with the one-metric cutoff replaced by a
multi-objective ranking:

- **Rungs** at ``grace_period * reduction_factor**k`` epochs, every one below ``max_t``. ``max_t``
  is the full budget (by default the most epochs a trial of the spec runs): a trial that reaches it
  is complete, so a rung there would decide nothing, and the scheduler never stops a trial at
  ``max_t`` itself (unlike Ray's ASHA, which would cut a longer trial there and leave it PRUNED).
- **Asynchronous decision**, as in ASHA: when a trial first reports at (or past) a rung it has not
  been recorded at, it is ranked against the trials recorded at that rung so far, recorded there
  (stopped or not, it stays in the rung for later comparisons) and decided at once. The first trial
  at a rung always continues.
- **Ranking**: non-dominated sorting (``search.pareto.pareto_ranks``) of the objective vectors;
  within one front, ties are broken by the NSGA-II crowding distance computed within that front
  (Deb et al. 2002: the larger, the more isolated, the better; a front's extremes get infinity),
  which keeps the spread of the front rather than one corner of it. A trial **continues** when
  fewer than ``ceil(n / reduction_factor)`` of the ``n`` trials at the rung (itself included) are
  strictly ahead of it; trials with equal rank and crowding are not ahead of each other. Syne
  Tune's rule (continue while the fraction strictly ahead is ``<= 1/reduction_factor``) keeps one
  more trial when ``n`` is a multiple of the factor; this one keeps the top 1/η, rounded up.
- **Intermediate objectives** must be cheap and honest every epoch, so each final objective of
  the spec is read at the rungs through its per-epoch counterpart (:data:`EPOCH_OBJECTIVE`), in
  the objective's own direction.

Trials this stops are told to Optuna as PRUNED and tagged ``pruned`` in MLflow by the same code
as ASHA's (``search.samplers``, ``search.callbacks``): their last report is not final.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from trainables.schema import EPOCH_COUNTERPART

from .frontier import finite
from .pareto import pareto_ranks, to_minimization
from .space import rung_unit

if TYPE_CHECKING:
    from .spec import SearchSpec

__all__ = ["EPOCH_OBJECTIVE", "MOASHAScheduler", "crowding_distance", "epoch_objective", "make_scheduler",
           "rung_milestones"]

# Final objective (result.json) -> what every epoch reports for it (trainables.schema); the spec
# rejects objectives missing there for moasha.
EPOCH_OBJECTIVE = EPOCH_COUNTERPART


def epoch_objective(metric: str) -> str:
    """The per-epoch metric MO-ASHA ranks ``metric`` by (``ValueError`` if there is none)."""
    try:
        return EPOCH_OBJECTIVE[metric]
    except KeyError:
        raise ValueError(f"objective {metric!r} has no per-epoch counterpart for moasha; "
                         f"valid: {sorted(EPOCH_OBJECTIVE)}") from None


def rung_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """``grace_period * reduction_factor**k`` (rounded up to whole epochs), ascending, below ``max_t``."""
    out: list[int] = []
    k = 0
    while (t := math.ceil(grace_period * reduction_factor**k - 1e-9)) < max_t:
        if not out or t > out[-1]:
            out.append(t)
        k += 1
    return out


def crowding_distance(loss: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of ``loss`` (one front, already minimised).

    Per objective, the rows are sorted; the two extremes get infinity and every other row adds the
    gap between its neighbours divided by the objective's range (nothing when the range is 0).
    Fronts of one or two rows are all extremes."""
    n, m = loss.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(loss[:, j], kind="stable")
        col = loss[order, j]
        dist[order[[0, -1]]] = np.inf
        span = col[-1] - col[0]
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def _ahead(values: np.ndarray, directions: Sequence[str], i: int) -> int:
    """How many rows rank strictly ahead of row ``i``: a better Pareto rank, or the same rank and a
    larger crowding distance within that front."""
    ranks = pareto_ranks(values, directions)
    loss = to_minimization(values, directions)
    front = np.flatnonzero(ranks == ranks[i])
    crowd = crowding_distance(loss[front])
    mine = crowd[np.searchsorted(front, i)]
    return int((ranks < ranks[i]).sum() + (crowd > mine).sum())


class MOASHAScheduler(FIFOScheduler):
    """MO-ASHA over ``objectives`` = ``[(final metric, "max"|"min"), ...]`` (module docstring).

    ``on_trial_result`` returns ``CONTINUE`` or ``STOP``; a result without every objective (a
    diverged trial's report) or with a non-finite one is never a reason to stop and is not recorded.
    """

    def __init__(self, objectives: Sequence[tuple[str, str]], *, max_t: int, grace_period: int = 1,
                 reduction_factor: float = 3.0, time_attr: str = "epoch", per_epoch: bool = True):
        super().__init__()
        if not objectives:
            raise ValueError("MOASHAScheduler needs at least one objective, got none")
        for metric, mode in objectives:
            if mode not in ("max", "min"):
                raise ValueError(f"objective {metric!r}: mode must be 'max' or 'min', got {mode!r}")
        if isinstance(grace_period, bool) or not isinstance(grace_period, int) or grace_period < 1:
            raise ValueError(f"`grace_period >= 1` (an int) must hold, but got grace_period={grace_period!r}")
        if not (math.isfinite(reduction_factor) and reduction_factor > 1):
            raise ValueError(f"`reduction_factor > 1` must hold, but got reduction_factor={reduction_factor!r}")
        if isinstance(max_t, bool) or not isinstance(max_t, int) or max_t <= grace_period:
            raise ValueError(f"`max_t > grace_period` (an int) must hold, but got max_t={max_t!r}, "
                             f"grace_period={grace_period!r}")
        # every epoch's report: each objective's per-epoch counterpart; a path's points (per_epoch
        # False): the objectives themselves
        self._metrics = [epoch_objective(metric) if per_epoch else metric for metric, _ in objectives]
        self._directions = [mode for _, mode in objectives]
        self._time_attr = time_attr
        self._max_t = max_t
        self._reduction_factor = float(reduction_factor)
        self.milestones = rung_milestones(grace_period, reduction_factor, max_t)
        # rung milestone -> trial id -> its objective vector (original units and directions)
        self.recorded: dict[int, dict[str, np.ndarray]] = {t: {} for t in self.milestones}
        self.num_stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # the objectives are the scheduler's own; a TuneConfig(metric=...) would conflict with them
        return not (metric or mode)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.decide(trial.trial_id, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result:
            self._place(trial.trial_id, result)  # a finished trial still sets the bar at its rung

    def decide(self, trial_id: str, result: dict) -> str:
        """``CONTINUE`` or ``STOP`` for a trial that reported ``result`` (module docstring)."""
        t = result.get(self._time_attr)
        in_top = self._place(trial_id, result)
        if in_top is False and t < self._max_t:  # at max_t the trial is complete: nothing to stop
            self.num_stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _place(self, trial_id: str, result: dict) -> bool | None:
        """Record ``result`` at the highest rung it reached, if the trial is new there, and say
        whether it is in the rung's top 1/reduction_factor; None when there was nothing to record."""
        t = result.get(self._time_attr)
        vector = [result.get(m) for m in self._metrics]
        if not finite(t) or not all(finite(v) for v in vector):
            return None
        reached = [m for m in self.milestones if m <= t]
        if not reached or trial_id in self.recorded[reached[-1]]:
            return None
        rung = self.recorded[reached[-1]]
        rung[trial_id] = np.asarray(vector, dtype=float)
        values = np.stack(list(rung.values()))
        return _ahead(values, self._directions, len(rung) - 1) < math.ceil(len(rung) / self._reduction_factor)

    def debug_string(self) -> str:
        unit = "epoch" if self._time_attr == "epoch" else "stage"
        rungs = ", ".join(f"{unit} {m}: {len(self.recorded[m])} trials" for m in self.milestones)
        return f"Using MO-ASHA ({', '.join(self._metrics)}): stopped {self.num_stopped}; rungs {rungs}"


def make_scheduler(spec: SearchSpec):
    """The trial scheduler the spec asks for (FIFO: every trial runs its full budget). In a path
    search the rungs are stages (``space.rung_unit``): a trial is ranked at its points, by the
    objectives themselves (a point is measured like a finished run), and one it stops keeps the
    points it measured on the frontier."""
    s = spec.scheduler
    if s is None:
        return FIFOScheduler()
    unit, budget = rung_unit(spec)
    if s.type == "moasha":  # stops are recorded as PRUNED like ASHA's: the last report is not final
        return MOASHAScheduler([(o.metric, o.mode) for o in spec.objectives], max_t=s.max_t or budget,
                               grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                               time_attr=unit, per_epoch=unit == "epoch")
    return ASHAScheduler(time_attr=unit, metric=s.metric, mode=s.mode, max_t=budget,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)
