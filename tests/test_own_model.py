"""Your own network: the ``python`` (module:attribute), ``torchvision`` and ``timm`` model sources,
trained weights, validation before any work (exit 2 naming the field and the value), layer
patterns, exported configs that re-run, compact models that load again; one Ray search run from
another directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn
from torch.testing import assert_close

from search.cli import main
from trainables import ConfigError, NotCompactableWarning, TrialConfig, check_trial, fit, save_run
from trainables.compact import exact_float32, load_compact
from trainables.data import DataSpec, load
from trainables.train import evaluate
from trainables.models import build_model

ROOT = Path(__file__).resolve().parents[1]

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """stem -> residual block -> concat with a side branch -> pool -> fc."""

    def __init__(self, input_shape, num_classes, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1))
        self.side = nn.Conv2d(width, 4, 1)
        self.fc = nn.Linear(width + 4, num_classes)

    def forward(self, x):
        s = self.stem(x)
        y = torch.cat([torch.relu(s + self.block(s)), torch.relu(self.side(s))], 1)
        return self.fc(y.mean((2, 3)))


def build(input_shape, num_classes, width=8):
    return Net(input_shape, num_classes, width)


def broken(num_classes):
    raise RuntimeError("out of ideas")


def not_a_module():
    return 42


def wrong_output(num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))


class Branchy(nn.Module):  # data-dependent control flow: trains, cannot be compacted
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.a = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)
        self.b = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.a(x) if x.sum() > -1e9 else self.b(x)
'''

_COUNTER = [0]


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A directory holding a fresh user module (a unique name: imports are cached per process) and
    a small image dataset, made the current directory. Returns (directory, module name)."""
    _COUNTER[0] += 1
    name = f"user_models_{os.getpid()}_{_COUNTER[0]}"
    (tmp_path / f"{name}.py").write_text(NET)
    gen = np.random.default_rng(0)
    X = gen.normal(size=(96, 3, 8, 8)).astype(np.float32)
    y = (X[:, 0].mean((1, 2)) > 0).astype(np.int64) + (X[:, 1].mean((1, 2)) > 0)
    np.savez(tmp_path / "images.npz", X=X, y=y)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cwd that the import puts there goes again
    return tmp_path, name


def config(module: str, **model) -> dict:
    return {"device": "cpu", "seed": 0,
            "data": {"name": "arrays", "path": "images.npz", "test_fraction": 0.25},
            "model": {"name": "python", "factory": f"{module}:build", **model},
            "optim": {"name": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 32},
            "regularizer": {"name": "group_lasso", "lam": 5.0, "groups": "input", "layers": ["fc"]}}


def run_train(cfg: dict, directory: Path, capsys) -> tuple[int, str]:
    path = directory / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["train", str(path), "--out", str(directory / "out"), "--quiet"])
    return rc, capsys.readouterr().err


# ----------------------------------------------------------------------------- errors, before any work


@pytest.mark.parametrize("factory,field,words", [
    ("no_such_module_xyz:build", "model.factory", "no module named 'no_such_module_xyz'"),
    ("{m}:buildd", "model.factory", "has no attribute 'buildd'"),
    ("{m}:broken", "model.factory", "raised RuntimeError: out of ideas"),
    ("{m}:not_a_module", "model.factory", "returned a int, not an nn.Module"),
    ("{m}:wrong_output", "model.factory", "returns [2, 4]"),
])
def test_bad_factories_exit_2_naming_the_field_and_value(user_dir, capsys, factory, field, words):
    directory, module = user_dir
    factory = factory.format(m=module)
    cfg = config(module)
    cfg["model"]["factory"] = factory
    rc, err = run_train(cfg, directory, capsys)
    assert rc == 2
    assert f"{field}: " in err and words in err and repr(factory) in err
    assert "Traceback" not in err
    assert not (directory / "out").exists()  # nothing was trained


