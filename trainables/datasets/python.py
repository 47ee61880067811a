"""``python``: your own torch ``Dataset``s, from a factory named ``"module:attribute"`` (or
``"path/to/file.py:attribute"``, see :mod:`trainables.imports`).

The factory is called with ``data.kwargs`` and returns either one map-style ``Dataset`` (split by
``val_fraction`` / ``test_fraction`` / ``split_seed`` like any other source) or a mapping with
``train`` and optionally ``val`` and ``test`` (the official splits; what is missing is split off
``train``). An example is ``(x, y)``: ``x`` a tensor or array (``[F]`` features, ``[C, H, W]`` an
image, ``[H, W]`` a one-channel image), ``y`` an integer class in ``0..num_classes-1``. The number
of classes is ``data.num_classes`` or the length of the train dataset's ``classes`` attribute
(torchvision's convention), whose entries then name the classes.

Validation (``describe``, before training) calls the factory and reads one example of each split:
its shape, dtype and label are checked, and every problem names ``data.factory`` and its value.
Random transforms inside your ``Dataset`` run per example in the DataLoader's workers: streamed
(``in_memory: false``) they are drawn again every epoch, held in memory they are drawn once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.utils.data as tud
from pydantic import AfterValidator, Field, model_validator

from ..configbase import ConfigError, FieldError
from ..data import (
    Dataset,
    DataSpec,
    LoaderOptions,
    NormalizeStats,
    StreamSplit,
    check_split,
    loader_options,
    channel_moments,
    place_datasets,
    preprocessing_record,
    split_indices,
    standardised,
    batches,
)
from ..families import DATASETS, DataConfig
from ..imports import factory_spec, import_object

__all__ = ["PythonDataConfig"]


@DATASETS.register
class PythonDataConfig(DataConfig):
    """Your own torch Datasets, from a factory function."""

    name: Literal["python"] = "python"
    factory: Annotated[str | None, AfterValidator(lambda v: v if v is None else factory_spec(v))] = Field(
        None, description="`module:attribute` or `path/to/file.py:attribute`: a callable returning a "
                          "Dataset, or {train: ..., val: ..., test: ...} (required)")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the factory")
    num_classes: int | None = Field(None, description="the number of classes (default: the length of "
                                                      "the train dataset's `classes`)")
    normalize: Literal["auto", "none"] | NormalizeStats = Field(
        "none", description="`none`: examples as the Dataset gives them; `auto`: per-channel (per-feature) "
                            "mean/std of the training split, computed once and recorded; or "
                            "`{mean: [...], std: [...]}`")

    @model_validator(mode="after")
    def _check_python(self) -> PythonDataConfig:
        if self.factory is None:
            raise FieldError("factory", "dataset 'python' needs `factory` ('module:attribute' or "
                                         "'path/to/file.py:attribute')")
        if self.num_classes is not None and self.num_classes < 1:
            raise FieldError("num_classes", "`num_classes >= 1` must hold", self.num_classes)
        return self

    def describe(self) -> DataSpec:
        return _describe(self)

    def load(self, device: torch.device | str = "cpu") -> Dataset:
        return _load(self, device)


def _problem(cfg: PythonDataConfig, message: str) -> ConfigError:
    return ConfigError([("data.factory", message, cfg.factory)])


def _datasets(cfg: PythonDataConfig) -> dict[str, Any]:
    """split -> the user's dataset ("train" always)."""
    try:
        factory = import_object(cfg.factory)
    except Exception as e:  # ImportError, AttributeError, or anything the module raised
        raise _problem(cfg, f"{type(e).__name__}: {e}") from None
    if not callable(factory):
        raise _problem(cfg, f"is not callable (a {type(factory).__name__})")
    try:
        made = factory(**cfg.kwargs)
    except Exception as e:
        raise _problem(cfg, f"calling it raised {type(e).__name__}: {e}") from None
    parts = dict(made) if isinstance(made, Mapping) else {"train": made}
    unknown = sorted(set(parts) - {"train", "val", "test"})
    if unknown or "train" not in parts:
        raise _problem(cfg, f"returned a mapping with keys {sorted(parts)}: expected 'train' and "
                            "optionally 'val' and 'test'")
    for split, ds in parts.items():
        if isinstance(ds, tud.IterableDataset) or not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise _problem(cfg, f"{split}: a map-style Dataset is needed (with __len__ and __getitem__), "
                                f"got {type(ds).__name__}")
        if len(ds) == 0 and split == "train":
            raise _problem(cfg, "the train dataset is empty")
    return parts


def _num_classes(cfg: PythonDataConfig, train: Any) -> tuple[int, list[Any]]:
    """(number of classes, the class names: ``train.classes`` or 0..C-1)."""
    names = getattr(train, "classes", None)
    names = list(names) if isinstance(names, (list, tuple)) else None
    if cfg.num_classes is not None:
        if names is not None and len(names) != cfg.num_classes:
            names = None
        return cfg.num_classes, names if names is not None else list(range(cfg.num_classes))
    if names is None:
        raise ConfigError([("data.num_classes", "required: the factory's train dataset has no `classes` "
                                                "list to count", None)])
    return len(names), names


