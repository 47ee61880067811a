"""Lasso: ``Omega(W) = lam ||W||_1``, element-wise sparsity."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from ..configbase import Schedule
from ..prox import prox_l1
from .base import LamConfig, Regularizer, mask_pruned, register

__all__ = ["L1", "L1Config"]


class L1Config(LamConfig):
    """The lasso: element-wise sparsity."""

    target_unit: ClassVar[Literal["groups", "elements"]] = "elements"  # target_sparsity counts weights
    name: Literal["l1"] = "l1"
    lam: Schedule = 1e-3
    mask_pruned: bool = mask_pruned(False)


@register
class L1(Regularizer):
    name = "l1"
    config = L1Config

    def __init__(self, lam: float):
        self.lam = lam

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        return self.lam * W.abs().sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return prox_l1(W, step * self.lam)
