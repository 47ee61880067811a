"""A small network of your own for sparsetune: ``model: {name: python, factory: "my_models:build"}``.

A stem convolution, a residual block added to it, a side branch concatenated to the block's output,
global average pooling and a linear classifier. sparsetune needs nothing from it but ``forward``:
which channels can be removed after training is found by tracing it.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16, side: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(width))
        self.side = nn.Sequential(nn.Conv2d(width, side, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width + side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        r = torch.relu(s + self.block(s))  # residual addition
        y = torch.cat([r, self.side(s)], dim=1)  # channel concatenation
        return self.fc(torch.flatten(self.pool(y), 1))


def build(input_shape: tuple[int, ...], num_classes: int, width: int = 16, side: int = 8) -> nn.Module:
    """The factory sparsetune calls: ``kwargs`` from the config, ``input_shape`` / ``num_classes``
    from the data (given because the signature names them)."""
    return SmallResNet(input_shape[0], num_classes, width=width, side=side)
