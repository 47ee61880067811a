"""sparsetune's search side: Ray Tune trials, Optuna's multi-objective samplers, MLflow tracking.

The only package that imports ray, optuna or mlflow (``trainables`` never does). ``import search``
itself is cheap: the names below load their module on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# the driver's Tune environment, set before any search module imports Ray:
# objectives are final metrics, so Ray's check that every report carries them is off
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# short trials checkpoint every few hundred milliseconds; Ray's "snapshotting may become a
# bottleneck" warning then fires every epoch and drowns the progress lines
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

_PUBLIC = {
    "run_search": "run", "SearchOutcome": "run", "find_resumable": "run",
    "SearchSpec": "spec", "SpecError": "spec", "load_spec": "spec", "validate_spec": "spec",
    "Frontier": "frontier", "Objective": "frontier",
    "Tracker": "tracking", "open_store": "store", "load_frontier": "store",
    "SpaceDefinition": "space", "FullBudgetOptunaSearch": "samplers", "make_sampler": "samplers",
    "make_searcher": "samplers", "make_scheduler": "schedulers", "MOASHAScheduler": "schedulers",
    "TrackingCallback": "callbacks", "train_trial": "trainable",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
