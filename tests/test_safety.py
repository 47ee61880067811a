"""Safe defaults: nothing we read can run code, and nothing we start listens beyond loopback.

- YAML (configs, specs, ``--set`` values) is safe-loaded: Python tags raise ``YamlError`` and run
  nothing.
- Model files (``load_compact``) and trial checkpoints (``search.trainable.train_trial`` resuming from
  ``state.pt``) load with ``torch.load(weights_only=True)``: a pickled object is refused before it
  runs. Every ``torch.load`` in the packages is checked to say ``weights_only=True``.
- ``.npz`` data loads with ``allow_pickle=False``.
- The README warns that ``--resume`` (``Tuner.restore``) and MLflow artifacts must come from
  trusted storage, and that the MLflow server binds 127.0.0.1; ``cluster.yaml`` keeps every server
  on loopback and holds no credentials. (``tests/test_search_units.py::
  test_cluster_yaml_passes_rays_validation`` already checks the MLflow ``--host 127.0.0.1`` line
  and a few secret words; this file checks the rest.)

Every payload is shown to work (it does create its marker file when loaded unsafely), so the
"refused" checks cannot pass vacuously.
"""

from __future__ import annotations

import ast
import contextlib
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from search.cli import main
from search.spec import load_spec
from trainables.compact import FORMAT, load_compact
from trainables.config import TrialConfig, parse_override
from trainables.yamlio import YamlError, load_yaml, loads_yaml

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
CLUSTER = (ROOT / "cluster.yaml").read_text()


