"""``lenet_cges``: the official CGES MNIST net, conv5x5x32 (SAME) -> pool -> conv5x5x64 -> pool ->
fc1024 -> dropout -> fc (names ``conv1, conv2, fc3, fc4`` as in the CGES tables)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from ..data import DataSpec
from ..families import MODELS, ModelConfig
from .base import check_dropout, image_shape

__all__ = ["LeNetCGES", "LeNetCGESConfig"]


@MODELS.register
class LeNetCGESConfig(ModelConfig):
    """The CGES paper's LeNet for image inputs (at least 4x4)."""

    name: Literal["lenet_cges"] = "lenet_cges"
    dropout: float = Field(0.5, description="dropout probability before the last layer")

    @model_validator(mode="after")
    def _check(self) -> LeNetCGESConfig:
        check_dropout(self.dropout)
        return self

    def build(self, spec: DataSpec) -> nn.Module:
        return LeNetCGES(image_shape(spec, self.name), spec.num_classes, dropout=self.dropout)


class LeNetCGES(nn.Sequential):
    """The official CGES MNIST net (conv SAME padding, 2x2 max-pools, fc 1024)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.5):
        c, h, w = input_shape
        if h < 4 or w < 4:
            raise ValueError(f"lenet_cges needs inputs of at least 4x4, got input_shape={input_shape}")
        self.positions = (h // 4) * (w // 4)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv1=nn.Conv2d(c, 32, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, 5, padding=2), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(), fc3=nn.Linear(64 * self.positions, 1024), relu3=nn.ReLU(),
        )
        if dropout > 0:
            layers["dropout"] = nn.Dropout(dropout)
        layers["fc4"] = nn.Linear(1024, num_classes)
        super().__init__(layers)
        self.input_shape = tuple(input_shape)
