"""What every model family shares: ``build_model``, ``prunable_layers`` and the input-shape
checks. The families themselves are one module each in this package.
"""

from __future__ import annotations

from torch import nn

from ..configbase import check_finite
from ..data import DataSpec
from ..families import MODELS, ModelConfig

__all__ = ["build_model", "prunable_layers", "image_shape", "check_dropout"]


def build_model(cfg: ModelConfig, spec: DataSpec, *, weights: bool = True) -> nn.Module:
    """The model of family ``cfg.name`` for data described by ``spec``, with its trained weights
    (``model.weights``, checked against ``model.weights_sha256`` when set) loaded unless ``weights=False`` (an architecture only: validation on the
    ``meta`` device, a compact model rebuilt from its file)."""
    family = MODELS.get(cfg.name)  # ValueError listing the registered models
    if not isinstance(cfg, family):  # e.g. ModelConfig.model_construct(name=...)
        raise ValueError(f"model config for {cfg.name!r} must be a {family.__name__}, "
                         f"got {type(cfg).__name__}")
    _check_spec(spec)
    model = cfg.build(spec)
    if weights:
        cfg.load_weights(model, spec)  # ModelConfig.load_weights: the file (or a source's named weights)
    return model


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Linear`` / ``nn.Conv2d`` as ``(qualified name, module)``, in module order
    (which is forward order for the models of this zoo)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


# ----------------------------------------------------------------------------- helpers


def _check_spec(spec: DataSpec) -> None:
    shape = tuple(spec.input_shape)
    if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape!r}")
    if not isinstance(spec.num_classes, int) or spec.num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got num_classes={spec.num_classes!r}")


def image_shape(spec: DataSpec, model: str) -> tuple[int, int, int]:
    """``spec.input_shape`` as ``(C, H, W)``; a ``ValueError`` naming the model otherwise."""
    shape = tuple(spec.input_shape)
    if len(shape) != 3:
        raise ValueError(f"model {model!r} needs image inputs (C, H, W), got input_shape={shape}")
    return shape  # type: ignore[return-value]


def check_dropout(value: float) -> None:
    """A model family's ``dropout`` check: finite, in [0, 1)."""
    check_finite(value, "dropout", 0, 1, hi_open=True)

