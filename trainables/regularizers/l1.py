"""Lasso: ``Omega(W) = lam ||W||_1``, element-wise sparsity."""

from __future__ import annotations

import torch

from ..prox import prox_l1
from .base import Regularizer, register

__all__ = ["L1"]


@register
class L1(Regularizer):
    name = "l1"
    params = ("lam",)

    def __init__(self, lam: float):
        self.lam = lam

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        return self.lam * W.abs().sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return prox_l1(W, step * self.lam)
