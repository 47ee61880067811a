"""Tests of trainables.data: the datasets, their splits, IDX/npz/csv reading, batches, describe()."""

from __future__ import annotations

import gzip
import hashlib
import math
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import data as D
from trainables.config import ConfigError, DataConfig
from trainables.datasets import idx as idx_source
from trainables.datasets import vision



def _cfg(**kw) -> DataConfig:
    return DataConfig.model_validate(kw)


def _splits(ds: D.Dataset) -> list[D.Split]:
    return [ds.train, ds.val, ds.test]


def _raw(split: D.Split, ds: D.Dataset, scale: float = 1.0) -> np.ndarray:
    """Undo the standardisation (and the [0, 1] scaling) of a split: the original values."""
    shape = (1, -1) + (1,) * (split.X.ndim - 2)
    mean = np.asarray(ds.info["mean"]).reshape(shape)
    std = np.asarray(ds.info["std"]).reshape(shape)
    return (split.X.numpy().astype(np.float64) * std + mean) * scale


def _row_hashes(a: np.ndarray) -> Counter:
    a = np.ascontiguousarray(a)
    return Counter(hashlib.sha1(row.tobytes()).hexdigest() for row in a.reshape(len(a), -1))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """Our own IDX writer: magic (0, 0, type, ndim), big-endian uint32 dims, big-endian data."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[arr.dtype]
    head = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    body = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(body)
    else:
        path.write_bytes(body)


def _images(rng: np.random.Generator, n: int, h: int = 5, w: int = 5) -> np.ndarray:
    return rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)


# ----------------------------------------------------------------------------- splits (generic)


@pytest.mark.parametrize("test_split", ["last", "random"])
def test_split_indices_partition(test_split):
    cfg = _cfg(name="arrays", path="/x.npz", test_fraction=0.2, val_fraction=0.1, test_split=test_split)
    train, val, test = D.split_indices(103, cfg, official_test=False)
    assert len(test) == math.ceil(0.2 * 103) == 21
    assert len(val) == math.ceil(0.1 * 82) == 9
    assert len(train) == 73
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(103))
    if test_split == "last":
        assert test.tolist() == list(range(82, 103))
    else:
        assert test.tolist() != list(range(82, 103))


def test_split_leaving_no_training_examples_is_a_config_error(tmp_path):
    np.savez(tmp_path / "two.npz", X=np.zeros((2, 3)), y=np.array([0, 1]))
    cfg = _cfg(name="arrays", path=str(tmp_path / "two.npz"), test_fraction=0.5, val_fraction=0.5)
    with pytest.raises(ConfigError, match="data.val_fraction"):
        D.describe(cfg)
    with pytest.raises(ConfigError, match="no training examples"):
        D.load(cfg)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_classes_and_split_sizes():
    cfg = _cfg(name="digits")
    ds = D.load(cfg)
    assert ds.spec == D.DataSpec((1, 8, 8), 10) == D.describe(cfg)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1293, 144, 360)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    for s in _splits(ds):
        assert s.X.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.X.shape[1:] == (1, 8, 8) and s.X.shape[0] == len(s)
    assert set(ds.train.y.tolist()) == set(range(10))
    assert ds.augment is False


def test_digits_normalised_with_train_statistics():
    ds = D.load(_cfg(name="digits"))
    assert abs(ds.train.X.mean().item()) < 1e-5
    assert abs(ds.train.X.std(unbiased=False).item() - 1) < 1e-4
    assert abs(ds.test.X.mean().item()) > 1e-4  # statistics are the train split's, not the test's
    raw = _raw(ds.train, ds, 16.0)
    assert np.allclose(raw, np.round(raw), atol=1e-3) and raw.min() > -1e-3 and raw.max() < 16 + 1e-3


def test_digits_deterministic_in_split_seed_only():
    a, b = D.load(_cfg(name="digits", split_seed=3)), D.load(_cfg(name="digits", split_seed=3))
    for sa, sb in zip(_splits(a), _splits(b)):
        assert torch.equal(sa.X, sb.X) and torch.equal(sa.y, sb.y)
    c = D.load(_cfg(name="digits", split_seed=4))
    assert not torch.equal(a.test.y, c.test.y)
    assert _row_hashes(_raw(a.test, a, 16).round()) != _row_hashes(_raw(c.test, c, 16).round())


def test_digits_splits_partition_the_dataset():
    from sklearn.datasets import load_digits

    ds = D.load(_cfg(name="digits", split_seed=1))
    whole = load_digits().images.reshape(-1, 1, 8, 8)
    parts = [np.round(_raw(s, ds, 16.0)) for s in _splits(ds)]
    # every example exactly once across the splits (as a multiset: digits has duplicate images)
    assert sum((_row_hashes(p) for p in parts), Counter()) == _row_hashes(whole.astype(np.float64))
    # and no image is in two splits unless it occurs twice in the data
    dup = {h for h, c in _row_hashes(whole.astype(np.float64)).items() if c > 1}
    hs = [set(_row_hashes(p)) - dup for p in parts]
    assert not (hs[0] & hs[1]) and not (hs[0] & hs[2]) and not (hs[1] & hs[2])


def test_digits_last_split_subset_and_empty_val():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = D.load(_cfg(name="digits", test_split="last", val_fraction=0.0))
    assert len(ds.val) == 0 and ds.val.X.shape == (0, 1, 8, 8)
    assert torch.equal(ds.test.y, torch.as_tensor(bunch.target[-360:]))
    assert np.allclose(_raw(ds.test, ds, 16.0), bunch.images[-360:, None], atol=1e-3)
    sub = D.load(_cfg(name="digits", test_split="last", val_fraction=0.0, train_subset=100))
    assert len(sub.train) == 100 and torch.equal(sub.test.y, ds.test.y)
    assert torch.equal(sub.train.y, ds.train.y[:100])  # the first 100 of the same shuffled order
    assert np.allclose(_raw(sub.train, sub), _raw(ds.train, ds)[:100], atol=1e-4)
    assert abs(sub.train.X.mean().item()) < 1e-5  # statistics of the kept subset


# ----------------------------------------------------------------------------- correlated blocks

_BLOCKS = dict(name="correlated_blocks", n_samples=4000, n_features=60, n_blocks=3, block_size=10,
               block_gap=5, rho=0.9, num_classes=4)


def _blocks_all(ds: D.Dataset) -> tuple[np.ndarray, np.ndarray]:
    X = torch.cat([s.X for s in _splits(ds)]).numpy().astype(np.float64)
    y = torch.cat([s.y for s in _splits(ds)]).numpy()
    return X, y


def test_correlated_blocks_layout_and_spec():
    cfg = _cfg(**_BLOCKS)
    ds = D.load(cfg)
    assert ds.spec == D.describe(cfg) == D.DataSpec((60,), 4)
    blocks = ds.info["blocks"]
    assert blocks.shape == (60,)
    for k in range(3):
        assert np.flatnonzero(blocks == k).tolist() == list(range(15 * k, 15 * k + 10))
    assert (blocks == -1).sum() == 60 - 30
    assert (blocks[40:] == -1).all() and (blocks[10:15] == -1).all()
    assert ds.info["teacher"].shape == (3, 4)
    assert sum(len(s) for s in _splits(ds)) == 4000 and ds.train.X.dtype == torch.float32


def test_correlated_blocks_correlation_structure():
    ds = D.load(_cfg(**_BLOCKS))
    X, _ = _blocks_all(ds)
    C = np.corrcoef(X, rowvar=False)
    assert np.allclose(X.var(axis=0), 1, atol=0.1)
    starts = [0, 15, 30]
    adjacent = [C[s + j, s + j + 1] for s in starts for j in range(9)]
    assert abs(np.mean(adjacent) - 0.9) < 0.01 and max(abs(np.array(adjacent) - 0.9)) < 0.03
    lag5 = [C[s + j, s + j + 5] for s in starts for j in range(5)]
    assert abs(np.mean(lag5) - 0.9 ** 5) < 0.03  # AR(1): rho^|i-j|
    blocks = ds.info["blocks"]
    other = np.not_equal.outer(blocks, blocks) | np.equal.outer(blocks, -1)
    np.fill_diagonal(other, False)
    assert np.abs(C[other]).max() < 0.07  # across blocks and with noise: independent


def _teacher(X: np.ndarray, blocks: np.ndarray, B: np.ndarray) -> np.ndarray:
    z = np.stack([X[:, blocks == k].sum(1) / np.sqrt((blocks == k).sum()) for k in range(len(B))], 1)
    return np.argmax(z @ B, axis=1)


def test_correlated_blocks_labels_come_from_block_features_only():
    ds = D.load(_cfg(**_BLOCKS))
    X, y = _blocks_all(ds)
    blocks, B = ds.info["blocks"], ds.info["teacher"]
    assert np.array_equal(_teacher(X, blocks, B), y)
    assert len(np.unique(y)) == 4
    rng = np.random.default_rng(0)
    noisy = X.copy()
    noise = np.flatnonzero(blocks == -1)
    noisy[:, noise] = rng.permutation(noisy[:, noise], axis=0)  # scramble every noise feature
    assert np.array_equal(_teacher(noisy, blocks, B), y)
    scrambled = X.copy()
    scrambled[:, blocks == 1] = rng.permutation(scrambled[:, blocks == 1], axis=0)
    assert (_teacher(scrambled, blocks, B) != y).mean() > 0.1


def test_correlated_blocks_deterministic():
    a, b = D.load(_cfg(**_BLOCKS, split_seed=5)), D.load(_cfg(**_BLOCKS, split_seed=5))
    for sa, sb in zip(_splits(a), _splits(b)):
        assert torch.equal(sa.X, sb.X) and torch.equal(sa.y, sb.y)
    c = D.load(_cfg(**_BLOCKS, split_seed=6))
    assert not torch.equal(a.train.X, c.train.X)
    assert not np.array_equal(a.info["teacher"], c.info["teacher"])


# ----------------------------------------------------------------------------- IDX


def test_idx_reader_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    for name, arr in [("a-images-idx3-ubyte", _images(rng, 4)),
                      ("a-images-idx3-ubyte.gz", _images(rng, 4)),
                      ("b-idx2-int", rng.integers(-9, 9, size=(3, 2)).astype(np.int32)),
                      ("c-idx1-float.gz", rng.standard_normal(6).astype(np.float32))]:
        _write_idx(tmp_path / name, arr)
        shape, back = idx_source._read_idx(tmp_path / name, str(tmp_path))
        assert shape == arr.shape and back.dtype == arr.dtype and np.array_equal(back, arr)
        assert idx_source._read_idx(tmp_path / name, str(tmp_path), header_only=True) == (arr.shape, None)


def test_idx_single_pair_is_split(tmp_path):
    rng = np.random.default_rng(1)
    X, y = _images(rng, 20), rng.integers(0, 3, size=20).astype(np.uint8)
    _write_idx(tmp_path / "data-images-idx3-ubyte.gz", X)
    _write_idx(tmp_path / "data-labels-idx1-ubyte", y)
    cfg = _cfg(name="idx", path=str(tmp_path), test_fraction=0.25, test_split="last", val_fraction=0.2)
    ds = D.load(cfg)
    assert ds.spec == D.describe(cfg) == D.DataSpec((1, 5, 5), 3)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 3, 5)
    assert np.allclose(_raw(ds.test, ds, 255.0), X[-5:, None], atol=1e-3)
    assert ds.test.y.tolist() == y[-5:].tolist()
    parts = [np.round(_raw(s, ds, 255.0)) for s in (ds.train, ds.val)]
    assert sum(map(_row_hashes, parts), Counter()) == _row_hashes(X[:15, None].astype(np.float64))
    assert ds.info["official_test"] is False


def test_idx_train_and_t10k_pairs_are_the_official_split(tmp_path):
    rng = np.random.default_rng(2)
    Xtr, ytr = _images(rng, 30), rng.integers(0, 4, size=30).astype(np.uint8)
    Xte, yte = _images(rng, 8), rng.integers(0, 5, size=8).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", Xtr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", ytr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", Xte)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", yte)
    cfg = _cfg(name="idx", path=str(tmp_path), test_fraction=0.5, val_fraction=0.1)
    ds = D.load(cfg)
    assert ds.info["official_test"] is True
    assert ds.spec == D.describe(cfg) == D.DataSpec((1, 5, 5), 5)  # labels 0..4 across both files
    assert len(ds.test) == 8 and len(ds.train) + len(ds.val) == 30 and len(ds.val) == 3
    assert np.allclose(_raw(ds.test, ds, 255.0), Xte[:, None], atol=1e-3)
    assert ds.test.y.tolist() == yte.tolist()
    assert abs(ds.train.X.mean().item()) < 1e-5


def test_idx_prefers_the_plain_copy_of_a_file_present_twice(tmp_path):
    rng = np.random.default_rng(3)
    X, y = _images(rng, 10), rng.integers(0, 2, size=10).astype(np.uint8)
    for suffix in ("", ".gz"):  # as in torchvision's raw folders
        _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", X)
        _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y)
    assert D.describe(_cfg(name="idx", path=str(tmp_path))) == D.DataSpec((1, 5, 5), 2)


def _idx_pair(folder: Path, n_images: int = 6, n_labels: int = 6) -> None:
    rng = np.random.default_rng(4)
    _write_idx(folder / "train-images-idx3-ubyte", _images(rng, n_images))
    _write_idx(folder / "train-labels-idx1-ubyte", np.zeros(n_labels, dtype=np.uint8))


def test_idx_malformed_files_are_config_errors(tmp_path):
    cfg = _cfg(name="idx", path=str(tmp_path))
    _idx_pair(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x77\x03junk")  # bad type code
    for call in (D.describe, D.load):
        with pytest.raises(ConfigError, match=r"data\.path.*train-images-idx3-ubyte.*bad magic") as e:
            call(cfg)
        assert str(tmp_path) in str(e.value)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x1f\x8b not gzip")
    (tmp_path / "train-images-idx3-ubyte").rename(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(ConfigError, match=r"data\.path.*train-images-idx3-ubyte\.gz"):
        D.load(cfg)


def test_idx_describe_reads_headers_only(tmp_path):
    _idx_pair(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])  # truncated data, intact header
    cfg = _cfg(name="idx", path=str(tmp_path))
    assert D.describe(cfg) == D.DataSpec((1, 5, 5), 1)
    with pytest.raises(ConfigError, match=r"data\.path.*train-images-idx3-ubyte.*data bytes"):
        D.load(cfg)


def test_idx_folder_problems_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path: no such folder"):
        D.describe(_cfg(name="idx", path=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match=r"data\.path: no IDX images/labels pair"):
        D.describe(_cfg(name="idx", path=str(tmp_path)))
    _idx_pair(tmp_path, n_images=6, n_labels=5)
    with pytest.raises(ConfigError, match="6 images but .* 5 labels"):
        D.describe(_cfg(name="idx", path=str(tmp_path)))
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte has no matching labels"):
        D.describe(_cfg(name="idx", path=str(tmp_path)))


def test_idx_mnist_shaped_test_set_last_2000(tmp_path):
    """The MNIST test set's files as published (gzipped, t10k-*), written here with our own writer."""
    rng = np.random.default_rng(7)
    images, labels = _images(rng, 10000, 28, 28), rng.integers(0, 10, 10000, dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    cfg = _cfg(name="idx", path=str(tmp_path), test_fraction=0.2, test_split="last")
    ds = D.load(cfg)
    assert ds.spec == D.describe(cfg) == D.DataSpec((1, 28, 28), 10)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (7200, 800, 2000)
    assert ds.test.y.tolist() == labels[-2000:].tolist()
    assert ds.test.X.shape == (2000, 1, 28, 28)
    assert np.allclose(_raw(ds.test, ds, 255.0)[:, 0], images[-2000:], atol=1e-3)
    assert abs(ds.train.X.mean().item()) < 1e-5


# ----------------------------------------------------------------------------- arrays


def test_arrays_npz_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(3.0, 2.0, size=(40, 4))
    y = rng.choice([7, 3, 11], size=40)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    cfg = _cfg(name="arrays", path=str(tmp_path / "d.npz"), test_split="last", test_fraction=0.25)
    ds = D.load(cfg)
    assert ds.spec == D.describe(cfg) == D.DataSpec((4,), 3)
    assert ds.info["classes"].tolist() == [3, 7, 11]
    assert np.allclose(_raw(ds.test, ds), X[-10:], atol=1e-5)
    assert ds.test.y.tolist() == [[3, 7, 11].index(v) for v in y[-10:]]
    assert np.allclose(ds.train.X.mean(0).numpy(), 0, atol=1e-5)  # per feature
    assert np.allclose(ds.train.X.std(0, unbiased=False).numpy(), 1, atol=1e-4)


def test_arrays_npz_images(tmp_path):
    rng = np.random.default_rng(6)
    np.savez_compressed(tmp_path / "img.npz", X=rng.random((12, 6, 6)), y=np.arange(12) % 2)
    cfg = _cfg(name="arrays", path=str(tmp_path / "img.npz"))
    ds = D.load(cfg)
    assert ds.spec == D.describe(cfg) == D.DataSpec((1, 6, 6), 2)
    assert ds.train.X.shape[1:] == (1, 6, 6)
    np.savez(tmp_path / "img4.npz", X=rng.random((12, 3, 4, 4)) * [[[[1]], [[10]], [[100]]]],
             y=np.arange(12) % 3)
    ds4 = D.load(_cfg(name="arrays", path=str(tmp_path / "img4.npz")))
    assert ds4.spec == D.DataSpec((3, 4, 4), 3)
    assert np.allclose(ds4.train.X.std((0, 2, 3), unbiased=False).numpy(), 1, atol=1e-4)  # per channel


def _write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def test_arrays_csv_round_trip_with_string_labels(tmp_path):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(20, 3)).round(4)
    labels = rng.choice(["dog", "cat", "bird"], size=20)
    rows = [f"{a},{b},{lab},{c}" for (a, b, c), lab in zip(X, labels)]
    _write_csv(tmp_path / "d.csv", "a,b,label,c", rows)
    cfg = _cfg(name="arrays", path=str(tmp_path / "d.csv"), target="label", test_split="last",
               test_fraction=0.2)
    ds = D.load(cfg)
    assert ds.spec == D.describe(cfg) == D.DataSpec((3,), 3)
    assert ds.info["classes"].tolist() == ["bird", "cat", "dog"]
    assert np.allclose(_raw(ds.test, ds), X[-4:], atol=1e-5)
    assert ds.test.y.tolist() == [["bird", "cat", "dog"].index(v) for v in labels[-4:]]


