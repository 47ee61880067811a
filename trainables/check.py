"""Check a config against its data and model before any work starts.

``check_config(cfg)`` reads only what is cheap (file headers, shapes), builds the model on the
``meta`` device (no memory, no compute) and resolves the regularizer against it (layer selection,
one value per layer for every schedule). Every problem is a ``ConfigError`` naming the field and
the value: a missing data file, a CSV without its target column, a schedule list of the wrong
length for the model, a layer name the model does not have, ...
"""

from __future__ import annotations

import torch

from .config import ConfigError, TrialConfig
from .data import DataSpec, describe
from .models import build_model
from .regularizers import build_layer_regularizers

__all__ = ["check_config"]


def check_config(cfg: TrialConfig) -> DataSpec:
    spec = describe(cfg.data)
    with torch.device("meta"):
        try:
            model = build_model(cfg.model, spec, weights=False)
        except ConfigError:
            raise
        except ValueError as e:  # e.g. an input too small for the architecture
            raise ConfigError([("model", str(e), cfg.model.name)]) from None
    build_layer_regularizers(cfg.regularizer, model, input_shape=spec.input_shape, tying=cfg.tying.enabled)
    return spec
