"""Model zoo: a registry of builders ``(ModelConfig, DataSpec) -> nn.Module``.

Every model is generic in ``spec.input_shape`` and ``spec.num_classes`` and uses PyTorch's
default initialisation. Besides ``forward`` each model class provides what physical compaction
(:mod:`trainables.compact`) needs:

- ``input_shape``: the shape of one example (the model was built for it);
- ``couplings()``: the list of :class:`Coupling` s, i.e. every place where the output channels of a
  ``Linear``/``Conv2d`` *producer* reach a *consumer* layer only through channel-wise operations
  (an optional BatchNorm on those channels, elementwise activations, pooling, dropout, flatten).
  Exactly those channels can be removed from a trained network. Residual streams (ResNet) are not
  couplings: a channel there is read by several layers and by the identity path.

Models (all ``nn.Sequential`` subclasses with named children, except ResNet-20):

- ``mlp``: Flatten -> [Linear -> ReLU -> (BatchNorm1d)] per hidden width -> (Dropout) -> Linear.
  GrOWL's MNIST net (784-300-10, BN after the ReLU) is ``hidden=[300], batch_norm=True``.
- ``lenet_cges``: the official CGES MNIST net, conv5x5x32 (SAME) -> pool -> conv5x5x64 -> pool ->
  fc1024 -> dropout -> fc (names ``conv1, conv2, fc3, fc4`` as in the CGES tables).
- ``vgg16_cifar``: the Zagoruyko VGG-16 (conv3x3+BN+ReLU, fc1 -> BN -> (no ReLU) -> fc2) used by
  GrOWL. Inputs smaller than 32x32 are accepted: a max-pool that would take the spatial size below 1
  is left out (so 8x8 digits go 8 -> 4 -> 2 -> 1 and skip the last two pools).
- ``resnet20``: He et al.'s CIFAR ResNet-20 with option-A (parameter-free) shortcuts.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .data import DataSpec

__all__ = [
    "Coupling",
    "MODELS",
    "register",
    "build_model",
    "prunable_layers",
    "MLP",
    "LeNetCGES",
    "VGG16",
    "ResNet20",
    "BasicBlock",
    "VGG16_CFG",
]


@dataclass(frozen=True)
class Coupling:
    """Producer ``P`` -> [BatchNorm ``bn`` on P's channels] -> channel-wise ops -> consumer ``C``.

    Names are qualified module names (``model.get_submodule(name)``). ``positions`` is how many
    consecutive consumer inputs one producer channel feeds: 1 for Linear -> Linear and for a Conv2d
    consumer (which reads channel ``j`` as ``W[:, j]``); ``H*W`` for a Linear reading a flattened
    conv map of spatial size ``H x W``.
    """

    producer: str
    consumer: str
    bn: str | None = None
    positions: int = 1

    def __post_init__(self) -> None:
        if self.positions < 1:
            raise ValueError(f"Coupling positions must be >= 1, got positions={self.positions}")


ModelBuilder = Callable[[ModelConfig, DataSpec], nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder to :data:`MODELS` under ``name`` (duplicates are an error)."""

    def deco(fn: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        return fn

    return deco


def build_model(cfg: ModelConfig, spec: DataSpec) -> nn.Module:
    """The model named ``cfg.name`` for data described by ``spec``."""
    builder = MODELS.get(cfg.name)
    if builder is None:
        raise ValueError(f"unknown model {cfg.name!r}; valid: {sorted(MODELS)}")
    _check_spec(spec)
    return builder(cfg, spec)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Linear`` / ``nn.Conv2d`` as ``(qualified name, module)``, in module order
    (which is forward order for the models of this zoo)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


# ----------------------------------------------------------------------------- helpers


def _check_spec(spec: DataSpec) -> None:
    shape = tuple(spec.input_shape)
    if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape!r}")
    if not isinstance(spec.num_classes, int) or spec.num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got num_classes={spec.num_classes!r}")


def _image_shape(spec: DataSpec, model: str) -> tuple[int, int, int]:
    shape = tuple(spec.input_shape)
    if len(shape) != 3:
        raise ValueError(f"model {model!r} needs image inputs (C, H, W), got input_shape={shape}")
    return shape  # type: ignore[return-value]


def _dropout(cfg: ModelConfig) -> float:
    return float(cfg.dropout or 0.0)


# ----------------------------------------------------------------------------- mlp


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
        self._n_hidden = len(hidden)
        self._batch_norm = batch_norm

    def couplings(self) -> list[Coupling]:
        return [
            Coupling(f"fc{i}", f"fc{i + 1}", f"bn{i}" if self._batch_norm else None)
            for i in range(1, self._n_hidden + 1)
        ]


@register("mlp")
def _build_mlp(cfg: ModelConfig, spec: DataSpec) -> nn.Module:
    hidden = list(cfg.hidden) if cfg.hidden is not None else [300]
    return MLP(tuple(spec.input_shape), hidden, spec.num_classes,
               batch_norm=bool(cfg.batch_norm), dropout=_dropout(cfg))


# ----------------------------------------------------------------------------- lenet (CGES)


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

    def couplings(self) -> list[Coupling]:
        return [
            Coupling("conv1", "conv2"),
            Coupling("conv2", "fc3", positions=self.positions),
            Coupling("fc3", "fc4"),
        ]


@register("lenet_cges")
def _build_lenet(cfg: ModelConfig, spec: DataSpec) -> nn.Module:
    return LeNetCGES(_image_shape(spec, "lenet_cges"), spec.num_classes,
                     dropout=_dropout(cfg) if cfg.dropout is not None else 0.5)


# ----------------------------------------------------------------------------- vgg16 (Zagoruyko)

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                     512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Sequential):
    """conv{i} -> bn{i} -> relu{i} (13x, pools between) -> flatten -> fc1 -> bn_fc1 -> [dropout] -> fc2.

    A pool is left out when the spatial size is already below 2 (inputs smaller than 32x32).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0):
        c, h, w = input_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        conv_names: list[str] = []
        n_pool = 0
        for item in VGG16_CFG:
            if item == "M":
                n_pool += 1
                if min(h, w) >= 2:
                    layers[f"pool{n_pool}"] = nn.MaxPool2d(2)
                    h, w = h // 2, w // 2
                continue
            i = len(conv_names) + 1
            layers[f"conv{i}"] = nn.Conv2d(c, int(item), 3, padding=1)
            layers[f"bn{i}"] = nn.BatchNorm2d(int(item))
            layers[f"relu{i}"] = nn.ReLU()
            conv_names.append(f"conv{i}")
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
        self._convs = conv_names

    def couplings(self) -> list[Coupling]:
        out = [Coupling(p, q, "bn" + p[4:]) for p, q in zip(self._convs, self._convs[1:])]
        last = self._convs[-1]
        out.append(Coupling(last, "fc1", "bn" + last[4:], positions=self.positions))
        out.append(Coupling("fc1", "fc2", "bn_fc1"))
        return out


@register("vgg16_cifar")
def _build_vgg(cfg: ModelConfig, spec: DataSpec) -> nn.Module:
    return VGG16(_image_shape(spec, "vgg16_cifar"), spec.num_classes, dropout=_dropout(cfg))


# ----------------------------------------------------------------------------- resnet20


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

    def couplings(self) -> list[Coupling]:
        """Only each block's inner channels (conv1 -> bn1 -> conv2); the residual stream is kept."""
        return [
            Coupling(f"{name}.conv1", f"{name}.conv2", f"{name}.bn1")
            for name, m in self.named_modules() if isinstance(m, BasicBlock)
        ]


@register("resnet20")
def _build_resnet20(cfg: ModelConfig, spec: DataSpec) -> nn.Module:
    return ResNet20(_image_shape(spec, "resnet20"), spec.num_classes)
