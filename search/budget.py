"""The time budget of a search, and resuming a search that it stopped.

Tune saves its stopper and its search algorithm with the experiment state. Restored as saved, a
search stopped by its budget would stop again at its first step (the stopper's budget is spent) and
start no trial (the generator is marked finished). The two classes here undo that on restore.
"""

from __future__ import annotations

from ray.tune.search import SearchGenerator
from ray.tune.stopper import TimeoutStopper

from . import _compat

__all__ = ["ResumableBudget", "ResumableGenerator"]


class ResumableGenerator(SearchGenerator):
    """Tune marks the search algorithm finished when the time budget stops the experiment, and
    saves that with it; a search resumed after its time budget goes on with the trials it has
    not started yet (the trial count still ends it)."""

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        _compat.reopen_generator(self)


class ResumableBudget(TimeoutStopper):
    """Tune's time budget, started afresh when the search is resumed.

    Tune saves its stopper with the experiment state and restores it with the budget already
    spent, so with ``TuneConfig(time_budget_s=...)`` a resumed search stops at its first step.
    This stopper resets its budget when it is unpickled; ``next_budget_s`` (``--resume
    --time-budget``) replaces it."""

    next_budget_s: float | None = None
    reached = False  # set when the budget stops the experiment (one search per driver process)

    def stop_all(self) -> bool:
        if super().stop_all():
            ResumableBudget.reached = True
        return ResumableBudget.reached

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        _compat.reset_timeout(self, ResumableBudget.next_budget_s)
