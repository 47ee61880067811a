"""Gradual magnitude pruning (Zhu & Gupta 2017): the weights with the smallest ``|w|`` are masked
to zero on the cubic schedule of :mod:`.gradual`, per layer or with one ranking over all selected
layers (``global``). A baseline with no penalty: what it prunes is element-wise, so the compacted
network loses a neuron or channel only where a whole group happens to be pruned."""

from __future__ import annotations

from typing import Literal

import torch

from .base import register
from .gradual import GradualConfig, GradualPruner

__all__ = ["Magnitude", "MagnitudeConfig"]


class MagnitudeConfig(GradualConfig):
    """Gradual magnitude pruning (Zhu & Gupta 2017): the smallest weights, by ``|w|``, masked to
    zero on a cubic schedule from ``initial`` to ``final`` sparsity between ``start_epoch`` and
    ``end_epoch``, per layer or over all selected layers (``global``); no penalty. Pruning runs
    after optimizer steps (``prox_every: step`` only); ``groups`` only names the groups counted in
    the metrics."""

    name: Literal["magnitude"] = "magnitude"


@register
class Magnitude(GradualPruner):
    name = "magnitude"
    config = MagnitudeConfig

    def units(self, W: torch.Tensor, keep: torch.Tensor | None, ranked_globally: bool, *, g: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        pruned = keep.eq(0).flatten() if keep is not None else torch.zeros(W.numel(), dtype=torch.bool,
                                                                              device=W.device)
        return W.detach().abs().flatten(), pruned

    def mask(self, W: torch.Tensor, pruned: torch.Tensor, *, g: int) -> torch.Tensor:
        return (~pruned).reshape(W.shape)
