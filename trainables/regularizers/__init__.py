"""Regularizers: one module per family, its parameters (a config class) beside its implementation
(a small object with ``penalty(W)``, ``prox(W, step)`` and the ``update`` hook the training loop
calls after each optimizer step, or a :class:`Pruner`: masks on a schedule over steps).

``none``, ``l2``, ``l1``, ``group_lasso``, ``exclusive_lasso``, ``cges``, ``growl`` (OSCAR is
``growl`` with ``p = 1``), and the pruning baselines ``magnitude`` and ``channel_magnitude``
(Zhu & Gupta's gradual schedule, :mod:`.gradual`). ``build_layer_regularizers(cfg, model)``
resolves a config against a model: which layers, which grouping, and each layer's values of the
depth schedules.
"""

from __future__ import annotations

from ..families import REGULARIZERS

# registration, in the order the families are listed (docs, "valid" lists)
from . import none, l2, l1, group_lasso, exclusive_lasso, cges, growl  # noqa: E402, F401, I001  isort: skip
from . import magnitude, channel_magnitude  # noqa: E402, F401, I001  isort: skip
from .base import (  # noqa: E402
    ChannelLayerRegularizer,
    LamConfig,
    LayerRegularizer,
    Pruner,
    Regularizer,
    build_layer_regularizers,
    get_regularizer,
    implementations,
    register,
    scheduled_params,
    select_layers,
)

__all__ = [
    "REGULARIZERS",
    "LamConfig",
    "LayerRegularizer",
    "ChannelLayerRegularizer",
    "Pruner",
    "Regularizer",
    "build_layer_regularizers",
    "get_regularizer",
    "implementations",
    "register",
    "scheduled_params",
    "select_layers",
]
