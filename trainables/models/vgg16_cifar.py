"""``vgg16_cifar``: the Zagoruyko VGG-16 (conv3x3+BN+ReLU, fc1 -> BN -> (no ReLU) -> fc2) used by
GrOWL. Inputs smaller than 32x32 are accepted: a max-pool that would take the spatial size below 1
is left out (so 8x8 digits go 8 -> 4 -> 2 -> 1 and skip the last two pools)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from ..data import DataSpec
from ..families import MODELS, ModelConfig
from .base import check_dropout, image_shape

__all__ = ["VGG16", "VGG16_CFG", "VGG16Config"]


@MODELS.register
class VGG16Config(ModelConfig):
    """GrOWL's VGG-16 with BatchNorm for image inputs."""

    name: Literal["vgg16_cifar"] = "vgg16_cifar"
    dropout: float = Field(0.0, description="dropout probability before the last layer")

    @model_validator(mode="after")
    def _check(self) -> VGG16Config:
        check_dropout(self.dropout)
        return self

    def build(self, spec: DataSpec) -> nn.Module:
        return VGG16(image_shape(spec, self.name), spec.num_classes, dropout=self.dropout)


VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                     512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Sequential):
    """conv{i} -> bn{i} -> relu{i} (13x, pools between) -> flatten -> fc1 -> bn_fc1 -> [dropout] -> fc2.

    A pool is left out when the spatial size is already below 2 (inputs smaller than 32x32).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0):
        c, h, w = input_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        n_pool = n_conv = 0
        for item in VGG16_CFG:
            if item == "M":
                n_pool += 1
                if min(h, w) >= 2:
                    layers[f"pool{n_pool}"] = nn.MaxPool2d(2)
                    h, w = h // 2, w // 2
                continue
            n_conv += 1
            i = n_conv
            layers[f"conv{i}"] = nn.Conv2d(c, int(item), 3, padding=1)
            layers[f"bn{i}"] = nn.BatchNorm2d(int(item))
            layers[f"relu{i}"] = nn.ReLU()
            c = int(item)
        self.positions = h * w
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(c * self.positions, 512)
        layers["bn_fc1"] = nn.BatchNorm1d(512)  # no ReLU after it, as in the official code
        if dropout > 0:
            layers["dropout"] = nn.Dropout(dropout)
        layers["fc2"] = nn.Linear(512, num_classes)
        super().__init__(layers)
        self.input_shape = tuple(input_shape)
