"""The whole check of one training config before any work: ``check_trial(cfg) -> DataSpec``.

:func:`~trainables.check.check_config` is the cheap part (data headers, the model built on the
``meta`` device, the regularizer resolved against it), run for every config a search spec can
produce. ``check_trial`` adds what needs the real network, once per model: it builds the model on
the CPU with its trained weights (``model.weights``), runs one batch through it in train and in
eval mode and checks that the output is ``[batch, num_classes]``, resolves the regularizer's layer
selection against it, and checks that the network can be compacted
(:func:`~trainables.compact.check_compactable`). ``sparsetune train`` runs it before training and
``sparsetune search`` before Ray starts.

Every problem is a :class:`~trainables.configbase.ConfigError` naming the field and the value
(``model.factory``, ``model.arch``, ``model.weights``, ``regularizer.layers``...). A network that
cannot be compacted is no error: it trains and is measured with ``compaction: none`` and dense
FLOPs, and ``check_trial`` says so with a :class:`NotCompactableWarning`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .compact import check_compactable
from .config import ConfigError, ModelConfig, TrialConfig
from .data import DataSpec, describe
from .models import build_model
from .regularizers import build_layer_regularizers

__all__ = ["check_trial", "model_source", "NotCompactableWarning"]


class NotCompactableWarning(UserWarning):
    """The network cannot be compacted: it will train with ``compaction: none`` and dense FLOPs."""


def model_source(cfg: ModelConfig) -> tuple[str, Any]:
    """The field that names the network and its value: ``model.factory``, ``model.arch`` or
    ``model.name`` (a built-in)."""
    field = getattr(type(cfg), "source_field", "name")
    return f"model.{field}", getattr(cfg, field)


def check_trial(cfg: TrialConfig) -> DataSpec:
    """Check ``cfg`` against its data and its real network (see the module docstring)."""
    spec = describe(cfg.data)
    field, value = model_source(cfg.model)
    with torch.device("cpu"):
        try:
            model = build_model(cfg.model, spec)
        except ConfigError:
            raise
        except ValueError as e:  # a built-in's own check, e.g. an input too small for the architecture
            raise ConfigError([("model", str(e), cfg.model.name)]) from None
    _check_output(model, spec, field, value)
    build_layer_regularizers(cfg.regularizer, model, input_shape=spec.input_shape, tying=cfg.tying.enabled)
    reason = check_compactable(model, spec.input_shape)
    if reason is not None:
        warnings.warn(f"{field} {value!r} cannot be compacted, so it will train with compaction: none "
                      f"and flops_compact = flops_dense: {reason}", NotCompactableWarning, stacklevel=2)
    return spec


def _check_output(model: nn.Module, spec: DataSpec, field: str, value: Any) -> None:
    shape = [2, *spec.input_shape]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ref = next(iter(model.parameters()), None)
    if ref is not None:
        x = x.to(ref.dtype)
    for training in (True, False):  # training calls the model in train mode, evaluation in eval mode
        model.train(training)
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as e:  # noqa: BLE001 - the user's network: any failure is a config problem
            raise ConfigError([(field, f"the network fails on a batch of shape {shape} (the data's "
                                       f"input_shape is {tuple(spec.input_shape)}): {type(e).__name__}: {e}", value)]) from None
        expected = [2, spec.num_classes]
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if got != expected:
            mode = "train" if training else "eval"
            raise ConfigError([(field, f"the network returns {got} in {mode} mode for a batch of shape "
                                       f"{shape}; expected a tensor [batch, num_classes] = {expected}",
                                value)])
    model.eval()
