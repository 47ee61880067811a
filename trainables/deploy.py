"""Inference from a run directory: ``sparsetune predict`` and ``sparsetune export-model``.

A run directory (``sparsetune train --out DIR``, or a trial's artifacts) holds
``compact_model.pt``: the compacted network and its ``preprocessing`` record
(:func:`trainables.data.preprocessing_record`: input shape, class labels, scale, normalisation, the image
transforms or the CSV columns). :func:`predict` reads raw examples in the training format (a
``.csv`` with the training columns, the target column optional; a ``.npz`` with ``X`` and
optionally ``y``; a folder of images), applies the recorded preprocessing with the same code as
training (:func:`trainables.data.prepare`, :func:`trainables.datasets.image_folder.image_transform`)
and writes one row per example. :func:`export_model` writes the compact network with its
normalisation folded in (:class:`Deployed`) as TorchScript or ONNX.

Files written before the record existed still work: the record is then rebuilt from the run's
``config.yaml`` by loading its data (which must be where the config says).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .compact import load_compact
from .configbase import ConfigError
from .data import prepare
from .datasets.arrays import parse_labels
from .outputs import CONFIG_FILE, MODEL_FILE

__all__ = ["InputError", "Deployed", "load_run", "read_input", "predict", "export_model", "FORMATS"]

FORMATS = ("onnx", "torchscript")


class InputError(ConfigError):
    """Bad input to ``predict`` / ``export-model`` (exit status 2 on the command line)."""

    what = "input"


def load_run(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The compact model (eval mode, CPU) and its preprocessing record."""
    run = Path(run_dir)
    path = run / MODEL_FILE
    if not run.is_dir():
        raise InputError([("RUN_DIR", "no such folder" if not run.exists() else "not a folder", str(run_dir))])
    if not path.is_file():
        raise InputError([("RUN_DIR", f"has no {MODEL_FILE} (a `sparsetune train --out` folder holds one)",
                           str(run_dir))])
    try:
        model = load_compact(path)
        record = torch.load(path, map_location="cpu", weights_only=True).get("preprocessing")
    except (ValueError, RuntimeError, OSError) as e:
        raise InputError([("RUN_DIR", f"cannot load {MODEL_FILE}: {e}", str(run_dir))]) from None
    if record is None:
        record = _rebuild_record(run)
    return model, record


def _rebuild_record(run: Path) -> dict[str, Any]:
    """The record of a model file written before it was stored: from the run's config and data."""
    from .config import TrialConfig
    from .data import load

    if not (run / CONFIG_FILE).is_file():
        raise InputError([("RUN_DIR", f"{MODEL_FILE} has no preprocessing record and there is no "
                                      f"{CONFIG_FILE} to rebuild it from", str(run))])
    warnings.warn(f"{run / MODEL_FILE} predates the preprocessing record: rebuilding it from "
                  f"{CONFIG_FILE} by loading the training data", stacklevel=3)
    cfg = TrialConfig.from_yaml(run / CONFIG_FILE)
    return load(cfg.data.model_copy(update={"in_memory": False, "num_workers": 0}), "cpu").preprocessing


# ----------------------------------------------------------------------------- reading inputs


def read_input(path: str | Path, record: dict[str, Any]) -> tuple[list[str], torch.Tensor, list[Any] | None]:
    """``(ids, model inputs [N, *input_shape], true labels or None)`` from a raw input file or folder."""
    path = Path(path)
    if path.is_dir():
        return _read_images(path, record)
    if not path.is_file():
        raise InputError([("INPUT", "no such file or folder", str(path))])
    suffix = path.suffix.lower()
    if suffix == ".csv":
        ids, X, labels = _read_csv(path, record)
    elif suffix == ".npz":
        ids, X, labels = _read_npz(path)
    else:
        raise InputError([("INPUT", f"unsupported file type {suffix or '(none)'!r}: expected a .csv, a .npz "
                                    "or a folder of images", str(path))])
    try:
        return ids, prepare(X, record), labels
    except ValueError as e:
        raise InputError([("INPUT", str(e), str(path))]) from None


