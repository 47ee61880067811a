"""The regularizer interface, the registry, and the per-layer plan built from a config."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import LAYER_SELECTIONS, ConfigError, RegularizerConfig, resolve_schedule
from ..groups import from_groups, member_dims, to_groups

__all__ = [
    "Regularizer",
    "REGISTRY",
    "register",
    "get_regularizer",
    "LayerRegularizer",
    "select_layers",
    "build_layer_regularizers",
    "SCHEDULED_PARAMS",
]

# Parameters given as a schedule over depth (a number, a list, or {first, last}).
SCHEDULED_PARAMS = ("lam", "mu", "lambda1", "lambda2", "group_scale", "exclusive_scale")


class Regularizer(ABC):
    """A penalty ``Omega`` on one layer's group matrix ``W`` (``[groups, members]``).

    ``penalty(W)`` is ``Omega(W)``, strengths included. ``prox(W, step)`` is
    ``argmin_X 1/2||X - W||^2 + step * Omega(X)``: the training loop calls it right after the
    optimizer step with ``step`` = the current learning rate. Both are pure (never modify ``W``).
    Subclasses are built with their per-layer parameter values as keyword arguments.

    Where ``in_place`` is true, ``prox_(W, dims, step, scratch)`` does the same step in place on
    the layer's weight itself (members spanning ``dims``, ``trainables.groups.member_dims``;
    ``scratch`` a weight-sized buffer the caller keeps): the per-step fast path.
    """

    name: ClassVar[str]
    params: ClassVar[tuple[str, ...]] = ()  # constructor arguments, in config field names
    in_place: bool = False

    @abstractmethod
    def penalty(self, W: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor: ...

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self.params)
        return f"{type(self).__name__}({args})"


REGISTRY: dict[str, type[Regularizer]] = {}


def register(cls: type[Regularizer]) -> type[Regularizer]:
    if cls.name in REGISTRY:
        raise ValueError(f"regularizer {cls.name!r} is already registered ({REGISTRY[cls.name]!r})")
    REGISTRY[cls.name] = cls
    return cls


def get_regularizer(name: str) -> type[Regularizer]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown regularizer {name!r}; valid: {sorted(REGISTRY)}") from None


@dataclass
class LayerRegularizer:
    """One regularized layer: its module, its grouping and its regularizer instance."""

    name: str
    module: nn.Module
    grouping: str
    regularizer: Regularizer
    scratch: torch.Tensor | None = field(default=None, repr=False)  # for an in-place prox_

    def groups(self) -> torch.Tensor:
        return to_groups(self.module.weight.detach(), self.grouping)

    def penalty(self) -> torch.Tensor:
        return self.regularizer.penalty(to_groups(self.module.weight, self.grouping))

    @torch.no_grad()
    def apply_prox(self, step: float) -> None:
        W = self.module.weight
        if self.regularizer.in_place:  # the fast path, on the weight itself
            if self.scratch is None or self.scratch.shape != W.shape or self.scratch.device != W.device:
                self.scratch = torch.empty_like(W)
            self.regularizer.prox_(W.detach(), member_dims(W.ndim, self.grouping), step, self.scratch)
            return
        new = self.regularizer.prox(to_groups(W.detach(), self.grouping), step)
        W.copy_(from_groups(new, W.shape, self.grouping))


def select_layers(layers: list[tuple[str, nn.Module]], selection: str | list[int | str]
                  ) -> list[tuple[str, nn.Module]]:
    """The layers chosen by a ``regularizer.layers`` value, in model order."""
    n = len(layers)
    if isinstance(selection, str):
        if selection not in LAYER_SELECTIONS:
            raise ConfigError([("regularizer.layers", f"expected one of {list(LAYER_SELECTIONS)}", selection)])
        lo = 1 if selection in ("all_but_first", "inner") else 0
        hi = n - 1 if selection in ("all_but_last", "inner") else n
        return layers[lo:hi]
    names = [name for name, _ in layers]
    chosen: set[int] = set()
    for item in selection:
        if isinstance(item, int):
            if not -n <= item < n:
                raise ConfigError([("regularizer.layers",
                                    f"layer index out of range: the model has {n} Conv2d/Linear layers", item)])
            index = item % n
        elif item in names:
            index = names.index(item)
        else:
            raise ConfigError([("regularizer.layers", f"no such layer; the model's layers are {names}", item)])
        if index in chosen:
            raise ConfigError([("regularizer.layers", "layer selected twice", item)])
        chosen.add(index)
    return [layers[i] for i in sorted(chosen)]


def build_layer_regularizers(cfg: RegularizerConfig, model: nn.Module) -> list[LayerRegularizer]:
    """Resolve the config against a model: chosen layers, per-layer schedule values, instances."""
    from ..models import prunable_layers

    cls = get_regularizer(cfg.name)
    layers = select_layers(prunable_layers(model), cfg.layers)
    if not layers and cfg.name != "none":
        raise ConfigError([("regularizer.layers", "selects no layer of this model", cfg.layers)])
    per_layer: list[dict[str, Any]] = [{} for _ in layers]
    for param in cls.params:
        value = getattr(cfg, param)
        values = resolve_schedule(value, len(layers), param) if param in SCHEDULED_PARAMS else [value] * len(layers)
        for kwargs, v in zip(per_layer, values):
            kwargs[param] = v
    return [LayerRegularizer(name, module, cfg.groups, cls(**kwargs))
            for (name, module), kwargs in zip(layers, per_layer)]


def growl_rank(p: float, n: int) -> int:
    """The integer p of GrOWL Eq. 9 for a fraction ``p`` of ``n`` rows: floor(p n), at least 1."""
    return max(1, min(n, math.floor(p * n + 1e-9)))
