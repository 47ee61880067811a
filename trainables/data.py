"""Datasets: whole small datasets as tensors on the training device, split by ``split_seed``.

Every dataset is named by ``DataConfig.name``:

``digits``
    scikit-learn's bundled 8x8 handwritten digits (``load_digits``: 1,797 images, 16 grey levels,
    10 classes) as ``[N, 1, 8, 8]``. No official test split.
``correlated_blocks``
    The synthetic data of GrOWL (Zhang et al., ICLR 2018) §4.1: blocks of strongly correlated
    features among noise features, labelled by a linear teacher that gives every feature of a
    block the same weights (see :func:`_correlated_blocks`). Vectors ``[N, n_features]``.
``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``
    The torchvision datasets with their official train/test splits, downloaded once into
    ``path`` (default ``~/.cache/sparsetune/<name>``) under a file lock, so that parallel trials
    on one node neither download twice nor read a half-written file.
``idx``
    A folder of MNIST-format IDX files (optionally gzip-compressed), e.g. ``../shared/data/mnist``.
``arrays``
    The user's own data: a ``.npz`` with arrays ``X`` and ``y``, or a ``.csv`` with a header row
    and the label column named by ``target``.

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

import csv
import gzip
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from .config import ConfigError, DataConfig

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


# torchvision name: (class in torchvision.datasets, example shape, classes)
_TORCHVISION: dict[str, tuple[str, tuple[int, ...], int]] = {
    "mnist": ("MNIST", (1, 28, 28), 10),
    "fashion_mnist": ("FashionMNIST", (1, 28, 28), 10),
    "cifar10": ("CIFAR10", (3, 32, 32), 10),
    "cifar100": ("CIFAR100", (3, 32, 32), 100),
}
_LOCK_NAME = ".sparsetune-download.lock"
_DIGITS_SIZE = 1797


# ----------------------------------------------------------------------------- public API


def describe(cfg: DataConfig) -> DataSpec:
    """The shape of one example and the number of classes, without loading the data when that
    can be avoided (IDX: the headers and labels only; ``.npz``: the header of ``X`` and ``y``).
    Raises :class:`ConfigError` naming the field and value for every problem found."""
    if cfg.name == "digits":
        _check_split(_DIGITS_SIZE, cfg, official_test=False)
        return DataSpec((1, 8, 8), 10)
    if cfg.name == "correlated_blocks":
        _check_split(cfg.n_samples, cfg, official_test=False)
        return DataSpec((cfg.n_features,), cfg.num_classes)
    if cfg.name in _TORCHVISION:
        root = _torchvision_root(cfg)
        if root.exists() and not root.is_dir():
            raise ConfigError([("data.path", "not a folder", str(root))])
        _, shape, classes = _TORCHVISION[cfg.name]
        return DataSpec(shape, classes)
    if cfg.name == "idx":
        return _idx_describe(cfg)
    return _arrays_describe(cfg)


def load(cfg: DataConfig, device: torch.device | str = "cpu") -> Dataset:
    """The whole dataset, split and normalised, as tensors on ``device``."""
    if cfg.name == "digits":
        return _load_digits(cfg, device)
    if cfg.name == "correlated_blocks":
        return _load_correlated_blocks(cfg, device)
    if cfg.name in _TORCHVISION:
        return _load_torchvision(cfg, device)
    if cfg.name == "idx":
        return _load_idx(cfg, device)
    return _load_arrays(cfg, device)


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
              scale: float = 1.0, standardise: bool = True, info: dict | None = None) -> Dataset:
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
    return Dataset(*splits, spec=spec, augment=bool(cfg.augment), info=info)


# ----------------------------------------------------------------------------- digits


def _load_digits(cfg: DataConfig, device: torch.device | str) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = bunch.images.reshape(-1, 1, 8, 8)
    return _assemble(X, bunch.target.astype(np.int64), cfg, device, num_classes=10, scale=16.0)


# ----------------------------------------------------------------------------- correlated blocks


def _block_ids(cfg: DataConfig) -> np.ndarray:
    """Block id of each feature, -1 for noise: block k covers
    ``[k (block_size + block_gap), k (block_size + block_gap) + block_size)``."""
    blocks = np.full(cfg.n_features, -1, dtype=np.int64)
    for k in range(cfg.n_blocks):
        start = k * (cfg.block_size + cfg.block_gap)
        blocks[start:start + cfg.block_size] = k
    return blocks


def _teacher_labels(X: np.ndarray, blocks: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """``argmax_c sum_k z_k teacher[k, c]`` with ``z_k`` the sum of block k's features over
    sqrt(block size); noise features (block -1) have no weight."""
    n_blocks = teacher.shape[0]
    z = np.stack([X[:, blocks == k].sum(axis=1) / math.sqrt((blocks == k).sum())
                  for k in range(n_blocks)], axis=1)
    return np.argmax(z @ teacher, axis=1).astype(np.int64)


def _correlated_blocks(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GrOWL §4.1 as we read it: ``(X, y, blocks, teacher)`` from ``default_rng(split_seed)``.

    All ``n_features`` start as iid N(0, 1). Inside each block the features are made an AR(1)
    sequence, ``x_1 = e_1``, ``x_{j+1} = rho x_j + sqrt(1 - rho^2) e_{j+1}``, so that
    ``cov(x_i, x_j) = rho^|i-j|`` with unit variances; blocks are independent and the features
    between them stay pure noise. The teacher draws ``b_k ~ N(0, I_C)`` for block k and labels
    ``y = argmax_c sum_k (sum_{j in block k} x_j / sqrt(block_size)) b_k[c]``: the relevant
    features are exactly the block features and the true clusters of tied weights the blocks.
    """
    rng = np.random.default_rng(cfg.split_seed)
    X = rng.standard_normal((cfg.n_samples, cfg.n_features))
    teacher = rng.standard_normal((cfg.n_blocks, cfg.num_classes))
    blocks = _block_ids(cfg)
    starts = np.arange(cfg.n_blocks) * (cfg.block_size + cfg.block_gap)
    innov = math.sqrt(1.0 - cfg.rho ** 2)
    for j in range(1, cfg.block_size):
        X[:, starts + j] = cfg.rho * X[:, starts + j - 1] + innov * X[:, starts + j]
    return X, _teacher_labels(X, blocks, teacher), blocks, teacher