def test_arrays_csv_numeric_labels_sort_as_numbers(tmp_path):
    _write_csv(tmp_path / "d.csv", "x,y", ["1,10", "2,9", "3,10", "4,9", "5,2"])
    ds = D.load(_cfg(name="arrays", path=str(tmp_path / "d.csv"), target="y", test_split="last",
                     val_fraction=0.0))
    assert ds.info["classes"].tolist() == [2, 9, 10]
    assert ds.test.y.tolist() == [0]


def test_arrays_config_errors(tmp_path):
    _write_csv(tmp_path / "d.csv", "a,b", ["1,2", "3,4"])
    with pytest.raises(ConfigError, match=r"data\.target: column not in CSV header \['a', 'b'\].*'label'"):
        D.describe(_cfg(name="arrays", path=str(tmp_path / "d.csv"), target="label"))
    with pytest.raises(ConfigError, match=r"data\.target: a \.csv file needs `target`"):
        D.load(_cfg(name="arrays", path=str(tmp_path / "d.csv")))
    with pytest.raises(ConfigError, match=r"data\.path: no such file"):
        D.describe(_cfg(name="arrays", path=str(tmp_path / "nope.npz")))
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 2)), y=np.arange(3))
    with pytest.raises(ConfigError, match=r"data\.target: only for a \.csv file"):
        D.describe(_cfg(name="arrays", path=str(tmp_path / "d.npz"), target="y"))
    (tmp_path / "d.txt").write_text("1 2\n")
    with pytest.raises(ConfigError, match=r"data\.path: unsupported file type '\.txt'"):
        D.describe(_cfg(name="arrays", path=str(tmp_path / "d.txt")))


