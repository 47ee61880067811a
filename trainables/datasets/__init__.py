"""Dataset sources: one module per family, each a :class:`~trainables.families.DataConfig`
subclass with its parameters, ``describe()`` and ``load(device)``, registered in
:data:`~trainables.families.DATASETS`. The shared splitting and normalising is in
:mod:`trainables.data`.
"""

from __future__ import annotations

from ..families import DATASETS, DataConfig
# registration, in the order the families are listed (docs, "valid" lists)
from .digits import DigitsConfig  # isort: skip
from .correlated_blocks import CorrelatedBlocksConfig  # isort: skip
from .vision import (  # isort: skip
    CIFAR10Config,
    CIFAR100Config,
    FashionMNISTConfig,
    MNISTConfig,
    TorchvisionData,
)
from .idx import IdxConfig  # isort: skip
from .arrays import ArraysConfig  # isort: skip
from .image_folder import ImageFolderConfig  # isort: skip
from .python import PythonDataConfig  # isort: skip

__all__ = [
    "DATASETS",
    "DataConfig",
    "ArraysConfig",
    "ImageFolderConfig",
    "PythonDataConfig",
    "CorrelatedBlocksConfig",
    "DigitsConfig",
    "IdxConfig",
    "TorchvisionData",
    "MNISTConfig",
    "FashionMNISTConfig",
    "CIFAR10Config",
    "CIFAR100Config",
]
