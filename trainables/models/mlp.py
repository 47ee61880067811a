"""``mlp``: Flatten -> [Linear -> ReLU -> (BatchNorm1d)] per hidden width -> (Dropout) -> Linear.

GrOWL's MNIST net (784-300-10, BN after the ReLU) is ``hidden=[300], batch_norm=True``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from ..configbase import MAX_SIZE, FieldError
from ..data import DataSpec
from ..families import MODELS, ModelConfig
from .base import check_dropout

__all__ = ["MLP", "MLPConfig"]


@MODELS.register
class MLPConfig(ModelConfig):
    """A fully connected network on the flattened input."""

    name: Literal["mlp"] = "mlp"
    hidden: list[int] = Field([300], description="hidden layer widths (784-300-10 is `[300]`)")
    batch_norm: bool = Field(False, description="BatchNorm after each hidden ReLU (GrOWL's MNIST net)")
    dropout: float = Field(0.0, description="dropout probability before the last layer")

    @model_validator(mode="after")
    def _check(self) -> MLPConfig:
        if any(h < 1 for h in self.hidden):
            raise FieldError("hidden", "hidden layer widths must be >= 1", self.hidden)
        if any(h > MAX_SIZE for h in self.hidden):
            raise FieldError("hidden", f"hidden layer widths must be <= {MAX_SIZE}", self.hidden)
        check_dropout(self.dropout)
        return self

    def build(self, spec: DataSpec) -> nn.Module:
        return MLP(tuple(spec.input_shape), list(self.hidden), spec.num_classes,
                   batch_norm=self.batch_norm, dropout=self.dropout)


class MLP(nn.Sequential):
    """Flatten -> (fc_i -> relu_i -> [bn_i]) for each hidden width -> [dropout] -> fc_out."""

    def __init__(self, input_shape: tuple[int, ...], hidden: list[int], num_classes: int,
                 batch_norm: bool = False, dropout: float = 0.0):
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = math.prod(input_shape)
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"relu{i}"] = nn.ReLU()
            if batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm1d(h)
            width = h
        if dropout > 0:
            layers["dropout"] = nn.Dropout(dropout)
        layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
        super().__init__(layers)
        self.input_shape = tuple(input_shape)
