"""``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: the torchvision datasets.

With their official train/test splits, downloaded once into ``path`` (default
``~/.cache/sparsetune/<name>``) under a file lock, so that parallel trials on one node neither
download twice nor read a half-written file. One family per dataset, one implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from filelock import FileLock
from pydantic import Field

from ..configbase import ConfigError
from ..data import Dataset, DataSpec, DataUnavailable, assemble
from ..families import DATASETS, AbsolutePath, DataConfig

__all__ = ["TorchvisionData", "MNISTConfig", "FashionMNISTConfig", "CIFAR10Config", "CIFAR100Config"]

_LOCK_NAME = ".sparsetune-download.lock"


class TorchvisionData(DataConfig):
    """Shared by the torchvision families: ``dataset`` (class in ``torchvision.datasets``),
    ``shape`` (one example) and ``classes`` say which one."""

    dataset: ClassVar[str]
    shape: ClassVar[tuple[int, ...]]
    classes: ClassVar[int]

    path: AbsolutePath = Field(None, description="the download/cache folder (default "
                                                 "~/.cache/sparsetune/<name>)")
    augment: bool = Field(False, description="random augmentation of training batches: crop + flip "
                                             "(3 channels), shift by up to 2 pixels (1 channel)")

    def root(self) -> Path:
        return Path(self.path) if self.path is not None else Path.home() / ".cache" / "sparsetune" / self.name

    def describe(self) -> DataSpec:
        root = self.root()
        if root.exists() and not root.is_dir():
            raise ConfigError([("data.path", "not a folder", str(root))])
        return DataSpec(self.shape, self.classes)

    def load(self, device: torch.device | str = "cpu") -> Dataset:
        return _load_torchvision(self, device)


@DATASETS.register
class MNISTConfig(TorchvisionData):
    """MNIST (28x28 grey digits, 60,000 + 10,000)."""

    dataset, shape, classes = "MNIST", (1, 28, 28), 10
    name: Literal["mnist"] = "mnist"


@DATASETS.register
class FashionMNISTConfig(TorchvisionData):
    """Fashion-MNIST (28x28 grey clothes, 60,000 + 10,000)."""

    dataset, shape, classes = "FashionMNIST", (1, 28, 28), 10
    name: Literal["fashion_mnist"] = "fashion_mnist"


@DATASETS.register
class CIFAR10Config(TorchvisionData):
    """CIFAR-10 (32x32 colour, 50,000 + 10,000)."""

    dataset, shape, classes = "CIFAR10", (3, 32, 32), 10
    name: Literal["cifar10"] = "cifar10"
    augment: bool = Field(True, description="random augmentation of training batches: crop + flip")


@DATASETS.register
class CIFAR100Config(TorchvisionData):
    """CIFAR-100 (32x32 colour, 100 classes, 50,000 + 10,000)."""

    dataset, shape, classes = "CIFAR100", (3, 32, 32), 100
    name: Literal["cifar100"] = "cifar100"
    augment: bool = Field(True, description="random augmentation of training batches: crop + flip")


def _torchvision_arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(ds.data)
    X = X[:, None] if X.ndim == 3 else X.transpose(0, 3, 1, 2)  # MNIST [N,H,W]; CIFAR [N,H,W,C]
    return X, np.asarray(ds.targets, dtype=np.int64)


def _load_torchvision(cfg: TorchvisionData, device: torch.device | str) -> Dataset:
    import torchvision.datasets

    cls_name, classes = cfg.dataset, cfg.classes
    cls = getattr(torchvision.datasets, cls_name)
    root = cfg.root()
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
    return assemble(X, y, cfg, device, num_classes=classes, test=_torchvision_arrays(test),
                     scale=255.0, augment=cfg.augment, info={"root": str(root)},
                     classes=getattr(train, "classes", None))