def test_arrays_bad_contents_are_config_errors(tmp_path):
    np.savez(tmp_path / "noy.npz", X=np.zeros((3, 2)), labels=np.arange(3))
    with pytest.raises(ConfigError, match=r"data\.path: a \.npz needs arrays X and y"):
        D.describe(_cfg(name="arrays", path=str(tmp_path / "noy.npz")))
    np.savez(tmp_path / "rows.npz", X=np.zeros((4, 2)), y=np.arange(3))
    with pytest.raises(ConfigError, match="X has 4 rows but y has 3 labels"):
        D.describe(_cfg(name="arrays", path=str(tmp_path / "rows.npz")))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"data\.path: not a readable \.npz"):
        D.describe(_cfg(name="arrays", path=str(tmp_path / "bad.npz")))
    _write_csv(tmp_path / "short.csv", "a,b,t", ["1,2,0", "3,1"])
    with pytest.raises(ConfigError, match="line 3 has 2 fields"):
        D.describe(_cfg(name="arrays", path=str(tmp_path / "short.csv"), target="t"))
    _write_csv(tmp_path / "text.csv", "a,t", ["1,0", "x,1"])
    with pytest.raises(ConfigError, match="non-numeric feature value"):
        D.load(_cfg(name="arrays", path=str(tmp_path / "text.csv"), target="t"))