def test_weights_and_layer_errors_exit_2(user_dir, capsys):
    directory, module = user_dir
    rc, err = run_train(config(module, weights="missing.pt"), directory, capsys)
    assert rc == 2 and "model.weights: no such file" in err and str(directory / "missing.pt") in err

    other = build_model(TrialConfig.from_dict(config(module, kwargs={"width": 4})).model, DataSpec((3, 8, 8), 3))
    torch.save(other.state_dict(), directory / "other.pt")
    rc, err = run_train(config(module, weights="other.pt"), directory, capsys)
    assert rc == 2 and "model.weights: does not match the model" in err and "stem.0.weight has shape [4, 3, 3, 3]" in err

    torch.save({"stem.0.weight": torch.zeros(8, 3, 3, 3)}, directory / "partial.pt")
    rc, err = run_train(config(module, weights="partial.pt"), directory, capsys)
    assert rc == 2 and "missing keys" in err and "partial.pt" in err

    cfg = config(module)
    cfg["regularizer"]["layers"] = ["block.*", "head*"]
    rc, err = run_train(cfg, directory, capsys)
    assert rc == 2 and "regularizer.layers: matches no Conv2d/Linear layer" in err and "'head*'" in err
    assert "block.0" in err  # the model's layers are listed
    assert "Traceback" not in err


def test_check_trial_warns_when_not_compactable_and_raises_for_bad_kwargs(user_dir):
    _, module = user_dir
    cfg = config(module)
    cfg["model"] = {"name": "python", "factory": f"{module}:Branchy"}  # a class works as the factory
    cfg["regularizer"]["layers"] = "all"
    with pytest.warns(NotCompactableWarning, match=f"model.factory '{module}:Branchy' cannot be compacted"):
        check_trial(TrialConfig.from_dict(cfg))
    with pytest.raises(ConfigError, match=r"model.factory: .*unexpected keyword argument 'depth'"):
        check_trial(TrialConfig.from_dict(config(module, kwargs={"depth": 3})))
    with pytest.raises(ConfigError, match="model.kwargs.num_classes: set from the data"):
        TrialConfig.from_dict(config(module, kwargs={"num_classes": 3}))


def test_timm_missing_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    cfg = TrialConfig.from_dict({"model": {"name": "timm", "arch": "resnet18d"}})
    with pytest.raises(ConfigError, match=r"model.name: needs the timm package.*pip install \"sparsetune\[timm\]\""):
        build_model(cfg.model, DataSpec((3, 16, 16), 10))


