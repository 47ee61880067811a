"""TrialConfig: round trips, family defaults, and clear rejection of bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainables import ConfigError, TrialConfig, check_config
from trainables.config import flatten, parse_override
from trainables.yamlio import loads_yaml

EXAMPLES = sorted(Path(__file__).parent.parent.glob("examples/*/*.yaml"))
TRAIN_EXAMPLES = [p for p in EXAMPLES if p.parent.name in ("train", "papers")]


def test_examples_exist():
    assert len(TRAIN_EXAMPLES) >= 8


@pytest.mark.parametrize("path", TRAIN_EXAMPLES, ids=lambda p: p.name)
def test_example_round_trips_and_checks(path):
    cfg = TrialConfig.from_yaml(path)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert TrialConfig.from_dict(loads_yaml(cfg.to_yaml())) == cfg
    check_config(cfg)


def test_defaults_are_filled_and_exported():
    cfg = TrialConfig.from_dict({"regularizer": {"name": "growl"}, "tying": {"enabled": True}})
    d = cfg.to_dict()
    assert d["regularizer"]["p"] == 0.5 and d["regularizer"]["prox_every"] == "epoch"
    assert "lam" not in d["regularizer"] and "mu" not in d["regularizer"]
    assert d["tying"]["retrain_lr"] == cfg.optim.lr  # resolved, so the export re-runs the same


def test_yaml_reads_1e_minus_3_as_a_number():
    assert loads_yaml("lam: 1e-3") == {"lam": 0.001}
    assert loads_yaml("x: 5e2") == {"x": 500.0}
    assert loads_yaml("x: 1.0") == {"x": 1.0} and loads_yaml("x: 7") == {"x": 7}
    assert loads_yaml("x: abc1e3") == {"x": "abc1e3"}


def test_overrides():
    assert parse_override("regularizer.lam=1e-3") == ("regularizer.lam", 0.001)
    assert parse_override("model.hidden=[10, 20]") == ("model.hidden", [10, 20])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("regularizer.lam")


def test_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("regularizer: {name: cges}\n")
    cfg = TrialConfig.from_yaml(path, overrides=["regularizer.lam=0.5", "optim.epochs=2"])
    assert cfg.regularizer.lam == 0.5 and cfg.optim.epochs == 2


def test_flatten_gives_search_paths():
    flat = flatten(TrialConfig.from_dict({"regularizer": {"name": "l1"}}).to_dict())
    assert flat["regularizer/lam"] == 1e-3 and flat["optim/lr"] == 0.1


BAD = [
    ({"foo": 1}, "foo: unknown field"),
    ({"regularizer": {"name": "nope"}}, "regularizer.name"),
    ({"regularizer": {"name": "l1", "lam": -1.0}}, "regularizer.lam: `lam >= 0` must hold (got -1.0)"),
    ({"regularizer": {"name": "l1", "lam": float("inf")}}, "regularizer.lam: `lam` must be finite"),
    ({"regularizer": {"name": "cges", "mu": 1.5}}, "regularizer.mu: `mu <= 1` must hold (got 1.5)"),
    ({"regularizer": {"name": "cges", "mu": [0.2, -0.1]}}, "regularizer.mu"),
    ({"regularizer": {"name": "cges", "mu": {"first": 0.1}}}, "regularizer.mu.last"),
    ({"regularizer": {"name": "growl", "p": 0.0}}, "regularizer.p: `p > 0` must hold (got 0.0)"),
    ({"regularizer": {"name": "growl", "p": 1.5}}, "regularizer.p: `p <= 1` must hold (got 1.5)"),
    ({"regularizer": {"name": "cges", "lambda1": 1.0}}, "regularizer.lambda1: not a parameter of regularizer 'cges'"),
    ({"regularizer": {"name": "growl", "lam": 1.0}}, "regularizer.lam: not a parameter of regularizer 'growl'"),
    ({"regularizer": {"name": "l1", "layers": []}}, "regularizer.layers"),
    ({"optim": {"lr": 0}}, "optim.lr: `lr > 0` must hold (got 0.0)"),
    ({"optim": {"lr": "0.1"}}, "optim.lr"),
    ({"optim": {"epochs": True}}, "optim.epochs"),
    ({"optim": {"epochs": -1}}, "optim.epochs: `epochs >= 0` must hold (0: evaluate the weights as given) (got -1)"),
    ({"optim": {"epochs": 0}, "regularizer": {"name": "l1"}}, "regularizer.name: optim.epochs: 0 evaluates the weights"),
    ({"optim": {"name": "sgd", "momentum": 0.9}}, "optim.momentum: not a parameter of optimizer 'sgd'"),
    ({"model": {"name": "lenet_cges", "hidden": [10]}}, "model.hidden: not a parameter of model 'lenet_cges'"),
    ({"data": {"name": "idx"}}, "data.path"),
    ({"data": {"name": "digits", "val_fraction": 1.0}}, "data.val_fraction"),
    ({"tying": {"retrain_epochs": -1}}, "tying.retrain_epochs"),
    ({"device": "gpu"}, "device"),
]


@pytest.mark.parametrize("data, message", BAD, ids=[m for _, m in BAD])
def test_bad_values_are_rejected_with_field_and_value(data, message):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict(data)
    assert message in str(info.value)


def test_schedule_list_must_match_the_model():
    cfg = TrialConfig.from_dict({"model": {"name": "mlp", "hidden": [8, 8]},
                                 "regularizer": {"name": "cges", "mu": [0.1, 0.2]}})
    with pytest.raises(ConfigError, match=r"regularizer\.mu: .*3 for this model.*got \[0\.1, 0\.2\]"):
        check_config(cfg)


def test_missing_data_file_is_reported_before_any_work(tmp_path):
    cfg = TrialConfig.from_dict({"data": {"name": "arrays", "path": str(tmp_path / "no.npz")}})
    with pytest.raises(ConfigError, match="data.path"):
        check_config(cfg)


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrialConfig.from_dict({"data": {"name": "idx", "path": "mnist"}})
    assert cfg.data.path == str(tmp_path / "mnist")


def test_import_trainables_loads_no_search_stack():
    code = "import sys, trainables, trainables.train; " \
           "print(sorted(m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