def _load_correlated_blocks(cfg: DataConfig, device: torch.device | str) -> Dataset:
    X, y, blocks, teacher = _correlated_blocks(cfg)
    return _assemble(X, y, cfg, device, num_classes=cfg.num_classes, standardise=False,
                     info={"blocks": blocks, "teacher": teacher})


# ----------------------------------------------------------------------------- torchvision


def _torchvision_root(cfg: DataConfig) -> Path:
    return Path(cfg.path) if cfg.path is not None else Path.home() / ".cache" / "sparsetune" / cfg.name


def _torchvision_arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(ds.data)
    X = X[:, None] if X.ndim == 3 else X.transpose(0, 3, 1, 2)  # MNIST [N,H,W]; CIFAR [N,H,W,C]
    return X, np.asarray(ds.targets, dtype=np.int64)


class DataUnavailable(RuntimeError):
    """A valid config whose data cannot be fetched here (e.g. a download without network)."""


def _load_torchvision(cfg: DataConfig, device: torch.device | str) -> Dataset:
    import torchvision.datasets

    cls_name, _, classes = _TORCHVISION[cfg.name]
    cls = getattr(torchvision.datasets, cls_name)
    root = _torchvision_root(cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError([("data.path", f"cannot create the dataset folder: {e}", str(root))]) from None
    with FileLock(str(root / _LOCK_NAME)):  # one download per node, never a half-written file
        try:
            train = cls(str(root), train=True, download=True)
            test = cls(str(root), train=False, download=True)
        except (RuntimeError, OSError) as e:  # torchvision: "Error downloading ..." after every mirror
            raise DataUnavailable(
                f"could not download {cls_name} into {root} ({(str(e).strip() or type(e).__name__).splitlines()[0]}) "
                f"Without "
                f"network access, copy the dataset's files into that folder (torchvision's layout) on every "
                f"node, or use an `idx` / `arrays` dataset"
            ) from None
    X, y = _torchvision_arrays(train)
    return _assemble(X, y, cfg, device, num_classes=classes, test=_torchvision_arrays(test),
                     scale=255.0, info={"root": str(root)})


# ----------------------------------------------------------------------------- IDX files

# IDX type code: numpy dtype (big-endian)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_error(path: Path, where: str, why: str) -> ConfigError:
    return ConfigError([("data.path", f"malformed IDX file {path.name}: {why}", where)])


def _open_binary(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _idx_header(f: Any, path: Path, where: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Read the magic number (0, 0, type code, ndim) and the big-endian uint32 dimensions."""
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise _idx_error(path, where, f"bad magic number {magic.hex() or '(empty file)'}")
    dims = f.read(4 * magic[3])
    if len(dims) < 4 * magic[3]:
        raise _idx_error(path, where, "truncated header")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    return np.dtype(_IDX_DTYPES[magic[2]]), shape


def _read_idx(path: Path, where: str, *, header_only: bool = False
              ) -> tuple[tuple[int, ...], np.ndarray | None]:
    """The shape of an IDX file and, unless ``header_only``, its contents (native byte order)."""
    try:
        with _open_binary(path) as f:
            dtype, shape = _idx_header(f, path, where)
            if header_only:
                return shape, None
            raw = f.read()
    except (OSError, EOFError) as e:  # includes gzip.BadGzipFile
        raise _idx_error(path, where, f"cannot read it ({e})") from None
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise _idx_error(path, where, f"header {shape} needs {expected} data bytes, found {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return shape, data.astype(dtype.newbyteorder("="), copy=False)


def _idx_role(prefix: str) -> str:
    """``train-`` -> train, ``t10k-``/``test-`` -> test; any other prefix names its own pair."""
    prefix = prefix.strip("-_. ")
    if prefix.startswith("train"):
        return "train"
    return "test" if prefix.startswith(("t10k", "test")) else prefix


def _idx_add(table: dict[str, Path], role: str, path: Path, where: str) -> None:
    old = table.get(role)
    if old is None or old.name == path.name + ".gz":  # the same file twice: prefer the plain one
        table[role] = path
    elif path.name != old.name + ".gz":
        raise ConfigError([("data.path", f"two IDX files for {role or 'the data'!r}: "
                                         f"{old.name} and {path.name}", where)])


def _idx_scan(folder: Path, where: str) -> tuple[dict[str, Path], dict[str, Path]]:
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        name = path.name.lower()
        if fnmatch(name, "*images*idx3*"):
            _idx_add(images, _idx_role(name.split("images")[0]), path, where)
        elif fnmatch(name, "*labels*idx1*"):
            _idx_add(labels, _idx_role(name.split("labels")[0]), path, where)
    return images, labels


def _idx_pairs(cfg: DataConfig) -> dict[str, tuple[Path, Path]]:
    """role -> (images file, labels file): either {"train", "test"} or one pair for everything."""
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise ConfigError([("data.path", "no such folder" if not folder.exists() else "not a folder",
                            cfg.path)])
    images, labels = _idx_scan(folder, cfg.path)
    for role in sorted(set(images) ^ set(labels)):
        lonely, other = (images, "labels") if role in images else (labels, "images")
        raise ConfigError([("data.path", f"{lonely[role].name} has no matching {other} file "
                                         f"(expected e.g. train-images-idx3-ubyte with "
                                         f"train-labels-idx1-ubyte)", cfg.path)])
    if not images:
        raise ConfigError([("data.path", "no IDX images/labels pair (files named *images*idx3* "
                                         "and *labels*idx1*)", cfg.path)])
    if len(images) > 1 and set(images) != {"train", "test"}:
        raise ConfigError([("data.path", f"several IDX pairs {sorted(images)}: expected one pair, "
                                         "or a train and a test (t10k) pair", cfg.path)])
    return {role: (images[role], labels[role]) for role in sorted(images, key=lambda r: r != "train")}


def _idx_read_pair(images: Path, labels: Path, where: str, *, header_only: bool
                   ) -> tuple[tuple[int, ...], np.ndarray | None, np.ndarray]:
    shape, X = _read_idx(images, where, header_only=header_only)
    lshape, y = _read_idx(labels, where)
    if len(shape) != 3:
        raise _idx_error(images, where, f"images must be 3-D [N, H, W], header says {shape}")
    if len(lshape) != 1 or y.dtype.kind not in "iu" or (y.size and y.min() < 0):
        raise _idx_error(labels, where, "labels must be 1-D non-negative integers")
    if shape[0] != lshape[0]:
        raise ConfigError([("data.path", f"{images.name} has {shape[0]} images but {labels.name} "
                                         f"has {lshape[0]} labels", where)])
    return shape, X, y.astype(np.int64)


def _idx_read(cfg: DataConfig, *, header_only: bool) -> dict[str, tuple]:
    pairs = {role: _idx_read_pair(img, lab, cfg.path, header_only=header_only)
             for role, (img, lab) in _idx_pairs(cfg).items()}
    sizes = {shape[1:] for shape, _, _ in pairs.values()}
    if len(sizes) > 1:
        raise ConfigError([("data.path", f"train and test images differ in size: {sorted(sizes)}",
                            cfg.path)])
    return pairs


def _idx_classes(pairs: dict[str, tuple]) -> int:
    return int(max(y.max() for _, _, y in pairs.values() if y.size) + 1)


def _idx_describe(cfg: DataConfig) -> DataSpec:
    pairs = _idx_read(cfg, header_only=True)
    (shape, _, _), *_ = pairs.values()
    _check_split(shape[0], cfg, official_test=len(pairs) == 2)
    return DataSpec((1, *shape[1:]), _idx_classes(pairs))


def _load_idx(cfg: DataConfig, device: torch.device | str) -> Dataset:
    pairs = _idx_read(cfg, header_only=False)
    (_, X, y), *rest = pairs.values()
    test = (rest[0][1][:, None], rest[0][2]) if rest else None
    scale = 255.0 if X.dtype == np.uint8 else 1.0
    return _assemble(X[:, None], y, cfg, device, num_classes=_idx_classes(pairs), test=test,
                     scale=scale, info={"official_test": bool(rest)})


# ----------------------------------------------------------------------------- arrays (.npz, .csv)


def _arrays_file(cfg: DataConfig) -> Path:
    path = Path(cfg.path)
    if not path.is_file():
        raise ConfigError([("data.path", "no such file" if not path.exists() else "not a file", cfg.path)])
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise ConfigError([("data.path", f"unsupported file type {suffix or '(none)'!r}: expected a "
                                         ".npz (arrays X and y) or a .csv with a header row", cfg.path)])
    if suffix == ".npz" and cfg.target is not None:
        raise ConfigError([("data.target", "only for a .csv file: a .npz holds its labels in "
                                           "array `y`", cfg.target)])
    return path


def _encode_labels(values: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique label values, labels as 0..C-1)."""
    if values.ndim != 1 or len(values) == 0:
        raise ConfigError([("data.path", f"labels must be a non-empty 1-D array, got shape "
                                         f"{values.shape}", where)])
    classes, y = np.unique(values, return_inverse=True)
    return classes, y.reshape(-1).astype(np.int64)


def _example_shape(shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    """One example's shape: [N, F] -> (F,); [N, H, W] -> (1, H, W); [N, C, H, W] -> (C, H, W)."""
    if len(shape) in (2, 4):
        return tuple(int(d) for d in shape[1:])
    if len(shape) == 3:
        return (1, *(int(d) for d in shape[1:]))
    raise ConfigError([("data.path", f"X must be 2-D [N, F], 3-D [N, H, W] or 4-D [N, C, H, W], "
                                     f"got shape {tuple(shape)}", where)])


def _npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


def _npz_read(path: Path, where: str, *, header_only: bool
              ) -> tuple[tuple[int, ...], np.dtype, np.ndarray | None, np.ndarray]:
    """(X's shape and dtype from its header, X unless ``header_only``, y) from a .npz."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n.removesuffix(".npy") for n in zf.namelist()}
            if not {"X", "y"} <= names:
                raise ConfigError([("data.path", f"a .npz needs arrays X and y, found {sorted(names)}",
                                    where)])
            shape, dtype = _npy_header(zf, "X.npy")
        with np.load(path, allow_pickle=False) as z:
            return shape, dtype, (None if header_only else z["X"]), z["y"]
    except ConfigError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ConfigError([("data.path", f"not a readable .npz file ({e})", where)]) from None


def _check_features(shape: tuple[int, ...], dtype: np.dtype, n_labels: int, where: str) -> None:
    if dtype.kind not in "biuf":
        raise ConfigError([("data.path", f"X must be numeric, got dtype {dtype}", where)])
    if shape[0] != n_labels:
        raise ConfigError([("data.path", f"X has {shape[0]} rows but y has {n_labels} labels", where)])


def _parse_labels(raw: list[str]) -> np.ndarray:
    """CSV label strings as integers, else numbers, else strings (so 10 sorts after 9)."""
    for kind in (int, float):
        try:
            return np.array([kind(v) for v in raw])
        except ValueError:
            pass
    return np.array(raw)


def _csv_header(path: Path, cfg: DataConfig) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    if not header:
        raise ConfigError([("data.path", "an empty .csv file: expected a header row", cfg.path)])
    if cfg.target is None:
        raise ConfigError([("data.target", f"a .csv file needs `target`, the name of its label "
                                           f"column (header: {header})", None)])
    if cfg.target not in header:
        raise ConfigError([("data.target", f"column not in CSV header {header}", cfg.target)])
    return header


def _csv_read(path: Path, cfg: DataConfig, *, labels_only: bool
              ) -> tuple[int, np.ndarray | None, np.ndarray]:
    """(number of feature columns, X unless ``labels_only``, raw labels)."""
    try:
        return _csv_parse(path, cfg, labels_only=labels_only)
    except UnicodeDecodeError as e:
        raise ConfigError([("data.path", f"not a UTF-8 text .csv file ({e.reason} at byte {e.start})",
                            cfg.path)]) from None
    except (csv.Error, OSError) as e:
        raise ConfigError([("data.path", f"not a readable .csv file ({e})", cfg.path)]) from None


def _csv_parse(path: Path, cfg: DataConfig, *, labels_only: bool
               ) -> tuple[int, np.ndarray | None, np.ndarray]:
    header = _csv_header(path, cfg)
    t = header.index(cfg.target)
    rows: list[list[str]] = []
    raw: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ConfigError([("data.path", f"line {line} has {len(row)} fields, the header "
                                                 f"{len(header)}", cfg.path)])
            raw.append(row[t].strip())
            if not labels_only:
                rows.append(row[:t] + row[t + 1:])
    if not raw:
        raise ConfigError([("data.path", "a .csv file without data rows", cfg.path)])
    return len(header) - 1, (None if labels_only else _csv_features(rows, cfg.path)), _parse_labels(raw)


def _csv_features(rows: list[list[str]], where: str) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), -1)
    except ValueError as e:
        raise ConfigError([("data.path", f"non-numeric feature value in the .csv ({e})", where)]) from None


def _arrays_read(cfg: DataConfig, *, header_only: bool
                 ) -> tuple[tuple[int, ...], np.ndarray | None, np.ndarray, np.ndarray]:
    """(example shape, X in [N, F] / [N, C, H, W] unless ``header_only``, y as 0..C-1, classes)."""
    path = _arrays_file(cfg)
    if path.suffix.lower() == ".csv":
        n_features, X, raw = _csv_read(path, cfg, labels_only=header_only)
        shape, dtype = (len(raw), n_features), np.dtype(np.float64)
    else:
        shape, dtype, X, raw = _npz_read(path, cfg.path, header_only=header_only)
    classes, y = _encode_labels(raw, cfg.path)
    _check_features(shape, dtype, len(y), cfg.path)
    example = _example_shape(shape, cfg.path)
    if X is not None:
        X = X.reshape(len(X), *example)
    return example, X, y, classes


def _arrays_describe(cfg: DataConfig) -> DataSpec:
    example, _, y, classes = _arrays_read(cfg, header_only=True)
    _check_split(len(y), cfg, official_test=False)
    return DataSpec(example, len(classes))


def _load_arrays(cfg: DataConfig, device: torch.device | str) -> Dataset:
    _, X, y, classes = _arrays_read(cfg, header_only=False)
    return _assemble(X, y, cfg, device, num_classes=len(classes), info={"classes": classes})
