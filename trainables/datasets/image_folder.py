"""``image_folder``: a folder of images, one sub-folder per class (torchvision's ``ImageFolder``).

Either ``path/train/<class>/*.png`` with optional ``path/val/<class>/...`` and
``path/test/<class>/...`` (the official splits; what is missing is split off ``train`` by
``val_fraction`` / ``test_fraction`` / ``split_seed``), or ``path/<class>/*.png`` split like any
other source. Class names are the ``train`` sub-folders, sorted; the ``val`` and ``test`` folders
may lack a class but not add one.

Named transforms, always in this order: ``grayscale``, ``resize``, ``center_crop``, then the
pixels as floats in [0, 1] and ``normalize`` (given, or computed once on the training split and
recorded). These are the evaluation transforms, stored with the compact model. ``random_crop``
(with padding) and ``hflip`` augment training batches only; they run on the device with the
trial's generator (``trainables.data.batches``), so the in-memory and streamed paths draw the same
augmentation.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.utils.data as tud
from pydantic import Field, model_validator

from ..configbase import ConfigError, FieldError, StrictModel
from ..data import (
    Augmentation,
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
from ..families import DATASETS, AbsolutePath, DataConfig

__all__ = ["ImageFolderConfig", "RandomCrop", "image_transform"]


class RandomCrop(StrictModel):
    """A random crop of the image's own size out of the image padded on every side."""

    padding: int = Field(4, description="pixels of zero padding (the channel mean after normalisation)")

    @model_validator(mode="after")
    def _check(self) -> RandomCrop:
        if self.padding < 0:
            raise FieldError("padding", "`padding >= 0` must hold", self.padding)
        return self


Size = int | list[int]


@DATASETS.register
class ImageFolderConfig(DataConfig):
    """A folder of images, one sub-folder per class (optionally under train/, val/, test/)."""

    name: Literal["image_folder"] = "image_folder"
    path: AbsolutePath = Field(None, description="the folder: class sub-folders, or train/ (val/, test/) "
                                                 "holding them (required)")
    grayscale: bool = Field(False, description="convert to one channel (otherwise every image is RGB)")
    resize: Size | None = Field(None, description="resize: an int (the shorter side, aspect kept) or "
                                                  "[height, width]")
    center_crop: Size | None = Field(None, description="crop the centre: an int (square) or [height, width]")
    normalize: Literal["auto", "none"] | NormalizeStats = Field(
        "auto", description="`auto`: per-channel mean/std of the training split, computed once and "
                            "recorded; `none`; or `{mean: [...], std: [...]}`")
    random_crop: RandomCrop | None = Field(None, description="training batches: `{padding: 4}` crops at a "
                                                             "random offset of the padded image")
    hflip: bool = Field(False, description="training batches: a random horizontal flip")

    @model_validator(mode="after")
    def _check_image_folder(self) -> ImageFolderConfig:
        if self.path is None:
            raise FieldError("path", "dataset 'image_folder' needs `path` (a folder of class folders)")
        for key in ("resize", "center_crop"):
            value = getattr(self, key)
            sizes = [value] if isinstance(value, int) else value
            if sizes is not None and (len(sizes) not in (1, 2) or any(s < 1 for s in sizes)):
                raise FieldError(key, "an int >= 1 or [height, width] of ints >= 1", value)
        if isinstance(self.normalize, NormalizeStats) and len(self.normalize.mean) != self.channels:
            raise FieldError("normalize", f"needs {self.channels} mean/std value(s) "
                                           f"({'grayscale' if self.grayscale else 'RGB'} images)",
                              self.normalize.model_dump())
        return self

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def image_settings(self) -> dict[str, Any]:
        """The evaluation transforms, as recorded in the compact model file."""
        return {"grayscale": self.grayscale, "resize": self.resize, "center_crop": self.center_crop}

    def describe(self) -> DataSpec:
        return _describe(self)

    def load(self, device: torch.device | str = "cpu") -> Dataset:
        return _load(self, device)


# ----------------------------------------------------------------------------- transforms


