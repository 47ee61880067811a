"""GrOWL, group ordered weighted l1 (Zhang et al., ICLR 2018): ``Omega(W) = sum_i lam_i ||W_[i]||``.

``W_[i]`` is the row with the i-th largest norm and ``lam`` the non-increasing sequence of Eq. 9:
``lam_i = lambda1 + (P - i + 1) lambda2`` for ``i <= P = floor(p n)``, ``lambda1`` after. Rows
with large norms are penalised more and pulled towards equal norms, which prunes and *ties*
correlated rows. ``p = 1`` is OSCAR; ``lambda2 = 0`` is the group lasso.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..configbase import Schedule, check_schedule, check_finite
from ..families import LAYER_SELECTIONS, RegularizerConfig
from ..prox import growl_prox_unchecked, growl_weights
from .base import Regularizer, growl_rank, mask_pruned, register, row_scale, scale_factor

__all__ = ["GrOWL", "GrOWLConfig"]


class GrOWLConfig(RegularizerConfig):
    """GrOWL (Zhang et al. 2018) as in the official code: prox once per epoch, pruned rows masked,
    the last layer left alone. OSCAR is ``p: 1``."""

    name: Literal["growl"] = "growl"
    prox_every: Literal["step", "epoch"] = "epoch"
    layers: Literal[LAYER_SELECTIONS] | list[int | str] = "all_but_last"  # type: ignore[valid-type]
    p: float = Field(0.5, description="fraction of rows with a decreasing weight (Eq. 9), in (0, 1]; "
                                      "1 is OSCAR")
    lambda1: Schedule = Field(0.1, description="the constant part of the weights (the group-lasso term)")
    lambda2: Schedule = Field(1e-3, description="the slope of the decreasing weights (the tying term)")
    mask_pruned: bool = mask_pruned(True)
    scale: Literal["absolute", "relative"] = row_scale()

    @model_validator(mode="after")
    def _check(self) -> GrOWLConfig:
        check_finite(self.p, "p", 0, 1, lo_open=True)
        check_schedule(self.lambda1, "lambda1", 0)
        check_schedule(self.lambda2, "lambda2", 0)
        return self


@register
class GrOWL(Regularizer):
    name = "growl"
    config = GrOWLConfig

    def __init__(self, p: float, lambda1: float, lambda2: float, scale: str = "absolute"):
        self.p, self.lambda1, self.lambda2, self.scale = p, lambda1, lambda2, scale
        self._cache: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def weights(self, n: int, dtype: torch.dtype = torch.float64,
                device: torch.device | str = "cpu") -> torch.Tensor:
        """The ``n`` weights ``lam_1 >= ... >= lam_n`` for a layer with ``n`` rows (cached)."""
        key = (n, dtype, torch.device(device))
        if key not in self._cache:
            self._cache[key] = growl_weights(n, growl_rank(self.p, n), self.lambda1, self.lambda2,
                                             dtype=dtype, device=device)
        return self._cache[key]

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        norms = torch.sort(torch.linalg.vector_norm(W, dim=1), descending=True).values
        return scale_factor(W, self.scale) * (self.weights(W.shape[0], W.dtype, W.device) * norms).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        # the weights were validated when built (growl_weights), so skip prox_growl's checks
        return growl_prox_unchecked(W, step * scale_factor(W, self.scale) * self.weights(W.shape[0], W.dtype, W.device))
