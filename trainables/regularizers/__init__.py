"""Regularizers: a registry of small objects with ``penalty(W)`` and ``prox(W, step)``.

``none``, ``l2``, ``l1``, ``group_lasso``, ``exclusive_lasso``, ``cges``, ``growl`` (OSCAR is
``growl`` with ``p = 1``). ``build_layer_regularizers(cfg, model)`` resolves a config against a
model: which layers, which grouping, and each layer's values of the depth schedules.
"""

from __future__ import annotations

from . import cges, exclusive_lasso, group_lasso, growl, l1, l2, none  # noqa: F401 (registration)
from .base import (
    REGISTRY,
    SCHEDULED_PARAMS,
    LayerRegularizer,
    Regularizer,
    build_layer_regularizers,
    get_regularizer,
    register,
    select_layers,
)

__all__ = [
    "REGISTRY",
    "SCHEDULED_PARAMS",
    "LayerRegularizer",
    "Regularizer",
    "build_layer_regularizers",
    "get_regularizer",
    "register",
    "select_layers",
]
