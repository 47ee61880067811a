"""Group lasso: ``Omega(W) = lam sum_i ||W_i||_2`` over the rows (groups)."""

from __future__ import annotations

from typing import Literal

import torch

from ..configbase import Schedule
from ..prox import prox_group_lasso
from .base import LamConfig, Regularizer, mask_pruned, register, row_scale, scale_factor

__all__ = ["GroupLasso", "GroupLassoConfig"]


class GroupLassoConfig(LamConfig):
    """Group lasso as GrOWL's baseline: per-epoch prox and masking, like the official code."""

    name: Literal["group_lasso"] = "group_lasso"
    prox_every: Literal["step", "epoch"] = "epoch"
    lam: Schedule = 0.1
    mask_pruned: bool = mask_pruned(True)
    scale: Literal["absolute", "relative"] = row_scale()


@register
class GroupLasso(Regularizer):
    """Removes whole groups (rows). With GrOWL's ``input`` grouping a zero row is a dead input
    neuron/channel. Equals GrOWL with constant weights (``lambda2 = 0``)."""

    name = "group_lasso"
    config = GroupLassoConfig

    def __init__(self, lam: float, scale: str = "absolute"):
        self.lam, self.scale = lam, scale

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        return self.lam * scale_factor(W, self.scale) * torch.linalg.vector_norm(W, dim=1).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return prox_group_lasso(W, step * self.lam * scale_factor(W, self.scale))
