"""``idx``: a folder of MNIST-format IDX files (optionally gzip-compressed), e.g.
``../shared/data/mnist``: a train and a test (``t10k``) pair, or one pair split like any other data."""

from __future__ import annotations

import gzip
import math
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..configbase import ConfigError, FieldError
from ..data import Dataset, DataSpec, assemble, check_split
from ..families import DATASETS, AbsolutePath, DataConfig

__all__ = ["IdxConfig"]


@DATASETS.register
class IdxConfig(DataConfig):
    """MNIST-format IDX files from a folder."""

    name: Literal["idx"] = "idx"
    path: AbsolutePath = Field(None, description="the folder of IDX files (required)")

    @model_validator(mode="after")
    def _needs_path(self) -> IdxConfig:
        if self.path is None:
            raise FieldError("path", "dataset 'idx' needs `path` (a folder of IDX files)")
        return self

    def describe(self) -> DataSpec:
        return _idx_describe(self)

    def load(self, device: torch.device | str = "cpu") -> Dataset:
        return _load_idx(self, device)


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


def _idx_pairs(cfg: IdxConfig) -> dict[str, tuple[Path, Path]]:
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


def _idx_read(cfg: IdxConfig, *, header_only: bool) -> dict[str, tuple]:
    pairs = {role: _idx_read_pair(img, lab, cfg.path, header_only=header_only)
             for role, (img, lab) in _idx_pairs(cfg).items()}
    sizes = {shape[1:] for shape, _, _ in pairs.values()}
    if len(sizes) > 1:
        raise ConfigError([("data.path", f"train and test images differ in size: {sorted(sizes)}",
                            cfg.path)])
    return pairs


def _idx_classes(pairs: dict[str, tuple]) -> int:
    return int(max(y.max() for _, _, y in pairs.values() if y.size) + 1)


def _idx_describe(cfg: IdxConfig) -> DataSpec:
    pairs = _idx_read(cfg, header_only=True)
    (shape, _, _), *_ = pairs.values()
    check_split(shape[0], cfg, official_test=len(pairs) == 2)
    return DataSpec((1, *shape[1:]), _idx_classes(pairs))


def _load_idx(cfg: IdxConfig, device: torch.device | str) -> Dataset:
    pairs = _idx_read(cfg, header_only=False)
    (_, X, y), *rest = pairs.values()
    test = (rest[0][1][:, None], rest[0][2]) if rest else None
    scale = 255.0 if X.dtype == np.uint8 else 1.0
    return assemble(X[:, None], y, cfg, device, num_classes=_idx_classes(pairs), test=test,
                     scale=scale, info={"official_test": bool(rest)})