def _as_example(item: Any) -> tuple[torch.Tensor, int]:
    """``(x, y)`` from a user example, ``x`` float32 ``[F]`` or ``[C, H, W]``; ValueError otherwise."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"an example must be a pair (x, y), got {type(item).__name__}")
    x, y = item
    try:
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"x is not an array ({e})") from None
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32,
                                                 torch.int64, torch.bool)):
        raise ValueError(f"x must be numeric, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[None]
    if x.ndim not in (1, 3):
        raise ValueError(f"x must be [F], [H, W] or [C, H, W], got shape {tuple(x.shape)}")
    if torch.is_tensor(y):
        y = y.item() if y.numel() == 1 else y
    if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, np.integer)):
        raise ValueError(f"y must be an integer class index, got {y!r}")
    return x.to(torch.float32), int(y)


class _Examples(tud.Dataset):
    """The user's dataset (or ``indices`` of it) as ``(x float32 [*shape], y int)``, checked and
    optionally normalised."""

    def __init__(self, dataset: Any, indices: Any, shape: tuple[int, ...], num_classes: int,
                 stats: tuple[list[float], list[float]] | None = None):
        self.dataset, self.shape, self.num_classes = dataset, shape, num_classes
        self.indices = None if indices is None else [int(i) for i in indices]
        self.stats = None
        if stats is not None:
            view = (-1,) + (1,) * (len(shape) - 1)
            self.stats = tuple(torch.tensor(v, dtype=torch.float32).reshape(view) for v in stats)

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = i if self.indices is None else self.indices[i]
        x, y = _as_example(self.dataset[j])
        if tuple(x.shape) != self.shape:
            raise ValueError(f"example {j} has shape {tuple(x.shape)}, the first one {self.shape}")
        if not 0 <= y < self.num_classes:
            raise ValueError(f"example {j} has label {y}, outside 0..{self.num_classes - 1}")
        return (x if self.stats is None else standardised(x, *self.stats)), y


def _spec(cfg: PythonDataConfig, parts: dict[str, Any]) -> tuple[DataSpec, list[Any]]:
    num_classes, names = _num_classes(cfg, parts["train"])
    shape = None
    for split, ds in parts.items():
        if len(ds) == 0:
            continue
        try:
            x, y = _as_example(ds[0])
        except Exception as e:
            raise _problem(cfg, f"{split}[0]: {e}") from None
        if shape is not None and tuple(x.shape) != shape:
            raise _problem(cfg, f"{split}[0] has shape {tuple(x.shape)}, train[0] {shape}")
        shape = tuple(x.shape)
        if not 0 <= y < num_classes:
            raise _problem(cfg, f"{split}[0] has label {y}, outside 0..{num_classes - 1} "
                                f"(num_classes={num_classes})")
    if isinstance(cfg.normalize, NormalizeStats) and len(cfg.normalize.mean) != shape[0]:
        raise ConfigError([("data.normalize", f"needs {shape[0]} mean/std values (examples of shape "
                                              f"{shape})", cfg.normalize.model_dump())])
    return DataSpec(shape, num_classes), names


def _describe(cfg: PythonDataConfig) -> DataSpec:
    parts = _datasets(cfg)
    check_split(len(parts["train"]), cfg, official_test="test" in parts, official_val="val" in parts)
    return _spec(cfg, parts)[0]


def _load(cfg: PythonDataConfig, device: torch.device | str) -> Dataset:
    parts = _datasets(cfg)
    spec, names = _spec(cfg, parts)
    train = parts["train"]
    train_i, val_i, test_i = split_indices(len(train), cfg, official_test="test" in parts,
                                            official_val="val" in parts)
    chosen = [(train, train_i),
              (parts["val"], None) if "val" in parts else (train, val_i),
              (parts["test"], None) if "test" in parts else (train, test_i)]
    stats = None
    if isinstance(cfg.normalize, NormalizeStats):
        stats = (cfg.normalize.mean, cfg.normalize.std)
    elif cfg.normalize == "auto":  # one pass over the training split, in order
        raw = StreamSplit(_Examples(train, train_i, spec.input_shape, spec.num_classes), "cpu",
                          LoaderOptions(loader_options(cfg, "cpu").num_workers))
        mean, std = channel_moments(xb for xb, _ in batches(raw, 256, shuffle=False))
        stats = (mean.tolist(), std.tolist())
    datasets = [_Examples(ds, idx, spec.input_shape, spec.num_classes, stats) for ds, idx in chosen]
    pre = preprocessing_record(cfg, spec, names, mean=stats[0] if stats else None, std=stats[1] if stats else None)
    info = {"classes": names} | ({"mean": stats[0], "std": stats[1]} if stats else {})
    return Dataset(*place_datasets(datasets, cfg, device, spec), spec=spec, augment=False, info=info,
                   preprocessing=pre)