class _Normalise:
    """``(x - mean) / std`` per channel, with :func:`trainables.data.standardised`."""

    def __init__(self, mean: list[float], std: list[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return standardised(x, self.mean, self.std)


def image_transform(image: dict[str, Any], mean: list[float] | None = None,
                    std: list[float] | None = None) -> Any:
    """PIL image -> float tensor ``[C, H, W]``: ``image``'s grayscale / resize / center_crop (the
    recorded settings), pixels / 255, then ``(x - mean) / std`` if given. Training and
    ``sparsetune predict`` both build their transform here."""
    import torchvision.transforms as T

    steps: list[Any] = [T.Grayscale(1)] if image.get("grayscale") else []
    if image.get("resize") is not None:
        steps.append(T.Resize(image["resize"]))
    if image.get("center_crop") is not None:
        steps.append(T.CenterCrop(image["center_crop"]))
    steps.append(T.ToTensor())
    if mean is not None:
        steps.append(_Normalise(mean, std))
    return T.Compose(steps)


@dataclass
class _Files:
    """One folder's images as torchvision's ``ImageFolder`` finds them: ``samples`` (path, class
    index) in sorted order, and the class names."""

    samples: list[tuple[str, int]]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.samples)


class _Items(tud.Dataset):
    """``(transform(image), label)`` for the examples ``indices`` of a folder."""

    def __init__(self, files: _Files, indices: Any, transform: Any):
        self.files, self.indices, self.transform = files, [int(i) for i in indices], transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader  # RGB, as ImageFolder reads

        path, label = self.files.samples[self.indices[i]]
        return self.transform(default_loader(path)), label


# ----------------------------------------------------------------------------- the folders


def _scan(folder: Path, where: str, classes: list[str] | None = None) -> _Files:
    """``ImageFolder``'s scan (``find_classes`` + ``make_dataset``); with ``classes`` (train's),
    the class indices are train's and a missing class folder is allowed."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    given = classes is not None
    try:
        if classes is None:
            classes, class_to_idx = find_classes(str(folder))
        else:
            extra = sorted({p.name for p in folder.iterdir() if p.is_dir()} - set(classes))
            if extra:
                raise ConfigError([("data.path", f"{folder.name}/ has class folders that train/ lacks: "
                                                 f"{extra}", where)])
            class_to_idx = {c: i for i, c in enumerate(classes)}
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS,
                               allow_empty=given)
    except (FileNotFoundError, ValueError) as e:  # no class folders, or no image in them
        raise ConfigError([("data.path", f"not an image folder: {e} (expected one sub-folder per class "
                                         f"holding .png/.jpg/... images)", where)]) from None
    if not samples:
        raise ConfigError([("data.path", "no images in its class folders", where)])
    return _Files(samples, list(classes))


def _folders(cfg: ImageFolderConfig) -> dict[str, _Files]:
    """split -> its files ("train" always; "val" / "test" when the folder has them)."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise ConfigError([("data.path", "no such folder" if not root.exists() else "not a folder", cfg.path)])
    if not (root / "train").is_dir():
        return {"train": _scan(root, cfg.path)}
    train = _scan(root / "train", str(root / "train"))
    out = {"train": train}
    for split in ("val", "test"):
        if (root / split).is_dir():
            out[split] = _scan(root / split, str(root / split), train.classes)
    return out


def _input_shape(cfg: ImageFolderConfig, folders: dict[str, _Files]) -> tuple[int, int, int]:
    """(C, H, W) after the evaluation transforms: read off one image, every image decoded once
    (:func:`_image_sizes`), and, unless ``center_crop`` or ``resize: [h, w]`` fixes the size,
    every image checked for the same size."""
    sizes = _image_sizes(cfg, [path for folder in folders.values() for path, _ in folder.samples])
    first_path = folders["train"].samples[0][0]
    try:
        from torchvision.datasets.folder import default_loader

        x = image_transform(cfg.image_settings())(default_loader(first_path))
    except (OSError, ValueError) as e:
        raise ConfigError([("data.path", f"cannot read image {first_path}: {e}", cfg.path)]) from None
    fixed = cfg.center_crop is not None or isinstance(cfg.resize, list) and len(cfg.resize) == 2
    if not fixed:
        first: dict[tuple[int, int], str] = {}
        for path, size in sizes.items():
            first.setdefault(size, path)
            if len(first) > 1:
                (a, pa), (b, pb) = first.items()
                raise ConfigError([("data.path", f"images differ in size ({a[0]}x{a[1]} {pa}, "
                                                 f"{b[0]}x{b[1]} {pb}): give center_crop or resize: "
                                                 "[height, width]", cfg.path)])
    return tuple(int(d) for d in x.shape)  # type: ignore[return-value]


def _check_cache(root: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sparsetune" / "image_checks" / (hashlib.sha1(root.encode()).hexdigest()[:16] + ".json")


def _image_sizes(cfg: ImageFolderConfig, paths: list[str]) -> dict[str, tuple[int, int]]:
    """path -> (width, height) of every image, each decoded in full once, so that a truncated or
    corrupt file is named before any training starts rather than failing a trial mid-epoch. The
    files already checked are remembered per folder (``~/.cache/sparsetune/image_checks``) by
    modification time and size: a trial, or the next search, decodes only what changed."""
    from PIL import Image

    cache_file = _check_cache(str(cfg.path))
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    sizes, checked, changed = {}, {}, False
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            raise ConfigError([("data.path", f"cannot read image {path}: {e}", cfg.path)]) from None
        entry = known.get(path)
        if not (isinstance(entry, list) and entry[:2] == [st.st_mtime_ns, st.st_size]):
            try:
                with Image.open(path) as im:
                    im.load()  # decodes the whole file: a truncated one raises here
                    entry = [st.st_mtime_ns, st.st_size, *im.size]
            except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad files
                raise ConfigError([("data.path", f"cannot read image {path}: {e}", cfg.path)]) from None
            changed = True
        checked[path] = entry
        sizes[path] = (int(entry[2]), int(entry[3]))
    if changed:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(checked))
            os.replace(tmp, cache_file)
        except OSError:  # a read-only home: checked again next time
            pass
    return sizes


def _describe(cfg: ImageFolderConfig) -> DataSpec:
    folders = _folders(cfg)
    check_split(len(folders["train"]), cfg, official_test="test" in folders, official_val="val" in folders)
    return DataSpec(_input_shape(cfg, folders), len(folders["train"].classes))


def _load(cfg: ImageFolderConfig, device: torch.device | str) -> Dataset:
    folders = _folders(cfg)
    spec = DataSpec(_input_shape(cfg, folders), len(folders["train"].classes))
    train_i, val_i, test_i = split_indices(len(folders["train"]), cfg, official_test="test" in folders,
                                            official_val="val" in folders)
    parts = [(folders["train"], train_i),
             (folders["val"], range(len(folders["val"]))) if "val" in folders else (folders["train"], val_i),
             (folders["test"], range(len(folders["test"]))) if "test" in folders else (folders["train"], test_i)]
    mean = std = None
    if isinstance(cfg.normalize, NormalizeStats):
        mean, std = cfg.normalize.mean, cfg.normalize.std
    elif cfg.normalize == "auto":  # one pass over the training split, in file order
        raw = _Items(*parts[0], image_transform(cfg.image_settings()))
        options = loader_options(cfg, "cpu")
        m, s = channel_moments(xb for xb, _ in batches(StreamSplit(raw, "cpu", LoaderOptions(options.num_workers)),
                                                256, shuffle=False))
        mean, std = m.tolist(), s.tolist()
    transform = image_transform(cfg.image_settings(), mean, std)
    datasets = [_Items(folder, idx, transform) for folder, idx in parts]
    augment: bool | Augmentation = False
    if cfg.random_crop is not None or cfg.hflip:
        augment = Augmentation(cfg.random_crop.padding if cfg.random_crop else 0, cfg.hflip)
    classes = folders["train"].classes
    pre = preprocessing_record(cfg, spec, classes, scale=255.0, mean=mean, std=std, image=cfg.image_settings())
    info = {"classes": list(classes)} | ({"mean": mean, "std": std} if mean is not None else {})
    return Dataset(*place_datasets(datasets, cfg, device, spec), spec=spec, augment=augment, info=info,
                   preprocessing=pre)
