"""Structured gradual pruning: whole groups (``groups``: input neurons/channels, input positions or
filters) with the smallest l2 norm are masked to zero on Zhu & Gupta's cubic schedule
(:mod:`.gradual`), so the compacted network drops the neurons and channels and its FLOPs fall.

Per layer, ``final`` is the fraction of each layer's groups pruned, ranked by norm. With
``global`` it is the fraction of all selected layers' groups, ranked by the norm divided by
``sqrt(group size)`` (the root mean square of the group's weights): groups of different layers
have different sizes, and a raw norm grows with the size, so it would prune the layers with the
smallest groups first.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..groups import from_groups, to_groups
from .base import register
from .gradual import GradualConfig, GradualPruner

__all__ = ["ChannelMagnitude", "ChannelMagnitudeConfig"]


class ChannelMagnitudeConfig(GradualConfig):
    """Structured gradual pruning: the groups (rows of `groups`) with the smallest l2 norm masked
    to zero on Zhu & Gupta's cubic schedule, per layer or over all selected layers (`global`,
    ranked by norm / sqrt(group size)); `initial` and `final` count groups. No penalty; pruning
    runs after optimizer steps (`prox_every: step` only)."""

    name: Literal["channel_magnitude"] = "channel_magnitude"


@register
class ChannelMagnitude(GradualPruner):
    name = "channel_magnitude"
    config = ChannelMagnitudeConfig
    structured = True

    def _rows(self, W: torch.Tensor, g: int) -> torch.Tensor:
        # groups: channel hands over the channel-group matrix itself (trainables.channels)
        return W if self.groups == "channel" else to_groups(W, self.groups, g)

    def units(self, W: torch.Tensor, keep: torch.Tensor | None, ranked_globally: bool, *, g: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        G = self._rows(W.detach(), g)
        norms = torch.linalg.vector_norm(G, dim=1)
        if ranked_globally:
            norms = norms / math.sqrt(G.shape[1])
        if keep is None:
            return norms, torch.zeros(G.shape[0], dtype=torch.bool, device=W.device)
        return norms, self._rows(keep, g).eq(0).all(dim=1)

    def mask(self, W: torch.Tensor, pruned: torch.Tensor, *, g: int) -> torch.Tensor:
        G = (~pruned).unsqueeze(1).expand(-1, self._rows(W, g).shape[1])
        return G if self.groups == "channel" else from_groups(G, W.shape, self.groups, g)
