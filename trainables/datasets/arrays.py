"""``arrays``: the user's own data, a ``.npz`` with arrays ``X`` and ``y``, or a ``.csv`` with a
header row and the label column named by ``target``. ``X`` may be ``[N, F]`` feature vectors or
images, ``[N, C, H, W]`` (or ``[N, H, W]``: one channel), standardised per feature or per channel.
Labels may be any values; they are encoded as 0..C-1 in sorted order (the original values are
``Dataset.info["classes"]`` and the compact model's ``preprocessing["classes"]``)."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..configbase import ConfigError, FieldError
from ..data import Dataset, DataSpec, assemble, check_split
from ..families import DATASETS, AbsolutePath, DataConfig

__all__ = ["ArraysConfig"]


@DATASETS.register
class ArraysConfig(DataConfig):
    """Your own ``.npz`` (``X`` as ``[N, F]`` features or ``[N, C, H, W]`` images, ``y``) or ``.csv`` file."""

    name: Literal["arrays"] = "arrays"
    path: AbsolutePath = Field(None, description="the .npz (arrays X: [N, F] features or [N, C, H, W] / "
                                                 "[N, H, W] images, and y) or .csv file (required)")
    target: str | None = Field(None, description="the label column of a .csv file")

    @model_validator(mode="after")
    def _needs_path(self) -> ArraysConfig:
        if self.path is None:
            raise FieldError("path", "dataset 'arrays' needs `path` (a .npz or .csv file)")
        return self

    def describe(self) -> DataSpec:
        return _arrays_describe(self)

    def load(self, device: torch.device | str = "cpu") -> Dataset:
        return _load_arrays(self, device)


def _arrays_file(cfg: ArraysConfig) -> Path:
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


def parse_labels(raw: list[str]) -> np.ndarray:
    """CSV label strings as integers, else numbers, else strings (so 10 sorts after 9)."""
    for kind in (int, float):
        try:
            return np.array([kind(v) for v in raw])
        except ValueError:
            pass
    return np.array(raw)


def _csv_header(path: Path, cfg: ArraysConfig) -> list[str]:
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


def _csv_read(path: Path, cfg: ArraysConfig, *, labels_only: bool
              ) -> tuple[int, np.ndarray | None, np.ndarray]:
    """(number of feature columns, X unless ``labels_only``, raw labels)."""
    try:
        return _csv_parse(path, cfg, labels_only=labels_only)
    except UnicodeDecodeError as e:
        raise ConfigError([("data.path", f"not a UTF-8 text .csv file ({e.reason} at byte {e.start})",
                            cfg.path)]) from None
    except (csv.Error, OSError) as e:
        raise ConfigError([("data.path", f"not a readable .csv file ({e})", cfg.path)]) from None


def _csv_parse(path: Path, cfg: ArraysConfig, *, labels_only: bool
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
    return len(header) - 1, (None if labels_only else _csv_features(rows, cfg.path)), parse_labels(raw)


def _csv_features(rows: list[list[str]], where: str) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), -1)
    except ValueError as e:
        raise ConfigError([("data.path", f"non-numeric feature value in the .csv ({e})", where)]) from None


def _arrays_read(cfg: ArraysConfig, *, header_only: bool
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


def _arrays_describe(cfg: ArraysConfig) -> DataSpec:
    example, _, y, classes = _arrays_read(cfg, header_only=True)
    check_split(len(y), cfg, official_test=False)
    return DataSpec(example, len(classes))


def _load_arrays(cfg: ArraysConfig, device: torch.device | str) -> Dataset:
    _, X, y, classes = _arrays_read(cfg, header_only=False)
    record = {}
    if Path(cfg.path).suffix.lower() == ".csv":  # predict matches a CSV's columns by name
        record = {"columns": [h for h in _csv_header(Path(cfg.path), cfg) if h != cfg.target],
                  "target": cfg.target}
    return assemble(X, y, cfg, device, num_classes=len(classes), info={"classes": classes},
                     classes=classes, record=record)
