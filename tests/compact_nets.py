"""Networks for the compaction tests that no registry knows (a user's own module), importable from
a second process (tests/test_compact.py loads a saved compact model there)."""

from __future__ import annotations

import torch
from torch import nn


class UserNet(nn.Module):
    """stem conv -> BN -> ReLU; a residual block added to the stem; a side conv concatenated;
    global pooling -> flatten -> Linear. Channels: stem 8, residual 8 (+ side 4 = 12 concatenated)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.side = nn.Conv2d(8, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.bn0(self.stem(x)))
        r = torch.relu(s + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(s))))))
        y = torch.cat([r, torch.relu(self.side(s))], dim=1)
        return self.fc(torch.flatten(self.pool(y), 1))


def user_net() -> nn.Module:
    """The dense-model factory a user would hand to ``load_compact(build=...)``."""
    torch.manual_seed(0)
    return UserNet()


def tiny_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A ``model: {name: python, factory: "compact_nets:tiny_net"}`` factory for any input shape."""
    width = 1
    for d in input_shape:
        width *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))


class BNConvNet(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU -> global pooling -> Linear (tests/test_channel_groups.py)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def bn_conv_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A ``model: {name: python, factory: "compact_nets:bn_conv_net"}`` factory."""
    return BNConvNet(input_shape[0], num_classes)
