"""Datasets: whole small datasets as tensors on the training device, split by ``split_seed``.

Every dataset source is a family named by ``data.name``, one module each under
:mod:`trainables.datasets` (its parameters, ``describe`` and ``load``): ``digits`` (the embedded
default), ``correlated_blocks`` (GrOWL §4.1), ``mnist``, ``fashion_mnist``, ``cifar10``,
``cifar100`` (torchvision, downloaded once under a file lock), ``idx`` (a folder of MNIST-format
files) and ``arrays`` (your own ``.npz`` / ``.csv``). This module holds what they share: the
splits, the normalisation, the tensors on the device, and batching with augmentation.

Splits depend on ``split_seed`` only, never on the trial's ``seed``. Data without an official
test split loses ``test_fraction`` of its examples to the test set (the last ones in file order
with ``test_split: last``, a random subset with ``test_split: random``); ``val_fraction`` of the
rest, drawn at random, is the validation set; the remaining training examples are shuffled and
``train_subset`` keeps the first of them. Images are scaled to [0, 1] (8-bit data) and then
standardised per channel, feature vectors per feature, with statistics of the training split
only. (``correlated_blocks`` is left as generated: its features are standard normal by
construction, and the teacher's labels refer to those exact values.)

:func:`describe` is the cheap part (shapes and class counts, and every configuration problem as a
:class:`~trainables.config.ConfigError`), :func:`load` reads the data, :func:`batches` iterates
over a split with optional on-device augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .configbase import ConfigError
from .families import DATASETS, DataConfig

__all__ = ["DataUnavailable", "DataSpec", "Split", "Dataset", "describe", "load", "batches"]


@dataclass(frozen=True)
class DataSpec:
    """What a model builder needs to know about the data, cheap to compute."""

    input_shape: tuple[int, ...]  # one example: (C, H, W) for images, (F,) for feature vectors
    num_classes: int


@dataclass
class Split:
    """One split: ``X`` float32, normalised (``[N, C, H, W]`` or ``[N, F]``); ``y`` int64 ``[N]``."""

    X: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    """A loaded dataset. ``val`` may be empty; ``augment`` says whether training batches augment;
    ``info`` holds extra facts (``correlated_blocks``: ``blocks``, the block id of each feature,
    -1 for noise, and ``teacher``, the ``[n_blocks, num_classes]`` teacher weights; standardised
    data: the training ``mean`` and ``std``; ``arrays``: the original label values ``classes``)."""

    train: Split
    val: Split
    test: Split
    spec: DataSpec
    augment: bool
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- public API


def describe(cfg: DataConfig) -> DataSpec:
    """The shape of one example and the number of classes, without loading the data when that
    can be avoided (IDX: the headers and labels only; ``.npz``: the header of ``X`` and ``y``).
    Raises :class:`ConfigError` naming the field and value for every problem found."""
    return _family(cfg).describe()


def load(cfg: DataConfig, device: torch.device | str = "cpu") -> Dataset:
    """The whole dataset, split and normalised, as tensors on ``device``."""
    return _family(cfg).load(device)


def _family(cfg: DataConfig) -> DataConfig:
    family = DATASETS.get(cfg.name)  # ValueError listing the registered datasets
    if not isinstance(cfg, family):
        raise TypeError(f"data config for {cfg.name!r} must be a {family.__name__}, got {type(cfg).__name__}")
    return cfg


def batches(split: Split, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            augment: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(xb, yb)`` batches covering ``split`` once, the last one possibly smaller.

    With ``shuffle`` the order is ``torch.randperm`` drawn from ``generator`` (a CPU generator)
    and moved to the split's device. With ``augment``, image batches are augmented on their device
    with randomness drawn from the same generator: 3-channel images get a random crop with 4
    pixels of zero padding (zero is the channel mean after normalisation) and a random horizontal
    flip; other images a random shift of up to 2 pixels, the border repeated into the vacated
    pixels. Feature vectors are never augmented.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.X.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = split.X[start:start + batch_size], split.y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = split.X[idx], split.y[idx]
        if augment and xb.ndim == 4:
            xb = _augment(xb, generator)
        yield xb, yb


# ----------------------------------------------------------------------------- augmentation


def _augment(xb: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if xb.shape[1] == 3:
        return _shift(xb, 4, generator, flip=True, mode="constant")
    return _shift(xb, 2, generator, flip=False, mode="replicate")


def _shift(xb: torch.Tensor, pad: int, generator: torch.Generator | None, *, flip: bool,
           mode: str) -> torch.Tensor:
    """Crop each image of ``xb`` at a random offset out of its ``pad``-padded copy (optionally
    mirrored left-right), all in one gather on the batch's device."""
    b, c, h, w = xb.shape
    dev = xb.device
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).to(dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        flips = (torch.rand(b, generator=generator) < 0.5).to(dev)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    rows = offsets[:, :1] + torch.arange(h, device=dev)
    cols = offsets[:, 1:] + cols
    padded = F.pad(xb, (pad, pad, pad, pad), mode=mode)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


# ----------------------------------------------------------------------------- splits


def _count(fraction: float, n: int) -> int:
    """ceil(fraction * n), robust to float round-off (0.2 * 10000 is 2000)."""
    return min(n, math.ceil(fraction * n - 1e-9)) if fraction > 0 else 0


def _check_split(n: int, cfg: DataConfig, *, official_test: bool) -> None:
    """What :func:`_split_indices` checks, from the counts alone (``describe`` allocates nothing,
    so a huge ``n_samples`` is not drawn just to check it)."""
    rest = n - (0 if official_test else _count(cfg.test_fraction, n))
    if rest - _count(cfg.val_fraction, rest) <= 0:
        raise ConfigError([(
            "data.val_fraction",
            f"leaves no training examples out of {n} (test_fraction={cfg.test_fraction})",
            cfg.val_fraction,
        )])


def _split_indices(n: int, cfg: DataConfig, *, official_test: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of (train, val, test) among ``n`` examples (test empty with an official test set).

    val and test are in file order; train is in its deterministic shuffled order, cut to
    ``train_subset``. Only ``split_seed`` decides."""
    rng = np.random.default_rng(cfg.split_seed)
    rest, test = np.arange(n), np.arange(0)
    if not official_test:
        n_test = _count(cfg.test_fraction, n)
        if cfg.test_split == "last":
            rest, test = rest[:n - n_test], rest[n - n_test:]
        else:
            perm = rng.permutation(n)
            rest, test = np.sort(perm[n_test:]), np.sort(perm[:n_test])
    rest = rng.permutation(rest)
    n_val = _count(cfg.val_fraction, len(rest))
    val, train = np.sort(rest[:n_val]), rest[n_val:]
    if cfg.train_subset is not None:
        train = train[:cfg.train_subset]
    if len(train) == 0:
        _check_split(n, cfg, official_test=official_test)
    return train, val, test


def _to_float(a: np.ndarray, scale: float) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, dtype=np.float32, order="C"))
    return t / scale if scale != 1.0 else t


def _stats(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per feature (vectors) or per channel (images), shaped to broadcast."""
    dims = (0,) if X.ndim == 2 else (0, *range(2, X.ndim))
    std, mean = torch.std_mean(X, dim=dims, keepdim=True, correction=0)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _assemble(X: np.ndarray, y: np.ndarray, cfg: DataConfig, device: torch.device | str, *,
              num_classes: int, test: tuple[np.ndarray, np.ndarray] | None = None,
              scale: float = 1.0, standardise: bool = True, augment: bool = False,
              info: dict | None = None) -> Dataset:
    """Split ``(X, y)`` (``test``: an official test set), scale, standardise with the training
    split's statistics and move to ``device``."""
    train_i, val_i, test_i = _split_indices(len(y), cfg, official_test=test is not None)
    if test is None:
        test = (X[test_i], y[test_i])
    parts = [(X[train_i], y[train_i]), (X[val_i], y[val_i]), test]
    xs = [_to_float(x, scale) for x, _ in parts]
    info = dict(info or {})
    if standardise:
        mean, std = _stats(xs[0])
        xs = [(x - mean) / std for x in xs]
        info.update(mean=mean.flatten().numpy(), std=std.flatten().numpy())
    splits = [Split(x.to(device), torch.as_tensor(np.asarray(yy), dtype=torch.int64).to(device))
              for x, (_, yy) in zip(xs, parts)]
    spec = DataSpec(tuple(int(d) for d in X.shape[1:]), num_classes)
    return Dataset(*splits, spec=spec, augment=augment, info=info)


class DataUnavailable(RuntimeError):
    """A valid config whose data cannot be fetched here (e.g. a download without network)."""
