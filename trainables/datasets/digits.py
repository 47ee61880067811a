"""``digits``: scikit-learn's bundled 8x8 handwritten digits (``load_digits``: 1,797 images, 16
grey levels, 10 classes) as ``[N, 1, 8, 8]``. No official test split; no download: the default."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..data import Dataset, DataSpec, assemble, check_split
from ..families import DATASETS, DataConfig

__all__ = ["DigitsConfig"]

_DIGITS_SIZE = 1797


@DATASETS.register
class DigitsConfig(DataConfig):
    """scikit-learn's 8x8 digits (no parameters)."""

    name: Literal["digits"] = "digits"

    def describe(self) -> DataSpec:
        check_split(_DIGITS_SIZE, self, official_test=False)
        return DataSpec((1, 8, 8), 10)

    def load(self, device: torch.device | str = "cpu") -> Dataset:
        return _load_digits(self, device)


def _load_digits(cfg: DigitsConfig, device: torch.device | str) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = bunch.images.reshape(-1, 1, 8, 8)
    return assemble(X, bunch.target.astype(np.int64), cfg, device, num_classes=10, scale=16.0)