class MakesMarker:
    """Unpickling this creates the folder ``marker``: arbitrary code run by a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# ----------------------------------------------------------------------------- YAML


def _python_tags(marker: Path) -> list[str]:
    command = f"echo pwned > {marker}"
    return [
        f'seed: !!python/object/apply:os.system ["{command}"]\n',
        f'!!python/object/apply:os.system ["{command}"]\n',
        f'seed: !!python/object/new:os.system ["{command}"]\n',
        "seed: !!python/name:os.system\n",
        "seed: !!python/module:os\n",
        "seed: !!python/object:builtins.object {}\n",
        f'name: x\ntrials: 1\nbase: {{data: !!python/object/apply:os.system ["{command}"]}}\n',
    ]


def test_the_yaml_payload_is_real(tmp_path):
    marker = tmp_path / "unsafe-marker"
    yaml.unsafe_load(_python_tags(marker)[0])
    assert marker.exists()


@pytest.mark.parametrize("index", range(7))
def test_yaml_is_safe_loaded(tmp_path, index):
    marker = tmp_path / "marker"
    text = _python_tags(marker)[index]
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    for load in (load_yaml, TrialConfig.from_yaml, load_spec):
        with pytest.raises(YamlError, match="could not determine a constructor for the tag"):
            load(path)
    with pytest.raises(YamlError):
        loads_yaml(text)
    assert not marker.exists()


def test_set_values_are_safe_loaded(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "marker"
    item = f"seed=!!python/object/apply:os.system ['echo pwned > {marker}']"
    with pytest.raises(YamlError, match="--set seed: not valid YAML"):
        parse_override(item)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("data: {name: digits}\n")
    assert main(["train", "c.yaml", "--out", "out", "--set", item]) == 2
    assert "could not determine a constructor" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- model files


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"format": FORMAT, "model": {"name": "mlp", "hidden": [4]}, "input_shape": [4],
                "num_classes": 2, "state_dict": {"net.fc1.weight": torch.zeros(4, 4)},
                "note": MakesMarker(marker)}, path)
    return path


def test_the_checkpoint_payload_is_real(tmp_path):
    marker = tmp_path / "unsafe-marker"
    torch.load(_evil_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.is_dir()


def test_load_compact_refuses_a_pickled_object(tmp_path):
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_compact(path)
    assert not marker.exists()


def test_load_compact_refuses_a_pickled_module(tmp_path):
    """A whole nn.Module (what a careless torch.save(model) writes) is code, not weights."""
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_compact(path)


# ----------------------------------------------------------------------------- trial checkpoints


class _Checkpoint:
    """A stand-in for ``ray.tune.Checkpoint``: ``as_directory()`` yields the folder."""

    def __init__(self, folder: Path):
        self.folder = folder

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.folder)


@pytest.fixture
def trial_resuming_from(monkeypatch):
    """Run ``search.trainable.train_trial`` as a Tune worker does when it resumes from ``folder``;
    returns what reached ``fit(resume=...)`` (``fit`` itself is replaced: nothing trains)."""
    import search.trainable as tune_module
    import trainables

    resumed = []

    def fit(cfg, report=None, *, resume=None, **kwargs):
        resumed.append(resume)

    monkeypatch.setattr(trainables, "fit", fit)

    def run(folder: Path) -> list:
        monkeypatch.setattr(tune_module.tune, "get_checkpoint", lambda: _Checkpoint(folder))
        tune_module.train_trial(TrialConfig.from_dict({"device": "cpu"}).to_dict())
        return resumed

    return run


def test_train_trial_resumes_from_a_plain_state(tmp_path, trial_resuming_from):
    import search.trainable as tune_module

    state = {"format": "x", "epoch": 3, "model": {"w": torch.ones(2)}, "history": [{"loss": 1.0}]}
    torch.save(state, tmp_path / tune_module.STATE_FILE)
    (resumed,) = trial_resuming_from(tmp_path)
    assert resumed["epoch"] == 3 and torch.equal(resumed["model"]["w"], torch.ones(2))


def test_train_trial_refuses_a_pickled_object_in_its_checkpoint(tmp_path, trial_resuming_from):
    import search.trainable as tune_module

    marker = tmp_path / "marker"
    torch.save({"format": "x", "epoch": 3, "note": MakesMarker(marker)}, tmp_path / tune_module.STATE_FILE)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trial_resuming_from(tmp_path)
    assert not marker.exists()


def _torch_loads(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"]


def test_every_torch_load_says_weights_only_true():
    sources = sorted((ROOT / "trainables").rglob("*.py")) + sorted((ROOT / "search").rglob("*.py"))
    calls = {path.relative_to(ROOT).as_posix(): _torch_loads(path) for path in sources}
    assert calls["search/trainable.py"], "train_trial's checkpoint load was not found"
    assert calls["trainables/compact.py"], "load_compact's load was not found"
    for name, found in calls.items():
        for call in found:
            flags = {k.arg: k.value for k in call.keywords}
            assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                f"{name}:{call.lineno}: torch.load without weights_only=True"


# ----------------------------------------------------------------------------- data files


def test_npz_with_a_pickled_object_array_is_refused(tmp_path):
    """``np.load(allow_pickle=False)``: an object array in a .npz is an error, never unpickled."""
    from trainables import check_config
    from trainables.config import ConfigError, DataConfig
    from trainables.data import load

    marker = tmp_path / "marker"
    X = np.empty(1, dtype=object)
    X[0] = MakesMarker(marker)
    path = tmp_path / "evil.npz"
    np.savez(path, X=X, y=np.arange(8) % 2)
    with np.load(path, allow_pickle=True) as z:  # the payload is real
        z["X"]
    assert marker.is_dir()
    marker.rmdir()

    cfg = TrialConfig.from_dict({"data": {"name": "arrays", "path": str(path)}})
    with pytest.raises(ConfigError, match="data.path"):
        check_config(cfg)
    with pytest.raises(ConfigError, match="data.path: not a readable .npz file"):
        load(DataConfig(name="arrays", path=str(path)))
    np.savez(path, X=np.zeros((8, 3)), y=X)  # labels as the object array
    with pytest.raises(ConfigError, match="data.path: not a readable .npz file"):
        check_config(cfg)
    assert not marker.exists()


# ----------------------------------------------------------------------------- documentation and cluster


def test_readme_warns_about_untrusted_storage_and_binds_loopback():
    text = " ".join(README.split())  # ignore line breaks
    section = text[text.index("## Trust and safety"):]
    assert "`sparsetune search --resume` uses `Tuner.restore`, which unpickles" in section
    assert "Restore only from storage that no one else can write to" in section
    assert "The same applies to MLflow artifacts" in section
    assert "torch.load(weights_only=True)" in section and "YAML is always safe-loaded" in section
    assert "listens on 127.0.0.1" in section and "holds no credentials" in section
    assert "mlflow server --host 127.0.0.1" in text
    assert "0.0.0.0" not in README


def test_cluster_servers_listen_on_loopback_only():
    cfg = yaml.safe_load(CLUSTER)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    mlflow = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    assert re.search(r"--host 127\.0\.0\.1\b", mlflow) and "--port 5000" in mlflow
    assert "0.0.0.0" not in CLUSTER and "--host=0" not in CLUSTER
    for spec in sorted((ROOT / "examples/search").glob("*.yaml")):
        uri = load_yaml(spec).get("tracking_uri")
        assert uri is None or uri.startswith("http://127.0.0.1:"), spec.name


def test_cluster_yaml_holds_no_credentials():
    cfg = yaml.safe_load(CLUSTER)
    assert set(cfg["auth"]) == {"ssh_user"}  # no ssh_private_key: Ray generates and keeps one
    assert not re.search(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}", CLUSTER)  # AWS access key ids
    assert "PRIVATE KEY" not in CLUSTER
    lowered = CLUSTER.lower()
    for word in ("aws_access_key_id", "aws_session_token", "mlflow_tracking_password",
                 "mlflow_tracking_token", "ray_auth_token=", "api_key"):
        assert word not in lowered, word
    assert not set(cfg["provider"]) - {"type", "region", "cache_stopped_nodes", "availability_zone"}