def test_arrays_describe_reads_only_the_header_of_X(tmp_path):
    path = tmp_path / "big.npz"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("X.npy", "w") as f:  # a header promising 1000 x 50 floats, and no data
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (1000, 50)})
        with zf.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.arange(1000) % 4)
    cfg = _cfg(name="arrays", path=str(path))
    assert D.describe(cfg) == D.DataSpec((50,), 4)
    with pytest.raises(ConfigError, match=r"data\.path"):
        D.load(cfg)


# ----------------------------------------------------------------------------- torchvision (offline)


def _fake_torchvision_mnist(root: Path, n_train: int = 24, n_test: int = 6) -> dict[str, np.ndarray]:
    """The four uncompressed raw files torchvision's MNIST checks for (md5=None: existence only)."""
    rng = np.random.default_rng(8)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte": _images(rng, n_train, 28, 28),
              "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
              "t10k-images-idx3-ubyte": _images(rng, n_test, 28, 28),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test).astype(np.uint8)}
    for name, arr in arrays.items():
        _write_idx(raw / name, arr)
    return arrays


def test_torchvision_mnist_offline_with_lock(tmp_path):
    arrays = _fake_torchvision_mnist(tmp_path)
    cfg = _cfg(name="mnist", path=str(tmp_path), val_fraction=0.25)
    ds = D.load(cfg)
    assert (tmp_path / vision._LOCK_NAME).exists()
    assert ds.spec == D.describe(cfg) == D.DataSpec((1, 28, 28), 10)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 6)
    assert np.allclose(_raw(ds.test, ds, 255.0), arrays["t10k-images-idx3-ubyte"][:, None], atol=1e-3)
    assert ds.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert abs(ds.train.X.mean().item()) < 1e-5 and ds.augment is False
    assert not (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()  # no download


def test_torchvision_default_root_is_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / ".cache" / "sparsetune" / "mnist"
    _fake_torchvision_mnist(root)
    ds = D.load(_cfg(name="mnist"))
    assert ds.info["root"] == str(root) and (root / vision._LOCK_NAME).exists()
    assert len(ds.test) == 6


def test_torchvision_describe_is_constant_and_does_not_download(tmp_path):
    assert D.describe(_cfg(name="cifar100", path=str(tmp_path / "none"))) == D.DataSpec((3, 32, 32), 100)
    assert D.describe(_cfg(name="fashion_mnist", path=str(tmp_path / "none"))) == D.DataSpec((1, 28, 28), 10)
    assert not (tmp_path / "none").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"data\.path: not a folder"):
        D.describe(_cfg(name="cifar10", path=str(tmp_path / "file")))


