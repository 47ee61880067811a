"""GrOWL, group ordered weighted l1 (Zhang et al., ICLR 2018): ``Omega(W) = sum_i lam_i ||W_[i]||``.

``W_[i]`` is the row with the i-th largest norm and ``lam`` the non-increasing sequence of Eq. 9:
``lam_i = lambda1 + (P - i + 1) lambda2`` for ``i <= P = floor(p n)``, ``lambda1`` after. Rows
with large norms are penalised more and pulled towards equal norms, which prunes and *ties*
correlated rows. ``p = 1`` is OSCAR; ``lambda2 = 0`` is the group lasso.
"""

from __future__ import annotations

import torch

from ..prox import _growl_prox_unchecked, growl_weights
from .base import Regularizer, growl_rank, register

__all__ = ["GrOWL"]


@register
class GrOWL(Regularizer):
    name = "growl"
    params = ("p", "lambda1", "lambda2")

    def __init__(self, p: float, lambda1: float, lambda2: float):
        self.p, self.lambda1, self.lambda2 = p, lambda1, lambda2
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
        return (self.weights(W.shape[0], W.dtype, W.device) * norms).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        # the weights were validated when built (growl_weights), so skip prox_growl's checks
        return _growl_prox_unchecked(W, step * self.weights(W.shape[0], W.dtype, W.device))
