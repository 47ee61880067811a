"""The deployable run directory: the preprocessing record, `sparsetune predict`, `export-model`."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from search.cli import main
from trainables import TrialConfig, fit, save_run
from trainables.compact import load_compact
from trainables.data import split_indices, prepare
from trainables.deploy import load_run

from user_data import CLASSES, FACTORY, write_images

NAMES = ["cat", "dog", "emu", "fox", "gnu", "hen", "ibx", "jay", "kob", "lyn"]
TRAIN = {"optim": {"epochs": 3, "batch_size": 32}, "regularizer": {"name": "group_lasso", "lam": 1e-3},
         "device": "cpu", "seed": 1}


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A run on a CSV of 8x8 digits (string labels, the target column in the middle)."""
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("csv_run")
    digits = load_digits()
    X, y = digits.data[:500], [NAMES[t] for t in digits.target[:500]]
    header = [f"px{i}" for i in range(10)] + ["label"] + [f"px{i}" for i in range(10, 64)]
    rows = [[*map(repr, row[:10]), lab, *map(repr, row[10:])] for row, lab in zip(X.tolist(), y)]
    with open(tmp / "digits.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    cfg = TrialConfig.from_dict({**TRAIN, "data": {"name": "arrays", "path": str(tmp / "digits.csv"),
                                                   "target": "label"}})
    result = fit(cfg)
    save_run(result, tmp / "run")
    return tmp, cfg, result, header, rows


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A run on a PNG folder with an official test/ folder."""
    tmp = tmp_path_factory.mktemp("image_run")
    write_images(tmp / "imgs" / "train", 12)
    write_images(tmp / "imgs" / "test", 5, seed=7)
    cfg = TrialConfig.from_dict({**TRAIN, "model": {"name": "mlp", "hidden": [24]},
                                 "data": {"name": "image_folder", "path": str(tmp / "imgs"),
                                          "center_crop": 6, "hflip": True}})
    result = fit(cfg)
    save_run(result, tmp / "run")
    return tmp, cfg, result


def _predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_model_file_records_the_preprocessing(csv_run):
    tmp, cfg, result, header, _ = csv_run
    payload = torch.load(tmp / "run" / "compact_model.pt", weights_only=True)  # plain types only
    record = payload["preprocessing"]
    assert record["format"] == "sparsetune.preprocessing/1" and record["source"] == "arrays"
    assert record["classes"] == NAMES and record["input_shape"] == [64]
    assert record["columns"] == [h for h in header if h != "label"] and record["target"] == "label"
    assert len(record["mean"]) == len(record["std"]) == 64 and record["scale"] == 1.0
    load_compact(tmp / "run" / "compact_model.pt")  # still loads as before


def test_predict_on_the_raw_test_rows_reproduces_test_accuracy(csv_run, capsys):
    tmp, cfg, result, header, rows = csv_run
    _, _, test_i = split_indices(len(rows), cfg.data, official_test=False)
    # the raw test rows, columns in another order (predict matches them by name)
    order = [header.index("label"), *reversed([i for i, h in enumerate(header) if h != "label"])]
    with open(tmp / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([[header[j] for j in order], *([rows[i][j] for j in order] for i in test_i)])
    assert main(["predict", str(tmp / "run"), str(tmp / "test.csv"), "--out", str(tmp / "pred.csv")]) == 0
    assert f"wrote {len(test_i)} predictions" in capsys.readouterr().err
    out = _predictions(tmp / "pred.csv")
    assert list(out[0]) == ["id", "label", *(f"p_{c}" for c in NAMES)]
    assert [r["id"] for r in out] == [str(i) for i in range(len(test_i))]
    correct = sum(r["label"] == rows[i][header.index("label")] for r, i in zip(out, test_i))
    assert correct / len(test_i) == result.metrics["test_accuracy"]
    assert all(abs(sum(float(r[f"p_{c}"]) for c in NAMES) - 1) < 1e-4 for r in out)
    # without the target column: the same predictions
    feature_cols = [j for j in range(len(header)) if header[j] != "label"]
    with open(tmp / "unlabelled.csv", "w", newline="") as f:
        csv.writer(f).writerows([[header[j] for j in feature_cols], *([rows[i][j] for j in feature_cols]
                                                                       for i in test_i)])
    assert main(["predict", str(tmp / "run"), str(tmp / "unlabelled.csv"), "--out", str(tmp / "p2.csv")]) == 0
    assert [r["label"] for r in _predictions(tmp / "p2.csv")] == [r["label"] for r in out]


def test_predict_on_an_image_folder_reproduces_test_accuracy(image_run, capsys):
    tmp, cfg, result = image_run
    assert main(["predict", str(tmp / "run"), str(tmp / "imgs" / "test"), "--out", str(tmp / "pred.csv")]) == 0
    err = capsys.readouterr().err
    out = _predictions(tmp / "pred.csv")
    assert len(out) == 15 and out[0]["id"] == "left/0_000.png"
    accuracy = sum(r["label"] == r["id"].split("/")[0] for r in out) / len(out)
    assert accuracy == result.metrics["test_accuracy"]
    assert f"accuracy {accuracy:.4f}" in err


def test_predict_bad_input_is_one_line_exit_2(csv_run, image_run, capsys, tmp_path):
    tmp, *_ = csv_run
    (tmp_path / "wrong.csv").write_text("px0,px1,colour\n1,2,red\n")
    cases = [
        (["predict", str(tmp_path / "no_run"), str(tmp_path / "wrong.csv")], "RUN_DIR: no such folder"),
        (["predict", str(tmp_path), str(tmp_path / "wrong.csv")], "RUN_DIR: has no compact_model.pt"),
        (["predict", str(tmp / "run"), str(tmp_path / "wrong.csv")],
         "INPUT: columns do not match the training data: missing ['px2', "),
        (["predict", str(tmp / "run"), str(tmp_path / "none.csv")], "INPUT: no such file or folder"),
        (["predict", str(tmp / "run"), str(image_run[0] / "imgs" / "test")],
         "INPUT: a folder of images, but the model was trained on 'arrays' data"),
        (["export-model", str(tmp / "run"), "--format", "tflite"],
         "--format: unknown format, expected one of ['onnx', 'torchscript'] (got 'tflite')"),
    ]
    for argv, message in cases:
        argv = argv + ["--out", str(tmp_path / "out.x")]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "unexpected ['colour']" in _last_error(capsys, ["predict", str(tmp / "run"), str(tmp_path / "wrong.csv"),
                                                             "--out", str(tmp_path / "o.csv")])


def _last_error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def _raw_images(tmp: Path) -> np.ndarray:
    """The test images as the exported model takes them: pixel values after the center crop."""
    from PIL import Image

    files = sorted((tmp / "imgs" / "test").rglob("*.png"))
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)[1:7, 1:7].transpose(2, 0, 1)
                     for p in files])


def test_export_torchscript_matches_pytorch(image_run, tmp_path):
    tmp, *_ = image_run
    assert main(["export-model", str(tmp / "run"), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    model, record = load_run(tmp / "run")
    raw = _raw_images(tmp)
    extra = {"sparsetune.classes": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated since torch 2.10
        loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    with torch.no_grad():
        expected = model(prepare(raw * 1.0, {**record, "scale": 255.0}))
        got = loaded(torch.from_numpy(raw))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert extra["sparsetune.classes"].decode() == '["left", "right", "top"]'
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_export_onnx_matches_pytorch(csv_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    tmp, cfg, result, header, rows = csv_run
    assert main(["export-model", str(tmp / "run"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    model, record = load_run(tmp / "run")
    features = [i for i, h in enumerate(header) if h != "label"]
    raw = np.array([[float(row[i]) for i in features] for row in rows[:37]], dtype=np.float32)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: raw})[0]  # any batch size: 37
    with torch.no_grad():
        expected = model(prepare(raw, record)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["sparsetune.classes"] == '["cat", "dog", "emu", "fox", "gnu", "hen", "ibx", "jay", "kob", "lyn"]'


def test_python_source_end_to_end(tmp_path):
    """Train on a Dataset factory, then predict on an .npz of the raw test examples."""
    (tmp_path / "mydata.py").write_text(FACTORY)
    cfg = TrialConfig.from_dict({**TRAIN, "data": {"name": "python", "factory": f"{tmp_path / 'mydata.py'}:splits",
                                                   "normalize": "auto"}})
    result = fit(cfg)
    save_run(result, tmp_path / "run")
    from trainables.imports import import_object

    test = import_object(f"{tmp_path / 'mydata.py'}:splits")()["test"]
    X = np.stack([test[i][0] for i in range(len(test))])
    y = np.array([test[i][1] for i in range(len(test))])
    np.savez(tmp_path / "test.npz", X=X, y=y)
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "test.npz"), "--out", str(tmp_path / "p.csv")]) == 0
    out = _predictions(tmp_path / "p.csv")
    assert list(out[0])[:2] == ["id", "label"] and list(out[0])[2:] == ["p_a", "p_b", "p_c"]
    names = ["a", "b", "c"]
    accuracy = sum(r["label"] == names[t] for r, t in zip(out, y)) / len(y)
    assert accuracy == result.metrics["test_accuracy"]


def test_old_model_file_without_a_record_is_rebuilt_from_the_config(csv_run, tmp_path):
    import shutil

    tmp, *_ = csv_run
    shutil.copytree(tmp / "run", tmp_path / "old")
    payload = torch.load(tmp_path / "old" / "compact_model.pt", weights_only=True)
    del payload["preprocessing"]
    torch.save(payload, tmp_path / "old" / "compact_model.pt")
    with pytest.warns(UserWarning, match="predates the preprocessing record"):
        _, record = load_run(tmp_path / "old")
    assert record == load_run(tmp / "run")[1]


def test_classes_are_the_image_folder_names(image_run):
    assert load_run(image_run[0] / "run")[1]["classes"] == list(CLASSES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_run_trained_on_the_gpu_predicts_on_the_cpu(csv_run, tmp_path, capsys):
    """Train on a GPU, deploy where there is none: predict (on the CPU) reproduces test_accuracy."""
    src, cfg, _, header, rows = csv_run
    result = fit(cfg.replace(device="cuda"))
    assert result.metrics["compaction"] == "graph"
    save_run(result, tmp_path / "run")
    _, _, test_i = split_indices(len(rows), cfg.data, official_test=False)
    with open(tmp_path / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *(rows[i] for i in test_i)])
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "test.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    out = _predictions(tmp_path / "p.csv")
    correct = sum(r["label"] == rows[i][header.index("label")] for r, i in zip(out, test_i))
    assert correct / len(test_i) == result.metrics["test_accuracy"]