def test_torchvision_concurrent_loads_are_serialised_by_the_lock(tmp_path, monkeypatch):
    import torchvision.datasets

    _fake_torchvision_mnist(tmp_path)
    state = {"active": 0, "max": 0}
    guard = threading.Lock()

    class MNIST(torchvision.datasets.MNIST):  # the same name: torchvision's folder is <root>/MNIST
        def __init__(self, *args, **kwargs):
            with guard:
                state["active"] += 1
                state["max"] = max(state["max"], state["active"])
            time.sleep(0.1)  # a "download" in progress
            try:
                super().__init__(*args, **kwargs)
            finally:
                with guard:
                    state["active"] -= 1

    monkeypatch.setattr(torchvision.datasets, "MNIST", MNIST)
    cfg = _cfg(name="mnist", path=str(tmp_path))
    results, errors = [None] * 3, []

    def work(i):
        try:
            results[i] = D.load(cfg)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert state["max"] == 1  # never two constructors at once on one root
    assert all(torch.equal(r.train.X, results[0].train.X) for r in results)


# ----------------------------------------------------------------------------- batches


def _vector_split(n: int) -> D.Split:
    return D.Split(torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3), torch.arange(n))


def test_batches_cover_every_example_once_with_partial_last_batch():
    split = _vector_split(23)
    out = list(D.batches(split, 7, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(yb) for _, yb in out] == [7, 7, 7, 2]
    y = torch.cat([yb for _, yb in out])
    assert sorted(y.tolist()) == list(range(23)) and y.tolist() != list(range(23))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in out)
    assert torch.equal(y, torch.randperm(23, generator=torch.Generator().manual_seed(0)))
    ordered = torch.cat([yb for _, yb in D.batches(split, 10, shuffle=False)])
    assert ordered.tolist() == list(range(23))


