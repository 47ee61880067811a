"""Squared l2 (weight decay as a proximal step): ``Omega(W) = (lam/2) ||W||_F^2``."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from ..configbase import Schedule
from ..prox import flush_subnormals_
from .base import LamConfig, Regularizer, register

__all__ = ["L2", "L2Config"]


class L2Config(LamConfig):
    """Squared l2 as a proximal step on the selected layers (not `optim.weight_decay`)."""

    sparsifies: ClassVar[bool] = False
    name: Literal["l2"] = "l2"
    lam: Schedule = 1e-3  # suits the embedded default (digits, mlp, sgd lr 0.1); tune it per problem


@register
class L2(Regularizer):
    """prox: ``W / (1 + step * lam)``. Unlike ``optim.weight_decay`` it acts on the selected
    layers' weights only, and after the optimizer step. Its geometric shrinking never reaches
    zero by itself, so entries below ``prox.FLUSH_BELOW`` are flushed to 0 (no subnormals)."""

    name = "l2"
    config = L2Config

    def __init__(self, lam: float):
        self.lam = lam

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.lam * W.pow(2).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return flush_subnormals_(W / (1 + step * self.lam))