def test_named_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    """Offline and not cached: an error naming model.weights and how to pass a file (nothing is
    downloaded: TORCH_HOME is an empty folder). Cached: loaded, with the classifier re-initialised
    for another number of classes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = TrialConfig.from_dict({"model": {"name": "torchvision", "arch": "resnet18", "weights": "IMAGENET1K_V1"}})
    assert cfg.model.weights == "IMAGENET1K_V1"  # a name, not made into a path
    with pytest.raises(ConfigError, match=r"model.weights: .*could not be downloaded.*model.weights: path/to/state_dict.pt"):
        build_model(cfg.model, DataSpec((3, 32, 32), 10))
    with pytest.raises(ConfigError, match="not a weights name of resnet18"):
        build_model(TrialConfig.from_dict({"model": {"name": "torchvision", "arch": "resnet18",
                                                     "weights": "IMAGENET9K"}}).model, DataSpec((3, 32, 32), 10))

    imagenet = torchvision.models.resnet18()  # stands in for the real file: same names and shapes
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(imagenet.state_dict(), tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    model = build_model(cfg.model, DataSpec((3, 32, 32), 10))
    assert torch.equal(model.layer3[0].conv1.weight, imagenet.layer3[0].conv1.weight)
    assert model.fc.weight.shape == (10, 512)  # the head: fresh, for 10 classes


def test_torchvision_builder_weights_none_is_accepted_and_a_file_is_pointed_to_model_weights():
    cfg = TrialConfig.from_dict({"model": {"name": "torchvision", "arch": "resnet18", "kwargs": {"weights": None}}})
    assert cfg.model.kwargs == {}
    assert isinstance(build_model(cfg.model, DataSpec((3, 16, 16), 10)), torchvision.models.ResNet)
    with pytest.raises(ConfigError, match=r"model\.kwargs\.weights: trained weights go in model\.weights.*'IMAGENET1K_V1'"):
        TrialConfig.from_dict({"model": {"name": "torchvision", "arch": "resnet18", "kwargs": {"weights": "IMAGENET1K_V1"}}})


def test_torchvision_first_conv_is_adapted_to_the_data_channels_with_its_trained_weights(tmp_path):
    grey = DataSpec((1, 16, 16), 10)
    plain = TrialConfig.from_dict({"model": {"name": "torchvision", "arch": "resnet18"}})
    with pytest.raises(ConfigError, match=r"model\.arch: resnet18's first convolution \(conv1\) reads 3 "
                                          r"channels and the data has 1; set model\.adapt_input: true"):
        build_model(plain.model, grey)
    trained = torchvision.models.resnet18(num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "rgb.pt")
    for channels in (1, 6, 2):
        spec = DataSpec((channels, 16, 16), 10)
        cfg = TrialConfig.from_dict({"model": {"name": "torchvision", "arch": "resnet18", "adapt_input": True,
                                               "weights": str(tmp_path / "rgb.pt")}})
        model = build_model(cfg.model, spec).eval()
        assert model.conv1.in_channels == channels and model.conv1.weight.shape[1] == channels
        assert torch.equal(model.layer1[0].conv1.weight, trained.layer1[0].conv1.weight)
        # a grey image of value v reads as the RGB image (v, v, v) reads in the trained network
        v = torch.rand(2, 1, 16, 16)
        if channels not in (1, 6):  # not 1 or a multiple of 3: timm's rule keeps the scale (3 / channels), not the output
            assert_close(model.conv1.weight, trained.conv1.weight[:, :channels] * 1.5)
            continue
        with torch.no_grad():
            ours = model.conv1(v.expand(-1, channels, -1, -1))
            theirs = trained.conv1(v.expand(-1, 3, -1, -1))
        assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_timm_named_weights_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = TrialConfig.from_dict({"model": {"name": "timm", "arch": "resnet18", "weights": "pretrained"}})
    with pytest.raises(ConfigError, match="model.weights: the pretrained weights of resnet18 could not be downloaded"):
        build_model(cfg.model, DataSpec((3, 32, 32), 10))


# ----------------------------------------------------------------------------- training and re-running


def test_user_network_trains_compacts_exports_and_reruns(user_dir):
    directory, module = user_dir
    cfg = TrialConfig.from_dict(config(module))
    check_trial(cfg)
    result = fit(cfg)
    m = result.metrics
    assert m["compaction"] == "graph"
    assert m["flops_compact"] < m["flops_dense"]  # the side branch / residual channels fc no longer reads
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert_close(result.compact_model(x), result.model.eval()(x), rtol=1e-4, atol=1e-5)
    exported = result.config.to_dict()
    assert exported["model"] == {"name": "python", "factory": f"{module}:build", "kwargs": {}}
    again = fit(TrialConfig.from_dict(yaml.safe_load(yaml.safe_dump(exported))))
    assert again.metrics["params_total"] == m["params_total"]
    assert again.metrics["test_accuracy"] == m["test_accuracy"] and again.metrics["flops_compact"] == m["flops_compact"]

    save_run(result, directory / "run")
    loaded = load_compact(directory / "run" / "compact_model.pt")  # rebuilt through the factory
    with torch.no_grad():
        assert_close(loaded(x), result.compact_model(x))


def test_training_starts_from_the_trained_weights(user_dir):
    directory, module = user_dir
    trained = build_model(TrialConfig.from_dict(config(module)).model, DataSpec((3, 8, 8), 3))
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_()
    torch.save(trained.state_dict(), directory / "trained.pt")
    cfg = TrialConfig.from_dict(config(module, weights="trained.pt"))
    assert cfg.model.weights == str(directory / "trained.pt")  # absolute: trials run elsewhere
    model = build_model(cfg.model, DataSpec((3, 8, 8), 3))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    no_lr = TrialConfig.from_dict({**config(module, weights="trained.pt"), "optim": {"lr": 1e-12, "epochs": 1},
                                   "regularizer": {"name": "none"}})
    result = fit(no_lr)  # a learning rate of ~0: the trained network is what is measured
    assert_close(result.model.block[0].weight, trained.block[0].weight)


def test_zero_epochs_scores_the_given_weights_on_the_same_splits(user_dir, capsys):
    """``optim.epochs: 0``: the user's trained network measured as a trained run is (same splits,
    same metrics), nothing changed; a regularizer with it is refused, naming the field."""
    directory, module = user_dir
    trained = build_model(TrialConfig.from_dict(config(module)).model, DataSpec((3, 8, 8), 3))
    torch.save(trained.state_dict(), directory / "trained.pt")
    cfg = {**config(module, weights="trained.pt"), "regularizer": {"name": "none"}}
    cfg["optim"] = {**cfg["optim"], "epochs": 0}
    rc, err = run_train(cfg, directory, capsys)
    assert rc == 0, err
    metrics = json.loads((directory / "out" / "result.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0] and metrics["history"][0]["phase"] == "evaluate"
    assert metrics["params_compact"] == metrics["params_total"] == sum(p.numel() for p in trained.parameters())
    result = fit(TrialConfig.from_dict(cfg))
    test = evaluate(trained, load(TrialConfig.from_dict(cfg).data).test)
    assert result.metrics["test_accuracy"] == pytest.approx(test["accuracy"])  # what was given, unchanged
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), trained.state_dict().values()))
    rc, err = run_train({**cfg, "regularizer": {"name": "group_lasso"}}, directory, capsys)
    assert rc == 2 and "regularizer.name: optim.epochs: 0 evaluates the weights as given" in err


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_torchvision_resnet18_trains_with_layer_patterns(user_dir, device):
    """Also on a GPU, where cuDNN's default TF32 convolutions once made every compaction of a
    trained conv net fail its exactness check (so runs silently reported dense FLOPs)."""
    directory, _ = user_dir
    cfg = TrialConfig.from_dict({
        "device": device, "data": {"name": "arrays", "path": "images.npz", "test_fraction": 0.25},
        "model": {"name": "torchvision", "arch": "resnet18"},
        "optim": {"name": "sgd", "lr": 0.05, "epochs": 1, "batch_size": 32},
        "regularizer": {"name": "group_lasso", "lam": 100.0, "groups": "input", "layers": ["layer4.*", "fc"]}})
    check_trial(cfg)
    result = fit(cfg)
    regularized = [r["name"] for r in result.metrics["layers"] if r["regularized"]]
    assert regularized == ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1",
                           "layer4.1.conv2", "fc"]
    assert result.metrics["compaction"] == "graph"
    assert result.metrics["flops_compact"] < result.metrics["flops_dense"]
    x = torch.randn(3, 3, 8, 8).to(device)
    with torch.no_grad(), exact_float32():
        assert_close(result.compact_model(x), result.model.eval()(x), rtol=1e-4, atol=1e-5)
        assert result.config.to_dict()["model"] == {"name": "torchvision", "arch": "resnet18", "kwargs": {},
                                                     "adapt_input": False}
        save_run(result, directory / "run")
        assert_close(load_compact(directory / "run" / "compact_model.pt")(x.cpu()), result.compact_model(x).cpu(),
                     rtol=1e-4, atol=1e-5)


def test_compact_model_of_a_user_network_loads_in_another_process(user_dir):
    """load_compact rebuilds the network through its factory where the module imports (PYTHONPATH),
    and names the factory where it does not."""
    directory, module = user_dir
    result = fit(TrialConfig.from_dict(config(module)))
    save_run(result, directory / "run")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.save({"x": x, "y": result.compact_model(x)}, directory / "io.pt")
    script = textwrap.dedent("""
        import sys, torch
        from trainables.compact import load_compact
        m = load_compact(sys.argv[1] + '/run/compact_model.pt')
        io = torch.load(sys.argv[1] + '/io.pt', weights_only=True)
        torch.testing.assert_close(m(io['x']), io['y'], rtol=1e-5, atol=1e-6)
        print('ok')
    """)
    elsewhere = directory / "elsewhere"
    elsewhere.mkdir()
    for pythonpath, ok in ([str(ROOT), str(directory)], True), ([str(ROOT)], False):
        done = subprocess.run([sys.executable, "-c", script, str(directory)], capture_output=True, text=True,
                              cwd=elsewhere, env={**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)},
                              timeout=300)
        if ok:
            assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
        else:
            assert done.returncode != 0
            assert f"model.factory: no module named '{module}'" in done.stderr


# ----------------------------------------------------------------------------- a search


@pytest.mark.ray
def test_search_imports_the_user_module_in_ray_workers(user_dir, ray_session, capsys):
    """The driver runs from the user's directory; Ray's workers (started elsewhere) import the module."""
    directory, module = user_dir
    base = config(module)
    del base["regularizer"]
    base["regularizer"] = {"layers": ["block.*", "fc"]}
    spec = {"name": "own", "base": base, "trials": 2, "concurrency": 1, "seed": 0,
            "regularizers": {"group_lasso": {"lam": {"type": "loguniform", "low": 1e-3, "high": 1e-1}},
                             "l1": {"lam": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
            "storage": str(directory / "ray"), "tracking_uri": f"sqlite:///{directory / 'mlflow.db'}"}
    (directory / "spec.yaml").write_text(yaml.safe_dump(spec))
    rc = main(["search", "spec.yaml", "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    finals = {f.parent.parent.name: json.loads(f.read_text())  # save_run's file, in the last checkpoint
              for f in sorted((directory / "ray").rglob("checkpoint_*/result.json"))}
    assert len(finals) == 2
    assert all(r["compaction"] == "graph" and "test_accuracy" in r for r in finals.values())
