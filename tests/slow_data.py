"""A `python` data factory that takes a set time to load: tests that race a clock against trials
(a time budget, an interrupt) use it so that a trial lasts at least that long on any machine."""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset


def digits(seconds: float = 1.0):
    """sklearn's 8x8 digits as 64 features in [0, 1], after sleeping `seconds`."""
    time.sleep(seconds)
    X, y = load_digits(return_X_y=True)
    ds = TensorDataset(torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y))
    ds.classes = [str(k) for k in range(10)]
    return ds
