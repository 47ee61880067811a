"""Fault injection for the driver: ``SPARSETUNE_FAULT=point:k`` kills the driver (``os._exit``,
as ``kill -9`` would: no handler, no flush) the k-th time it passes ``point``.

The points sit between the writes of one trial's life (docs/ARCHITECTURE.md, "one completion, in
order"); tests/test_search_e2e.py kills a search at each of them and checks that ``--resume``
loses and duplicates nothing. Unset (always, outside those tests), :func:`point` does nothing.
"""

from __future__ import annotations

import os

__all__ = ["POINTS", "START_POINTS", "point"]

POINTS = (
    "asked",  # an Optuna trial asked for a new Tune trial (the study has it; Ray's state may not)
    "reported",  # an epoch's metrics handed to the tracker
    "told",  # a trial's end told to the Optuna study, before MLflow records it
    "artifacts",  # a complete trial's artifacts in MLflow, its state not yet
    "recorded",  # a trial's end recorded in MLflow, before Ray saves its state
    "saving",  # Ray saving its experiment state (its trials and searcher written, the callbacks not)
)
START_POINTS = (  # the spec's `start` (search/start.py), before any trial
    "start_trained",  # the search's start trained into its temporary folder, not yet renamed into place
    "start_recorded",  # the start in place and recorded in MLflow, before Ray made the Tuner (no tuner.pkl)
)
_seen: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("SPARSETUNE_FAULT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(count or 1):
        os._exit(137)