def test_batches_reproducible_with_the_same_generator_seed():
    split = _vector_split(50)

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in D.batches(split, 8, shuffle=True, generator=g)])

    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))


def test_batches_never_augment_vectors():
    split = _vector_split(10)
    for xb, yb in D.batches(split, 4, shuffle=False, augment=True):
        assert torch.equal(xb, split.X[yb])


def _is_crop(out: torch.Tensor, img: torch.Tensor, pad: int, flip: bool, mode: str) -> bool:
    padded = torch.nn.functional.pad(img[None], (pad,) * 4, mode=mode)[0]
    h, w = img.shape[1:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            if torch.equal(out, crop) or (flip and torch.equal(out, crop.flip(-1))):
                return True
    return False


@pytest.mark.parametrize("channels,size,pad,flip,mode", [(3, 32, 4, True, "constant"),
                                                          (1, 8, 2, False, "replicate")])
def test_batches_augmentation(channels, size, pad, flip, mode):
    X = torch.randn(12, channels, size, size)
    split = D.Split(X, torch.arange(12))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return list(D.batches(split, 5, shuffle=True, generator=g, augment=True))

    out = run(0)
    assert [xb.shape for xb, _ in out] == [(5, channels, size, size)] * 2 + [(2, channels, size, size)]
    changed = 0
    for xb, yb in out:
        for x, i in zip(xb, yb):
            assert _is_crop(x, X[i], pad, flip, mode)
            changed += not torch.equal(x, X[i])
    assert changed >= 6  # augmentation does something to most images
    again = run(0)
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(out, again))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(out, run(1)))
    plain = list(D.batches(split, 5, shuffle=False, augment=False))
    assert torch.equal(torch.cat([xb for xb, _ in plain]), X)


