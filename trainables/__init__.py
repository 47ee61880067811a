"""sparsetune's training side: one PyTorch training run under a structured-sparsity regularizer.

Never imports ray, optuna or mlflow (``search`` does). The entry points:

- ``TrialConfig``: the one config tree (``from_dict``, ``from_yaml``, ``to_dict``);
- ``check_config(cfg)``: validate a config against its data and model (cheap, on the meta device);
- ``check_trial(cfg)``: the whole check before training: the real network built and run once;
- ``fit(cfg, report=None)``: train, returning a ``Result`` (metrics, models, history);
- ``save_run(result, out_dir)``: write ``config.yaml``, ``result.json`` and the compact model.
"""

from __future__ import annotations

from .check import check_config
from .config import ConfigError, TrialConfig
from .outputs import save_run
from .train import Result, TrainingDiverged, fit
from .validate import NotCompactableWarning, check_trial

__all__ = ["ConfigError", "NotCompactableWarning", "Result", "TrainingDiverged", "TrialConfig", "check_config",
           "check_trial", "fit", "save_run"]
