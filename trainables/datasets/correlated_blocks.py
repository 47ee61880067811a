"""``correlated_blocks``: the synthetic data of GrOWL (Zhang et al., ICLR 2018) §4.1.

Blocks of strongly correlated features among noise features, labelled by a linear teacher that
gives every feature of a block the same weights (see :func:`_correlated_blocks`). Vectors
``[N, n_features]``, left as generated (not standardised: the features are standard normal by
construction, and the teacher's labels refer to those exact values). ``split_seed`` draws the data.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..configbase import FieldError, check_finite, check_size
from ..data import Dataset, DataSpec, assemble, check_split
from ..families import DATASETS, DataConfig

__all__ = ["CorrelatedBlocksConfig"]


@DATASETS.register
class CorrelatedBlocksConfig(DataConfig):
    """GrOWL §4.1: ``n_blocks`` blocks of ``block_size`` AR(1)-correlated features, ``block_gap``
    noise features between blocks, noise up to ``n_features``."""

    name: Literal["correlated_blocks"] = "correlated_blocks"
    n_samples: int = Field(2000, description="number of examples drawn")
    n_features: int = Field(784, description="number of features (block and noise features)")
    n_blocks: int = Field(10, description="number of correlated blocks")
    block_size: int = Field(50, description="features per block")
    block_gap: int = Field(28, description="noise features between consecutive blocks")
    rho: float = Field(0.96, description="correlation of neighbouring features in a block "
                                         "(cov = rho^|i-j|)")
    num_classes: int = Field(10, description="number of classes of the linear teacher")

    @model_validator(mode="after")
    def _check(self) -> CorrelatedBlocksConfig:
        for f in ("n_samples", "n_features", "n_blocks", "block_size", "num_classes"):
            check_size(getattr(self, f), f)
        if self.num_classes < 2:
            raise FieldError("num_classes", "`num_classes >= 2` must hold", self.num_classes)
        check_size(self.block_gap, "block_gap", lo=0)
        check_finite(self.rho, "rho", -1, 1, lo_open=True, hi_open=True)
        span = self.n_blocks * self.block_size + (self.n_blocks - 1) * self.block_gap
        if span > self.n_features:
            raise FieldError(
                "n_features",
                f"{self.n_blocks} blocks of {self.block_size} with gaps of {self.block_gap} "
                f"need {span} features", self.n_features,
            )
        return self

    def describe(self) -> DataSpec:
        check_split(self.n_samples, self, official_test=False)
        return DataSpec((self.n_features,), self.num_classes)

    def load(self, device: torch.device | str = "cpu") -> Dataset:
        return _load_correlated_blocks(self, device)


def _block_ids(cfg: CorrelatedBlocksConfig) -> np.ndarray:
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


def _correlated_blocks(cfg: CorrelatedBlocksConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def _load_correlated_blocks(cfg: CorrelatedBlocksConfig, device: torch.device | str) -> Dataset:
    X, y, blocks, teacher = _correlated_blocks(cfg)
    return assemble(X, y, cfg, device, num_classes=cfg.num_classes, standardise=False,
                     info={"blocks": blocks, "teacher": teacher})
