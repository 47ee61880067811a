"""CGES, combined group and exclusive sparsity (Yoon & Hwang, ICML 2017, Eq. 5).

``Omega_l(W) = lam [ (1 - mu_l) g_l sum_i ||W_i||_2 + (mu_l / 2) e_l sum_i ||W_i||_1^2 ]``

with ``mu_l`` the per-layer balance (rising with depth in the official code: 0.2, 0.4, 0.6, 0.8)
and ``g_l``, ``e_l`` optional per-layer factors (the official code's ``glayerwise`` and
``elayerwise``, hand-set for its 4-layer MNIST net; 1 by default).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..configbase import Ends, Schedule, _check_schedule
from ..prox import cges_step, prox_exclusive_lasso, prox_group_lasso
from .base import LamConfig, Regularizer, mask_pruned, register

__all__ = ["CGES", "CGESConfig"]


class CGESConfig(LamConfig):
    """CGES (Yoon & Hwang 2017) with the official code's settings."""

    name: Literal["cges"] = "cges"
    groups: Literal["input", "input_position", "filter"] = "input_position"
    lam: Schedule = 1e-2
    mu: Schedule = Field(Ends(first=0.2, last=0.8),
                         description="per-layer weight of the exclusive term in [0, 1] (the group term "
                                     "gets 1 - mu); rising with depth in the official code")
    exact: bool = Field(False, description="the exact exclusive prox after the group step, instead of "
                                           "the official one-shot threshold")
    group_scale: Schedule = Field(1.0, description="per-layer factor on the group term (official "
                                                   "`glayerwise`)")
    exclusive_scale: Schedule = Field(1.0, description="per-layer factor on the exclusive term "
                                                       "(official `elayerwise`)")
    mask_pruned: bool = mask_pruned(False)

    @model_validator(mode="after")
    def _check(self) -> CGESConfig:
        _check_schedule(self.mu, "mu", 0, 1)
        _check_schedule(self.group_scale, "group_scale", 0)
        _check_schedule(self.exclusive_scale, "exclusive_scale", 0)
        return self


@register
class CGES(Regularizer):
    """The step is the official composition (``exact=False``): group shrink, then the one-shot
    exclusive threshold on the group-shrunk rows (algorithms.md §2.2). ``exact=True`` follows the
    group step with the exact exclusive-lasso prox instead. Neither is the exact prox of the sum
    (the composition trick needs 1-homogeneity, §2.7); at practical thresholds they agree closely.
    """

    name = "cges"
    config = CGESConfig
    params = ("lam", "mu", "group_scale", "exclusive_scale", "exact")

    def __init__(self, lam: float, mu: float, group_scale: float = 1.0,
                 exclusive_scale: float = 1.0, exact: bool = False):
        self.lam, self.mu, self.exact = lam, mu, exact
        self.group_scale, self.exclusive_scale = group_scale, exclusive_scale

    def _weights(self) -> tuple[float, float]:
        return (self.lam * (1 - self.mu) * self.group_scale, self.lam * self.mu * self.exclusive_scale)

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        g, e = self._weights()
        return g * torch.linalg.vector_norm(W, dim=1).sum() + 0.5 * e * W.abs().sum(dim=1).pow(2).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        g, e = self._weights()
        if self.exact:
            return prox_exclusive_lasso(prox_group_lasso(W, step * g), step * e)
        return cges_step(W, step * g, step * e)
