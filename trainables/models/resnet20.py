"""``resnet20``: He et al.'s CIFAR ResNet-20 with option-A (parameter-free) shortcuts."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataSpec
from ..families import MODELS, ModelConfig
from .base import image_shape

__all__ = ["BasicBlock", "ResNet20", "ResNet20Config"]


@MODELS.register
class ResNet20Config(ModelConfig):
    """He et al.'s CIFAR ResNet-20 for image inputs (no parameters)."""

    name: Literal["resnet20"] = "resnet20"

    def build(self, spec: DataSpec) -> nn.Module:
        return ResNet20(image_shape(spec, self.name), spec.num_classes)


class _ShortcutA(nn.Module):
    """Option-A shortcut: stride-2 subsampling and zero channels appended on both sides."""

    def __init__(self, stride: int, pad: int):
        super().__init__()
        self.stride, self.pad = stride, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x


class BasicBlock(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2, plus the (parameter-free) shortcut, then relu."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if planes - in_planes < 0 or (planes - in_planes) % 2:
                raise ValueError(f"option-A shortcut cannot map {in_planes} to {planes} channels")
            self.shortcut: nn.Module = _ShortcutA(stride, (planes - in_planes) // 2)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al. (2016) CIFAR ResNet-20: conv 16 -> 3 stages x 3 blocks (16/32/64) -> GAP -> fc."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, blocks: int = 3):
        super().__init__()
        c = input_shape[0]
        self.conv1 = nn.Conv2d(c, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks_ = [BasicBlock(in_planes, planes, stride)]
            blocks_ += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*blocks_))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        self.input_shape = tuple(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