def test_batches_flip_happens_for_rgb():
    X = torch.randn(64, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    (xb, yb), = D.batches(D.Split(X, torch.arange(64)), 64, shuffle=False, generator=g, augment=True)
    flipped = sum(not _is_crop(x, X[i], 4, False, "constant") for x, i in zip(xb, yb))
    assert 10 < flipped < 54  # about half are mirrored


# ----------------------------------------------------------------------------- describe vs load


@pytest.mark.parametrize("kind", ["digits", "correlated_blocks", "idx", "npz", "csv"])
def test_describe_equals_loaded_spec(kind, tmp_path):
    rng = np.random.default_rng(9)
    if kind == "digits":
        cfg = _cfg(name="digits", train_subset=50)
    elif kind == "correlated_blocks":
        cfg = _cfg(**{**_BLOCKS, "n_samples": 200, "num_classes": 3})
    elif kind == "idx":
        _write_idx(tmp_path / "x-images-idx3-ubyte", _images(rng, 10, 4, 6))
        _write_idx(tmp_path / "x-labels-idx1-ubyte", (np.arange(10) % 7).astype(np.uint8))
        cfg = _cfg(name="idx", path=str(tmp_path))
    elif kind == "npz":
        np.savez(tmp_path / "a.npz", X=rng.random((10, 2, 3, 3)), y=np.array(list("abcab") * 2))
        cfg = _cfg(name="arrays", path=str(tmp_path / "a.npz"))
    else:
        _write_csv(tmp_path / "a.csv", "t,f1,f2", [f"{i % 4},{i},{i * i}" for i in range(10)])
        cfg = _cfg(name="arrays", path=str(tmp_path / "a.csv"), target="t")
    assert D.describe(cfg) == D.load(cfg).spec


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """No network (as on CI): one message saying what to do, exit status 1, no traceback."""
    import torchvision.datasets

    from search.cli import main
    from trainables.data import DataUnavailable

    class Offline:
        def __init__(self, root, train, download):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    cfg = DataConfig(name="mnist", path=str(tmp_path / "cache"))
    with pytest.raises(DataUnavailable, match="could not download MNIST into .*cache.*copy the dataset"):
        D.load(cfg)
    (tmp_path / "c.yaml").write_text(f"data: {{name: mnist, path: {tmp_path / 'cache'}}}\noptim: {{epochs: 1}}\n")
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "sparsetune train: error: could not download MNIST" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
