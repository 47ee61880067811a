"""Datasets: splits by ``split_seed``, normalisation, and batches from device tensors or a DataLoader.

(Over 400 lines on purpose: what every dataset family shares lives here once, so that each
family module under ``trainables/datasets`` stays a page.)

Every dataset source is a family named by ``data.name``, one module each under
:mod:`trainables.datasets` (its parameters, ``describe`` and ``load``): ``digits`` (the embedded
default), ``correlated_blocks`` (GrOWL §4.1), ``mnist``, ``fashion_mnist``, ``cifar10``,
``cifar100`` (torchvision, downloaded once under a file lock), ``idx`` (a folder of MNIST-format
files), ``arrays`` (your own ``.npz`` / ``.csv``), ``image_folder`` (a folder of images, one
sub-folder per class) and ``python`` (your own torch ``Dataset``s). This module holds what they
share: the splits, the normalisation, where the data lives, and batching with augmentation.

Splits depend on ``split_seed`` only, never on the trial's ``seed``. Data without an official
test split loses ``test_fraction`` of its examples to the test set (the last ones in file order
with ``test_split: last``, a random subset with ``test_split: random``); ``val_fraction`` of the
rest, drawn at random, is the validation set (unless the data has an official one); the remaining
training examples are shuffled and ``train_subset`` keeps the first of them. Images are scaled to
[0, 1] (8-bit data) and then standardised per channel, feature vectors per feature, with
statistics of the training split only. (``correlated_blocks`` is left as generated: its features
are standard normal by construction, and the teacher's labels refer to those exact values.)

Where the data lives (``data.in_memory``): small data is held as one tensor per split on the
training device (:class:`Split`, no per-batch copies); larger data, or ``in_memory: false``, stays
a torch ``Dataset`` read through a ``DataLoader`` (:class:`StreamSplit`). Both paths take the batch
order from the same ``torch.randperm`` of the trial's generator and augment the same way on the
device, so one seed trains on the same batches either way.

:func:`describe` is the cheap part (shapes and class counts, and every configuration problem as a
:class:`~trainables.config.ConfigError`), :func:`load` reads the data, :func:`batches` iterates
over a split with optional on-device augmentation, and :func:`prepare` turns raw examples into
model inputs with a run's recorded :class:`Dataset.preprocessing` (what ``sparsetune predict`` uses).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data as tud
from pydantic import Field, model_validator

from .configbase import ConfigError, FieldError, StrictModel
from .families import DATASETS, DataConfig

__all__ = ["DataUnavailable", "DataSpec", "Split", "StreamSplit", "Dataset", "Augmentation",
           "NormalizeStats", "describe", "load", "batches", "prepare", "assemble", "IN_MEMORY_BYTES",
           "PREPROCESSING_FORMAT"]

IN_MEMORY_BYTES = 2**30  # data.in_memory: auto keeps data up to this size (as float32) on the device
PREPROCESSING_FORMAT = "sparsetune.preprocessing/1"


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

    @property
    def device(self) -> torch.device:
        return self.X.device


@dataclass(frozen=True)
class LoaderOptions:
    """``DataLoader`` settings of a streamed split (``data.num_workers`` ... resolved)."""

    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None


class _Order(tud.Sampler):
    """The batch sampler of a streamed split: ``order`` (set before each pass; ``None`` = file
    order) cut into batches, in the main process, so the loader's workers only read examples."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size
        self.order: torch.Tensor | None = None

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order if self.order is not None else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            yield order[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


class StreamSplit:
    """One split read through a ``DataLoader``: ``dataset[i]`` is ``(x, y)``, ``x`` a float32
    tensor already normalised, ``y`` an int. Batches are moved to ``device``. One loader per batch
    size is kept, so ``persistent_workers`` survive from one epoch to the next."""

    def __init__(self, dataset: tud.Dataset, device: torch.device | str, options: LoaderOptions):
        self.dataset, self._device, self.options = dataset, torch.device(device), options
        self._loaders: dict[int, tuple[tud.DataLoader, _Order]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def device(self) -> torch.device:
        return self._device

    def loader(self, batch_size: int) -> tuple[tud.DataLoader, _Order]:
        if batch_size not in self._loaders:
            sampler = _Order(len(self), batch_size)
            o = self.options
            extra = {"persistent_workers": o.persistent_workers, "prefetch_factor": o.prefetch_factor} \
                if o.num_workers > 0 else {}
            # an own generator for the workers' base seed: DataLoader would otherwise draw it from
            # the global torch RNG, which the in-memory path never touches (dropout would differ)
            loader = tud.DataLoader(self.dataset, batch_sampler=sampler, num_workers=o.num_workers,
                                    pin_memory=o.pin_memory, generator=torch.Generator().manual_seed(0),
                                    **extra)
            self._loaders[batch_size] = (loader, sampler)
        return self._loaders[batch_size]


@dataclass(frozen=True)
class Augmentation:
    """Random crop out of a ``pad``-padded copy (zeros: the channel mean after normalisation, or
    the border repeated with ``mode: replicate``) and, with ``flip``, a random horizontal flip."""

    pad: int
    flip: bool
    mode: str = "constant"


@dataclass
class Dataset:
    """A loaded dataset. ``val`` may be empty; ``augment`` says whether and how training batches
    augment (``True``: by channel count, see :func:`batches`); ``info`` holds extra facts
    (``correlated_blocks``: ``blocks``, the block id of each feature, -1 for noise, and
    ``teacher``, the ``[n_blocks, num_classes]`` teacher weights; standardised data: the training
    ``mean`` and ``std``; ``arrays``: the original label values ``classes``); ``preprocessing`` is
    what inference needs to turn raw examples into model inputs (see :func:`prepare`)."""

    train: Split | StreamSplit
    val: Split | StreamSplit
    test: Split | StreamSplit
    spec: DataSpec
    augment: bool | Augmentation
    info: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)


class NormalizeStats(StrictModel):
    """Given normalisation statistics: ``(x - mean) / std`` per channel (or per feature)."""

    mean: list[float] = Field(description="one value per channel")
    std: list[float] = Field(description="one value per channel, each > 0")

    @model_validator(mode="after")
    def _check(self) -> NormalizeStats:
        if not self.mean or len(self.mean) != len(self.std):
            raise FieldError("std", f"needs one value per mean value ({len(self.mean)})", self.std)
        if not all(math.isfinite(v) and v > 0 for v in self.std):
            raise FieldError("std", "every value must be finite and > 0", self.std)
        if not all(math.isfinite(v) for v in self.mean):
            raise FieldError("mean", "every value must be finite", self.mean)
        return self


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


def batches(split: Split | StreamSplit, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None = None, augment: bool | Augmentation = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(xb, yb)`` batches covering ``split`` once, the last one possibly smaller, on the split's
    device.

    With ``shuffle`` the order is ``torch.randperm`` drawn from ``generator`` (a CPU generator),
    for a :class:`Split` and a :class:`StreamSplit` alike (the DataLoader's batch sampler yields
    that order), so the two give the same batches. With ``augment``, image batches are augmented on
    their device with randomness drawn from the same generator: an :class:`Augmentation` as it
    says; ``True`` gives 3-channel images a random crop with 4 pixels of zero padding (zero is the
    channel mean after normalisation) and a random horizontal flip, other images a random shift of
    up to 2 pixels, the border repeated into the vacated pixels. Feature vectors are never augmented.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(split, StreamSplit):
        yield from _stream_batches(split, batch_size, shuffle, generator, augment)
        return
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.X.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = split.X[start:start + batch_size], split.y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = split.X[idx], split.y[idx]
        if augment and xb.ndim == 4:
            xb = _augment(xb, generator, augment)
        yield xb, yb


def _stream_batches(split: StreamSplit, batch_size: int, shuffle: bool,
                    generator: torch.Generator | None, augment: bool | Augmentation
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader, sampler = split.loader(batch_size)
    sampler.order = torch.randperm(len(split), generator=generator) if shuffle else None
    asynchronous = split.options.pin_memory  # copies from pinned memory may overlap compute
    for xb, yb in loader:
        xb = xb.to(split.device, non_blocking=asynchronous)
        yb = yb.to(split.device, dtype=torch.int64, non_blocking=asynchronous)
        if augment and xb.ndim == 4:
            xb = _augment(xb, generator, augment)
        yield xb, yb


# ----------------------------------------------------------------------------- augmentation


def _augment(xb: torch.Tensor, generator: torch.Generator | None,
             how: bool | Augmentation = True) -> torch.Tensor:
    if isinstance(how, Augmentation):
        return _shift(xb, how.pad, generator, flip=how.flip, mode=how.mode) if how.pad or how.flip else xb
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


def check_split(n: int, cfg: DataConfig, *, official_test: bool, official_val: bool = False) -> None:
    """What :func:`split_indices` checks, from the counts alone (``describe`` allocates nothing,
    so a huge ``n_samples`` is not drawn just to check it)."""
    rest = n - (0 if official_test else _count(cfg.test_fraction, n))
    if rest - (0 if official_val else _count(cfg.val_fraction, rest)) <= 0:
        field, value = ("data.val_fraction", cfg.val_fraction) if not official_val \
            else ("data.test_fraction", cfg.test_fraction)
        raise ConfigError([(field, f"leaves no training examples out of {n} "
                                   f"(test_fraction={cfg.test_fraction})", value)])


def split_indices(n: int, cfg: DataConfig, *, official_test: bool, official_val: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of (train, val, test) among ``n`` examples (test empty with an official test set,
    val empty with an official validation set).

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
    n_val = 0 if official_val else _count(cfg.val_fraction, len(rest))
    val, train = np.sort(rest[:n_val]), rest[n_val:]
    if cfg.train_subset is not None:
        train = train[:cfg.train_subset]
    if len(train) == 0:
        check_split(n, cfg, official_test=official_test, official_val=official_val)
    return train, val, test


def _to_float(a: np.ndarray, scale: float) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, dtype=np.float32, order="C"))
    return t / scale if scale != 1.0 else t


def _stats(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per feature (vectors) or per channel (images), shaped to broadcast."""
    dims = (0,) if X.ndim == 2 else (0, *range(2, X.ndim))
    std, mean = torch.std_mean(X, dim=dims, keepdim=True, correction=0)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _broadcast(values: Sequence[float], ndim: int) -> torch.Tensor:
    """Per-feature / per-channel values shaped to broadcast over ``[N, F]`` or ``[N, C, H, W]``."""
    return torch.tensor(list(values), dtype=torch.float32).reshape((1, -1) + (1,) * (ndim - 2))


def standardised(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The one normalisation formula (training, streaming, ``prepare`` and exported models)."""
    return (x - mean) / std


def assemble(X: np.ndarray, y: np.ndarray, cfg: DataConfig, device: torch.device | str, *,
              num_classes: int, test: tuple[np.ndarray, np.ndarray] | None = None,
              scale: float = 1.0, standardise: bool = True, augment: bool = False,
              info: dict | None = None, classes: Sequence[Any] | None = None,
              record: dict | None = None) -> Dataset:
    """Split ``(X, y)`` (``test``: an official test set), scale, standardise with the training
    split's statistics and place the splits (:func:`_place_tensors`). ``classes``: the original
    label of each class index (default 0..C-1); ``record``: extra preprocessing entries."""
    train_i, val_i, test_i = split_indices(len(y), cfg, official_test=test is not None)
    if test is None:
        test = (X[test_i], y[test_i])
    parts = [(X[train_i], y[train_i]), (X[val_i], y[val_i]), test]
    xs = [_to_float(x, scale) for x, _ in parts]
    info = dict(info or {})
    mean = std = None
    if standardise:
        mean, std = _stats(xs[0])
        xs = [standardised(x, mean, std) for x in xs]
        info.update(mean=mean.flatten().numpy(), std=std.flatten().numpy())
    ys = [torch.as_tensor(np.asarray(yy), dtype=torch.int64) for _, yy in parts]
    spec = DataSpec(tuple(int(d) for d in X.shape[1:]), num_classes)
    pre = preprocessing_record(cfg, spec, classes if classes is not None else range(num_classes), scale=scale,
                  mean=mean, std=std, **(record or {}))
    return Dataset(*_place_tensors(list(zip(xs, ys)), cfg, device), spec=spec, augment=augment,
                   info=info, preprocessing=pre)


# ----------------------------------------------------------------------------- in memory or streamed



_assemble = assemble  # its former name (extension code written against the earlier docs)


def _in_memory(cfg: DataConfig, nbytes: int) -> bool:
    return cfg.in_memory if isinstance(cfg.in_memory, bool) else nbytes <= IN_MEMORY_BYTES


def loader_options(cfg: DataConfig, device: torch.device | str) -> LoaderOptions:
    """``data.num_workers`` & co. with their defaults: workers from the CPU threads torch was given
    (a trial runs with its ``resources.cpu``): one thread trains, the others read, at most 4."""
    workers = cfg.num_workers if cfg.num_workers is not None else min(4, max(0, torch.get_num_threads() - 1))
    pin = cfg.pin_memory if cfg.pin_memory is not None else torch.device(device).type == "cuda"
    persistent = cfg.persistent_workers if cfg.persistent_workers is not None else workers > 0
    return LoaderOptions(workers, pin, persistent and workers > 0,
                         cfg.prefetch_factor if workers > 0 else None)


def _place_tensors(parts: list[tuple[torch.Tensor, torch.Tensor]], cfg: DataConfig,
                   device: torch.device | str) -> list[Split | StreamSplit]:
    """Already-read splits (CPU tensors): on the device, or streamed from host memory."""
    if _in_memory(cfg, sum(x.numel() for x, _ in parts) * 4):
        return [Split(x.to(device), y.to(device)) for x, y in parts]
    options = loader_options(cfg, device)
    return [StreamSplit(tud.TensorDataset(x, y), device, options) for x, y in parts]


def place_datasets(parts: Sequence[tud.Dataset], cfg: DataConfig, device: torch.device | str,
                    spec: DataSpec) -> list[Split | StreamSplit]:
    """Splits as torch datasets (``(x, y)`` items, ``x`` normalised): streamed, or read once
    through the same DataLoader, in file order, into tensors on the device."""
    options = loader_options(cfg, device)
    if not _in_memory(cfg, sum(len(p) for p in parts) * math.prod(spec.input_shape) * 4):
        return [StreamSplit(p, device, options) for p in parts]
    return [_materialise(StreamSplit(p, "cpu", LoaderOptions(options.num_workers)), spec, device)
            for p in parts]


def _materialise(split: StreamSplit, spec: DataSpec, device: torch.device | str) -> Split:
    xs, ys = [], []
    for xb, yb in batches(split, 256, shuffle=False):
        xs.append(xb)
        ys.append(yb)
    if not xs:
        return Split(torch.empty((0, *spec.input_shape), device=device),
                     torch.empty(0, dtype=torch.int64, device=device))
    return Split(torch.cat(xs).to(device), torch.cat(ys).to(device))


def channel_moments(batches_: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (per-feature) mean and std over batches ``[B, C, ...]``, accumulated in float64
    (one pass, for data that is not one tensor); a std below 1e-8 becomes 1, as in :func:`_stats`."""
    total = squares = None
    count = 0
    for xb in batches_:
        x = xb.double().transpose(0, 1).reshape(xb.shape[1], -1)
        total = x.sum(1) if total is None else total + x.sum(1)
        squares = (x * x).sum(1) if squares is None else squares + (x * x).sum(1)
        count += x.shape[1]
    if not count:
        raise ValueError("no training examples to compute normalisation statistics on")
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.float(), std.float()


# ----------------------------------------------------------------------------- inference


def _plain(value: Any) -> Any:
    """A class label as a plain Python value (``torch.load(weights_only=True)`` reads it back)."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def preprocessing_record(cfg: DataConfig, spec: DataSpec, classes: Iterable[Any], *, scale: float = 1.0,
            mean: torch.Tensor | Sequence[float] | None = None,
            std: torch.Tensor | Sequence[float] | None = None, **extra: Any) -> dict[str, Any]:
    """The ``preprocessing`` record of a run: plain lists, strings and numbers only.

    ``source`` (``data.name``), ``input_shape`` (one example as the model takes it),
    ``classes`` (the original label, or name, of each output), ``scale`` (raw values are divided
    by it) and ``mean`` / ``std`` (then standardised per channel or feature; ``None``: not), plus
    source-specific entries: ``columns`` / ``target`` (CSV), ``image`` (the evaluation transforms)."""
    classes = [_plain(c) for c in classes]
    if len(classes) != spec.num_classes:
        raise ValueError(f"{len(classes)} class labels for {spec.num_classes} classes")

    def floats(v):
        return None if v is None else [float(x) for x in (v.flatten().tolist() if torch.is_tensor(v) else v)]

    return {"format": PREPROCESSING_FORMAT, "source": cfg.name,
            "input_shape": [int(d) for d in spec.input_shape], "classes": classes,
            "scale": float(scale), "mean": floats(mean), "std": floats(std), **extra}


def prepare(X: np.ndarray | torch.Tensor, record: dict[str, Any]) -> torch.Tensor:
    """Raw examples ``[N, ...]`` (as the training file held them) as model inputs, with the
    recorded scale and normalisation: the same float32 operations as training, so a model sees
    bit-identical inputs. ``X`` is reshaped to ``[N, *input_shape]`` when its examples have the
    right number of values (so ``[N, H, W]`` fits a one-channel model and ``[N, 64]`` an 8x8 one)."""
    X = X.numpy() if torch.is_tensor(X) else np.asarray(X)
    shape = tuple(record["input_shape"])
    if X.ndim < 1 or (X[0].size if len(X) else math.prod(X.shape[1:])) != math.prod(shape):
        raise ValueError(f"examples of shape {tuple(X.shape[1:])} do not fit the model's input "
                         f"shape {shape} ({math.prod(shape)} values per example)")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"examples must be numeric, got dtype {X.dtype}")
    x = _to_float(X.reshape(len(X), *shape), record["scale"])
    if record.get("mean") is not None:
        x = standardised(x, _broadcast(record["mean"], x.ndim), _broadcast(record["std"], x.ndim))
    return x


class DataUnavailable(RuntimeError):
    """A valid config whose data cannot be fetched here (e.g. a download without network)."""
