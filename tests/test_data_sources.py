"""The image_folder and python dataset sources, and streamed (DataLoader) vs in-memory batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables import data as D
from trainables.config import ConfigError, DataConfig, TrialConfig
from trainables.train import fit
from user_data import CLASSES, FACTORY, write_images

def _cfg(**kw) -> DataConfig:
    return TrialConfig.from_dict({"data": kw}).data  # ConfigError naming data.<field> when bad


def _tensor_of(ds: D.Dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    s = getattr(ds, split)
    if isinstance(s, D.Split):
        return s.X, s.y
    xs, ys = zip(*D.batches(s, 1000, shuffle=False)) if len(s) else ((), ())
    return (torch.cat(xs), torch.cat(ys)) if xs else (torch.empty(0), torch.empty(0, dtype=torch.int64))


# ----------------------------------------------------------------------------- image_folder


def test_image_folder_flat_layout_is_split_and_normalised_with_train_statistics(tmp_path):
    write_images(tmp_path, 10)
    cfg = _cfg(name="image_folder", path=str(tmp_path), val_fraction=0.2, test_fraction=0.2)
    ds = D.load(cfg)
    assert D.describe(cfg) == ds.spec == D.DataSpec((3, 8, 8), 3)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (19, 5, 6)  # 30: 6 test, 24 -> 5 val
    assert ds.preprocessing["classes"] == list(CLASSES) and ds.info["classes"] == list(CLASSES)
    assert ds.preprocessing["scale"] == 255.0
    assert ds.preprocessing["image"] == {"grayscale": False, "resize": None, "center_crop": None}
    # the recorded statistics are the training split's, per channel, of the pixels / 255
    train_i, _, test_i = D.split_indices(30, cfg, official_test=False)
    files = sorted(tmp_path.rglob("*.png"), key=lambda p: (p.parent.name, p.name))
    pixels = np.stack([np.asarray(Image.open(files[i]), dtype=np.float64) / 255 for i in train_i])
    np.testing.assert_allclose(ds.preprocessing["mean"], pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ds.preprocessing["std"], pixels.std(axis=(0, 1, 2)), rtol=1e-5)
    X, y = _tensor_of(ds, "train")
    np.testing.assert_allclose(X.double().mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    # the test split's images, in file order, with their labels from the folder names
    Xt, yt = _tensor_of(ds, "test")
    assert yt.tolist() == [CLASSES.index(files[i].parent.name) for i in test_i]
    first = np.asarray(Image.open(files[test_i[0]]), dtype=np.float32).transpose(2, 0, 1) / 255
    mean = np.asarray(ds.preprocessing["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(ds.preprocessing["std"], dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(Xt[0].numpy(), (first - mean) / std, rtol=1e-5, atol=1e-5)


def test_image_folder_official_splits_and_train_class_indices(tmp_path):
    write_images(tmp_path / "train", 6)
    write_images(tmp_path / "val", 2, classes=("left", "top"), seed=1)  # a class may be missing
    write_images(tmp_path / "test", 3, seed=2)
    cfg = _cfg(name="image_folder", path=str(tmp_path), val_fraction=0.5, test_fraction=0.5)
    ds = D.load(cfg)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 4, 9)  # the fractions are not used
    _, yv = _tensor_of(ds, "val")
    assert yv.tolist() == [0, 0, 2, 2]  # train's indices: top is 2 although val has 2 classes
    assert D.describe(cfg) == ds.spec
    # a test folder with a class train lacks is an error naming it
    write_images(tmp_path / "test", 1, classes=("left",), seed=3)
    (tmp_path / "test" / "bottom").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "bottom" / "x.png")
    with pytest.raises(ConfigError, match=r"data\.path: test/ has class folders that train/ lacks: \['bottom'\]"):
        D.describe(cfg)


def test_image_folder_transforms(tmp_path):
    write_images(tmp_path, 4, size=(12, 16))
    cfg = _cfg(name="image_folder", path=str(tmp_path), grayscale=True, resize=[10, 14], center_crop=6,
               normalize={"mean": [0.5], "std": [0.25]}, in_memory=True)
    ds = D.load(cfg)
    assert ds.spec.input_shape == (1, 6, 6) == D.describe(cfg).input_shape
    assert ds.preprocessing["mean"] == [0.5] and ds.preprocessing["std"] == [0.25]
    import torchvision.transforms as T

    path = sorted(tmp_path.rglob("*.png"), key=lambda p: (p.parent.name, p.name))[0]
    expected = T.Compose([T.Grayscale(1), T.Resize([10, 14]), T.CenterCrop(6), T.ToTensor(),
                          T.Normalize([0.5], [0.25])])(Image.open(path).convert("RGB"))
    X, y = _tensor_of(ds, "train")
    train_i, val_i, test_i = D.split_indices(12, cfg, official_test=False)
    where = {int(i): k for k, i in enumerate(train_i)}
    if 0 in where:
        torch.testing.assert_close(X[where[0]], expected)
    else:  # the first file went to val or test
        Xo, _ = _tensor_of(ds, "val" if 0 in val_i else "test")
        torch.testing.assert_close(Xo[0], expected)
    # normalize: none keeps pixels / 255
    raw = D.load(_cfg(name="image_folder", path=str(tmp_path), center_crop=[4, 4], normalize="none"))
    assert raw.preprocessing["mean"] is None
    assert 0 <= float(_tensor_of(raw, "train")[0].min()) and float(_tensor_of(raw, "train")[0].max()) <= 1


def test_image_folder_problems_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path: no such folder"):
        D.describe(_cfg(name="image_folder", path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data\.path: not an image folder"):
        D.describe(_cfg(name="image_folder", path=str(tmp_path / "empty")))
    write_images(tmp_path / "mixed", 2)
    Image.new("RGB", (9, 8)).save(tmp_path / "mixed" / "left" / "odd.png")
    with pytest.raises(ConfigError, match=r"data\.path: images differ in size .*9x8.*give center_crop"):
        D.describe(_cfg(name="image_folder", path=str(tmp_path / "mixed")))
    assert D.describe(_cfg(name="image_folder", path=str(tmp_path / "mixed"), center_crop=6)).input_shape == (3, 6, 6)
    with pytest.raises(ConfigError, match=r"data\.resize: an int >= 1 or \[height, width\]"):
        _cfg(name="image_folder", path=str(tmp_path), resize=[0, 3])
    with pytest.raises(ConfigError, match=r"data\.normalize: needs 3 mean/std value"):
        _cfg(name="image_folder", path=str(tmp_path), normalize={"mean": [0.5], "std": [0.2]})
    with pytest.raises(ConfigError, match=r"data\.normalize\.std: every value must be finite and > 0"):
        _cfg(name="image_folder", path=str(tmp_path), grayscale=True, normalize={"mean": [0.5], "std": [0.0]})
    with pytest.raises(ConfigError, match=r"data\.random_crop\.padding: `padding >= 0`"):
        _cfg(name="image_folder", path=str(tmp_path), random_crop={"padding": -1})


# ----------------------------------------------------------------------------- python


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "mydata.py"
    path.write_text(FACTORY)
    return path


def test_python_source_with_official_test_split(factory_file):
    cfg = _cfg(name="python", factory=f"{factory_file}:splits", val_fraction=0.2)
    assert D.describe(cfg) == D.DataSpec((4,), 3)
    ds = D.load(cfg)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (48, 12, 30)
    assert ds.preprocessing["classes"] == ["a", "b", "c"] and ds.preprocessing["mean"] is None
    X, y = _tensor_of(ds, "test")
    assert y.tolist() == [i % 3 for i in range(30)]
    assert (X.argmax(1) == y).float().mean() > 0.8  # the examples as the Dataset gave them


def test_python_source_one_dataset_is_split_and_normalised(factory_file, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_file.parent))
    cfg = _cfg(name="python", factory="mydata:one", kwargs={"n": 50}, normalize="auto", num_classes=3)
    ds = D.load(cfg)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (36, 4, 10)
    X, _ = _tensor_of(ds, "train")
    np.testing.assert_allclose(X.double().mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(X.double().std(0, correction=0).numpy(), 1, atol=1e-4)
    assert len(ds.preprocessing["mean"]) == 4


def test_python_source_problems_name_the_factory(factory_file, tmp_path):
    def err(factory, **kw):
        with pytest.raises(ConfigError) as e:
            D.describe(_cfg(name="python", factory=factory, **kw))
        return str(e.value)

    f = str(factory_file)
    assert "data.factory: train[0] has label 5, outside 0..2" in err(f"{f}:splits", kwargs={"label_offset": 5})
    assert "data.factory: val[0] has shape (5,), train[0] (4,)" in err(f"{f}:wrong_shape")
    assert "data.factory: returned a mapping with keys ['extra', 'train']" in err(f"{f}:not_a_dataset")
    assert "data.factory: calling it raised RuntimeError: no data here" in err(f"{f}:fails")
    assert "data.factory: is not callable (a int)" in err(f"{f}:NOT_CALLABLE")
    assert "has no attribute 'nope'" in err(f"{f}:nope")
    assert "no module named 'no_such_module_xyz'" in err("no_such_module_xyz:make")
    assert "no such file" in err(f"{tmp_path / 'missing.py'}:make")
    with pytest.raises(ConfigError, match=r"data\.factory: expected 'module:attribute'"):
        _cfg(name="python", factory="just_a_module")
    with pytest.raises(ConfigError, match=r"data\.factory: dataset 'python' needs `factory`"):
        _cfg(name="python")
    # relative file paths are made absolute when the config is built (Ray trials move)
    assert Path(_cfg(name="python", factory="sub/mydata.py:one").factory.split(":")[0]).is_absolute()


def test_python_source_needs_num_classes_without_a_classes_list(tmp_path):
    (tmp_path / "plain.py").write_text(
        "import torch\ndef make():\n    return torch.utils.data.TensorDataset(torch.randn(8, 2), torch.arange(8) % 2)\n")
    with pytest.raises(ConfigError, match=r"data\.num_classes: required"):
        D.describe(_cfg(name="python", factory=f"{tmp_path / 'plain.py'}:make"))
    assert D.describe(_cfg(name="python", factory=f"{tmp_path / 'plain.py'}:make", num_classes=2)).num_classes == 2


# ----------------------------------------------------------------------------- streamed vs in memory


def test_loader_fields_are_validated():
    with pytest.raises(ConfigError, match=r"data\.num_workers: `num_workers >= 0` must hold \(got -1\)"):
        _cfg(num_workers=-1)
    with pytest.raises(ConfigError, match=r"data\.prefetch_factor: needs worker processes"):
        _cfg(num_workers=0, prefetch_factor=2)
    with pytest.raises(ConfigError, match=r"data\.in_memory"):
        _cfg(in_memory="sometimes")


def test_in_memory_auto_follows_the_size_threshold(monkeypatch):
    assert isinstance(D.load(_cfg(train_subset=20)).train, D.Split)
    monkeypatch.setattr(D, "IN_MEMORY_BYTES", 1000)
    streamed = D.load(_cfg(train_subset=20, num_workers=0))
    assert isinstance(streamed.train, D.StreamSplit) and isinstance(streamed.test, D.StreamSplit)
    assert isinstance(D.load(_cfg(train_subset=20, in_memory=True)).train, D.Split)


@pytest.mark.parametrize("augment", [False, True, D.Augmentation(1, True)])
def test_streamed_batches_equal_in_memory_batches(augment):
    X = torch.randn(23, 3, 5, 5)
    y = torch.arange(23)
    memory = D.Split(X, y)
    stream = D.StreamSplit(torch.utils.data.TensorDataset(X, y), "cpu", D.LoaderOptions())
    for epoch in range(2):  # the same sampler is reused: each pass draws its own order
        a = list(D.batches(memory, 7, shuffle=True, generator=torch.Generator().manual_seed(epoch), augment=augment))
        b = list(D.batches(stream, 7, shuffle=True, generator=torch.Generator().manual_seed(epoch), augment=augment))
        assert len(a) == len(b) == 4
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ordered = torch.cat([yb for _, yb in D.batches(stream, 10, shuffle=False)])
    assert ordered.tolist() == list(range(23))


def test_training_streamed_equals_in_memory(tmp_path):
    """One seed, the same batches and augmentation: identical training, with and without workers."""
    write_images(tmp_path / "imgs", 12)
    base = {"seed": 3, "model": {"name": "mlp", "hidden": [16]}, "optim": {"epochs": 2, "batch_size": 8},
            "regularizer": {"name": "group_lasso", "lam": 1e-3}, "device": "cpu"}
    data = {"name": "image_folder", "path": str(tmp_path / "imgs"), "random_crop": {"padding": 1}, "hflip": True}
    runs = []
    for extra in ({"in_memory": True}, {"in_memory": False, "num_workers": 0},
                  {"in_memory": False, "num_workers": 2, "prefetch_factor": 2}):
        cfg = TrialConfig.from_dict({**base, "data": {**data, **extra}})
        runs.append(fit(cfg))
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "weights_nonzero")
    for r in runs[1:]:
        assert [[h[k] for k in keys] for h in r.history] == [[h[k] for k in keys] for h in runs[0].history]
        assert r.metrics["test_accuracy"] == runs[0].metrics["test_accuracy"]
        for (name, p), q in zip(runs[0].model.state_dict().items(), r.model.state_dict().values()):
            assert torch.equal(p, q), name
    assert runs[0].preprocessing == runs[1].preprocessing


def test_every_image_is_decoded_once_and_a_changed_file_again(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_images(tmp_path / "im", 3)
    cfg = _cfg(name="image_folder", path=str(tmp_path / "im"), val_fraction=0.2, test_fraction=0.2)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: (opened.append(fp), real_open(fp, *a, **k))[1])
    by_name = lambda: sorted({str(fp) for fp in opened if isinstance(fp, (str, Path))})  # noqa: E731
    D.describe(cfg)
    files = sorted(str(p) for p in (tmp_path / "im").rglob("*.png"))
    assert by_name() == files  # each image checked by its path
    opened.clear()
    D.describe(cfg)
    assert by_name() == []  # remembered: none checked again (torchvision's loader reads one sample through a file object)
    changed = Path(files[4])
    changed.write_bytes(changed.read_bytes()[:-30])
    with pytest.raises(ConfigError, match=f"data.path: cannot read image {changed}: image file is truncated"):
        D.describe(cfg)
