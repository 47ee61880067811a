"""Optimizer and learning-rate-schedule families (``optim.name`` and ``optim.lr_schedule``).

Each family is one class: its parameters (which sit flat in the ``optim`` section, e.g.
``optim: {name: momentum, momentum: 0.9, lr_schedule: step, lr_step: 30}``) and a ``build``.
``cfg.optim.optimizer`` and ``cfg.optim.schedule`` are the chosen families' configs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from .configbase import FieldError, check_finite
from .families import LR_SCHEDULES, OPTIMIZERS, LRScheduleConfig, OptimizerConfig

__all__ = ["SGDConfig", "MomentumConfig", "AdamConfig", "ConstantLRConfig", "StepLRConfig", "CosineLRConfig"]


# ----------------------------------------------------------------------------- optimizers


@OPTIMIZERS.register
class SGDConfig(OptimizerConfig):
    """Plain SGD (the papers' proximal gradient)."""

    name: Literal["sgd"] = "sgd"

    def build(self, params: Iterable[Any], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register
class MomentumConfig(OptimizerConfig):
    """SGD with (heavy-ball or Nesterov) momentum; the prox still takes step = lr (official GrOWL)."""

    name: Literal["momentum"] = "momentum"
    momentum: float = Field(0.9, description="momentum factor, in [0, 1)")
    nesterov: bool = Field(False, description="Nesterov momentum")

    @model_validator(mode="after")
    def _check(self) -> MomentumConfig:
        check_finite(self.momentum, "momentum", 0, 1, hi_open=True)
        return self

    def build(self, params: Iterable[Any], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=weight_decay)


@OPTIMIZERS.register
class AdamConfig(OptimizerConfig):
    """Adam with PyTorch's defaults (betas 0.9, 0.999)."""

    name: Literal["adam"] = "adam"

    def build(self, params: Iterable[Any], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


# ----------------------------------------------------------------------------- lr schedules


@LR_SCHEDULES.register
class ConstantLRConfig(LRScheduleConfig):
    """The same learning rate throughout."""

    name: Literal["constant"] = "constant"

    def build(self, optimizer: torch.optim.Optimizer, epochs: int) -> None:
        return None


@LR_SCHEDULES.register
class StepLRConfig(LRScheduleConfig):
    """Multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs."""

    name: Literal["step"] = "step"
    lr_step: int = Field(10, description="epochs between two decays")
    lr_gamma: float = Field(0.1, description="the decay factor, in (0, 1]")

    @model_validator(mode="after")
    def _check(self) -> StepLRConfig:
        if self.lr_step < 1:
            raise FieldError("lr_step", "`lr_step >= 1` must hold", self.lr_step)
        check_finite(self.lr_gamma, "lr_gamma", 0, 1, lo_open=True)
        return self

    def build(self, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_step, gamma=self.lr_gamma)


@LR_SCHEDULES.register
class CosineLRConfig(LRScheduleConfig):
    """Cosine annealing from ``lr`` to 0 over ``optim.epochs``."""

    name: Literal["cosine"] = "cosine"

    def build(self, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
