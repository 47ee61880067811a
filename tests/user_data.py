"""Data written by the tests: a PNG folder of three classes, a Dataset factory module."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("left", "right", "top")


def write_images(root: Path, n_per_class: int, *, size=(8, 8), seed: int = 0, classes=CLASSES) -> None:
    """PNGs whose class is where the bright block is (left half, right half, top half), plus noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 90, size=(h, w, 3))
            region = [(slice(None), slice(0, w // 2)), (slice(None), slice(w // 2, None)),
                      (slice(0, h // 2), slice(None))][CLASSES.index(name)]
            img[region] += 120
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{k}_{i:03d}.png")


FACTORY = textwrap.dedent('''
    import torch
    from torch.utils.data import Dataset

    class Blobs(Dataset):
        """n feature vectors in 3 classes; label k has its mass on feature k."""
        classes = ["a", "b", "c"]

        def __init__(self, n, seed, label_offset=0, shape=(4,)):
            g = torch.Generator().manual_seed(seed)
            self.y = torch.arange(n) % 3
            self.x = torch.randn(n, *shape, generator=g)
            self.x.view(n, -1)[torch.arange(n), self.y] += 3
            self.offset = label_offset

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i].numpy(), int(self.y[i]) + self.offset

    def splits(n=60, label_offset=0):
        return {"train": Blobs(n, 0, label_offset), "test": Blobs(30, 1)}

    def one(n=60):
        return Blobs(n, 0)

    def wrong_shape():
        return {"train": Blobs(10, 0), "val": Blobs(10, 1, shape=(5,))}

    def not_a_dataset():
        return {"train": [1, 2, 3], "extra": None}

    def fails():
        raise RuntimeError("no data here")

    NOT_CALLABLE = 3
''')