def _read_csv(path: Path, record: dict[str, Any]) -> tuple[list[str], np.ndarray, list[Any] | None]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row]
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise InputError([("INPUT", f"not a readable .csv file ({e})", str(path))]) from None
    if len(rows) < 2:
        raise InputError([("INPUT", "a .csv file needs a header row and at least one data row", str(path))])
    header = [h.strip() for h in rows[0]]
    columns, target = record.get("columns"), record.get("target")
    if columns is None:  # trained on arrays without column names: every column is a feature
        columns, target = header, None
    missing = [c for c in columns if c not in header]
    unexpected = [h for h in header if h not in columns and h != target]
    if missing or unexpected:
        raise InputError([("INPUT", "columns do not match the training data: "
                                    + "; ".join(f"{what} {cols}" for what, cols in
                                                (("missing", missing), ("unexpected", unexpected)) if cols)
                                    + f" (training columns: {columns}, target {target!r} optional)", str(path))])
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError([("INPUT", f"line {line} has {len(row)} fields, the header {len(header)}",
                               str(path))])
    index = [header.index(c) for c in columns]
    try:
        X = np.array([[row[i] for i in index] for row in rows[1:]], dtype=np.float64)
    except ValueError as e:
        raise InputError([("INPUT", f"non-numeric feature value ({e})", str(path))]) from None
    labels = parse_labels([row[header.index(target)].strip() for row in rows[1:]]).tolist() \
        if target in header else None
    return [str(i) for i in range(len(X))], X, labels


