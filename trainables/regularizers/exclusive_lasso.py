"""Exclusive lasso: ``Omega(W) = (lam/2) sum_i ||W_i||_1^2`` (members of a group compete)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from ..configbase import Schedule
from ..prox import prox_exclusive_lasso
from .base import LamConfig, Regularizer, mask_pruned, register

__all__ = ["ExclusiveLasso", "ExclusiveLassoConfig"]


class ExclusiveLassoConfig(LamConfig):
    """Exclusive lasso over CGES's groups (one per input position)."""

    target_unit: ClassVar[Literal["groups", "elements"]] = "elements"  # target_sparsity counts weights
    name: Literal["exclusive_lasso"] = "exclusive_lasso"
    paper_groups: ClassVar[Literal["input", "input_position"]] = "input_position"
    lam: Schedule = 3e-3
    mask_pruned: bool = mask_pruned(False)


@register
class ExclusiveLasso(Regularizer):
    """Sparsity *within* each group, with the exact prox (algorithms.md §4.7): the largest entry
    of a group always survives, so no group is ever removed whole."""

    name = "exclusive_lasso"
    config = ExclusiveLassoConfig

    def __init__(self, lam: float):
        self.lam = lam

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.lam * W.abs().sum(dim=1).pow(2).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return prox_exclusive_lasso(W, step * self.lam)
