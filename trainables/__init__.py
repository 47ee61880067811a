"""sparsetune's training side: one PyTorch training run under a structured-sparsity regularizer.

Never imports ray, optuna or mlflow (``search`` does). The entry points:

- ``TrialConfig``: the one config tree (``from_dict``, ``from_yaml``, ``to_dict``);
- ``check_config(cfg)``: validate a config against its data and model (cheap, on the meta device);
- ``check_trial(cfg)``: the whole check before training: the real network built and run once;
- ``fit(cfg, report=None)``: train, returning a ``Result`` (metrics, models, history);
- ``save_run(result, out_dir)``: write ``config.yaml``, ``result.json`` and the compact model.

``import trainables`` is cheap: each name loads its module on first use (PEP 562), so a torch-free
submodule (``trainables.schema``, ``trainables.configbase``, ``trainables.yamlio``) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "check_config": "check", "ConfigError": "config", "TrialConfig": "config", "save_run": "outputs",
    "Result": "train", "TrainingDiverged": "train", "fit": "train", "NotCompactableWarning": "validate",
    "check_trial": "validate",
}

__all__ = ["ConfigError", "NotCompactableWarning", "Result", "TrainingDiverged", "TrialConfig", "check_config",
           "check_trial", "fit", "save_run"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
