"""No regularization (the layers are still selected, e.g. for parameter tying)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from ..families import RegularizerConfig
from .base import Regularizer, register

__all__ = ["NoRegularizer", "NoneConfig"]


class NoneConfig(RegularizerConfig):
    """No regularization: the selected layers are still the ones tying works on."""

    sparsifies: ClassVar[bool] = False
    name: Literal["none"] = "none"


@register
class NoRegularizer(Regularizer):
    name = "none"
    config = NoneConfig

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        return W.new_zeros(())

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return W.clone()