def _read_npz(path: Path) -> tuple[list[str], np.ndarray, list[Any] | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z:
                raise InputError([("INPUT", f"a .npz needs array X (and optionally y), found {sorted(z.files)}",
                                   str(path))])
            X = z["X"]
            labels = z["y"].tolist() if "y" in z else None
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError([("INPUT", f"not a readable .npz file ({e})", str(path))]) from None
    return [str(i) for i in range(len(X))], X, labels


def _read_images(folder: Path, record: dict[str, Any]) -> tuple[list[str], torch.Tensor, list[Any] | None]:
    """Every image under ``folder`` (sorted by path; ids are relative paths). An image whose parent
    folder is named after a class is labelled with it, if every image is."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

    from .datasets.image_folder import image_transform

    if record.get("image") is None:
        raise InputError([("INPUT", f"a folder of images, but the model was trained on {record.get('source')!r} "
                                    "data: give a .csv or .npz file", str(folder))])
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise InputError([("INPUT", "no images (.png, .jpg, ...) in this folder", str(folder))])
    transform = image_transform(record["image"], record.get("mean"), record.get("std"))
    xs = []
    for p in files:
        try:
            xs.append(transform(default_loader(str(p))))
        except OSError as e:
            raise InputError([("INPUT", f"cannot read image {p}: {e}", str(folder))]) from None
    X = torch.stack(xs)
    if tuple(X.shape[1:]) != tuple(record["input_shape"]):
        raise InputError([("INPUT", f"images become {tuple(X.shape[1:])} after the recorded transforms, the "
                                    f"model takes {tuple(record['input_shape'])}", str(folder))])
    names = {str(c) for c in record["classes"]}
    labelled = all(p.parent != folder and p.parent.name in names for p in files)
    labels = [p.parent.name for p in files] if labelled else None
    return [p.relative_to(folder).as_posix() for p in files], X, labels


# ----------------------------------------------------------------------------- predict


@torch.no_grad()
def predict(run_dir: str | Path, input_path: str | Path, out: str | Path, *, batch_size: int = 1024
            ) -> dict[str, Any]:
    """Write ``out`` (CSV: ``id``, ``label``, ``p_<class>`` per class) for every example of
    ``input_path``; returns ``{"n": ..., "accuracy": ... or None}`` (accuracy when the input has
    labels)."""
    if batch_size < 1:
        raise InputError([("--batch-size", "must be >= 1", batch_size)])
    model, record = load_run(run_dir)
    ids, X, labels = read_input(input_path, record)
    classes = record["classes"]
    logits = torch.cat([model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])
    probs = torch.softmax(logits, dim=1)
    predicted = [classes[i] for i in logits.argmax(1).tolist()]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", *(f"p_{c}" for c in classes)])
        for i, label, p in zip(ids, predicted, probs.tolist()):
            w.writerow([i, label, *(f"{v:.6g}" for v in p)])
    accuracy = None
    if labels is not None and len(labels):
        accuracy = sum(_same(a, b) for a, b in zip(predicted, labels)) / len(labels)
    return {"n": len(ids), "accuracy": accuracy, "out": str(out)}


def _same(predicted: Any, true: Any) -> bool:
    return predicted == true or str(predicted) == str(true)


# ----------------------------------------------------------------------------- export


class Deployed(nn.Module):
    """The compact network on raw inputs: ``x / scale``, ``(x - mean) / std``, then the network.

    Raw inputs are what the training file held (``[N, *input_shape]``; for an image folder: the
    pixel values 0..255 after the recorded grayscale / resize / center_crop), so the exported file
    needs nothing beside it but the class labels (stored in its metadata)."""

    def __init__(self, model: nn.Module, record: dict[str, Any]):
        super().__init__()
        self.model = model
        ndim = 1 + len(record["input_shape"])
        self.scale = float(record["scale"])
        view = (1, -1) + (1,) * (ndim - 2)
        mean, std = record.get("mean"), record.get("std")
        self.normalise = mean is not None
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0]).reshape(view))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0]).reshape(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            x = x / self.scale
        if self.normalise:
            x = (x - self.mean) / self.std
        return self.model(x)


def metadata(record: dict[str, Any]) -> dict[str, str]:
    """What an exported file records beside its graph (strings: ONNX metadata, TorchScript extra files)."""
    return {"sparsetune.classes": json.dumps(record["classes"]),
            "sparsetune.input_shape": json.dumps(record["input_shape"]),
            "sparsetune.input": "raw values as in the training data, [batch, *input_shape]; "
                                "normalisation is in the graph; outputs are logits",
            "sparsetune.image": json.dumps(record.get("image")),
            "sparsetune.preprocessing": json.dumps(record)}


def export_model(run_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the run's compact model, normalisation folded in, as ``fmt`` (``onnx`` or
    ``torchscript``) to ``out``. The input is ``[batch, *input_shape]`` of raw values (any batch
    size); the output the logits, in the order of the recorded classes."""
    if fmt not in FORMATS:
        raise InputError([("--format", f"unknown format, expected one of {list(FORMATS)}", fmt)])
    model, record = load_run(run_dir)
    wrapped = Deployed(model, record).eval()
    example = torch.zeros((2, *record["input_shape"]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():  # torch.jit is deprecated since torch 2.10
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(wrapped, example)
            torch.jit.save(traced, str(out), _extra_files={k: v.encode() for k, v in metadata(record).items()})
    else:
        _export_onnx(wrapped, example, out, record)
    return out


def _export_onnx(wrapped: nn.Module, example: torch.Tensor, out: Path, record: dict[str, Any]) -> None:
    """``torch.onnx.export`` with the torch.export-based (dynamo) exporter, the default since torch
    2.9 (the TorchScript-based one is deprecated); it needs ``onnxscript`` (the ``onnx`` extra)."""
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise InputError([("--format", f"ONNX export needs the onnx extra: pip install 'sparsetune[onnx]' "
                                       f"({e})", "onnx")]) from None
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=({0: batch},),
                                    verbose=False, optimize=True)
    program.save(str(out))
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, metadata(record))
    onnx.save(proto, str(out))
