"""regularizer.target_sparsity: the strength adapts so that the run ends at the asked zero fraction;
params_compact is what the compacted network stores."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from trainables import ConfigError, TrialConfig, fit
from trainables.compact import load_compact
from trainables.outputs import save_run
from trainables.target import scheduled_sparsity

TARGETS = (0.25, 0.5, 0.75)


def mlp_cfg(reg: dict, epochs: int = 8, hidden=(100,)) -> dict:
    return {"seed": 0, "device": "cpu", "data": {"name": "digits"},
            "model": {"name": "mlp", "hidden": list(hidden)},
            "optim": {"name": "sgd", "lr": 0.1, "epochs": epochs, "batch_size": 64},
            "regularizer": reg}


def cnn_cfg(reg: dict, epochs: int = 5) -> dict:
    # the CGES paper's LeNet (conv 32 -> conv 64 -> fc 1024 -> fc) on 8x8 digits
    return {"seed": 0, "device": "cpu", "data": {"name": "digits"},
            "model": {"name": "lenet_cges", "dropout": 0.0},
            "optim": {"name": "momentum", "lr": 0.05, "epochs": epochs, "batch_size": 64},
            "regularizer": reg}


def zero_fraction(result, unit: str) -> float:
    """The zero fraction of the regularized units, counted here from the trained weights."""
    rows = [r for r in result.metrics["layers"] if r["regularized"]]
    if unit == "elements":
        return 1 - sum(r["nonzero"] for r in rows) / sum(r["params"] for r in rows)
    return sum(r["zero_groups"] for r in rows) / sum(r["groups"] for r in rows)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan")])
def test_target_outside_range_is_one_line_config_error(value):
    with pytest.raises(ConfigError) as e:
        TrialConfig.from_dict(mlp_cfg({"name": "group_lasso", "target_sparsity": value}))
    msg = str(e.value)
    assert "\n" not in msg and "regularizer.target_sparsity" in msg and repr(value) in msg


@pytest.mark.parametrize("name", ["none", "l2"])
def test_target_on_a_family_without_zeros_is_rejected(name):
    with pytest.raises(ConfigError, match=rf"regularizer.target_sparsity: regularizer '{name}' zeroes no "
                                          r"groups.*\(got 0.5\)$"):
        TrialConfig.from_dict(mlp_cfg({"name": name, "target_sparsity": 0.5}))


@pytest.mark.parametrize("name", ["magnitude", "channel_magnitude"])
def test_target_with_a_pruners_final_is_rejected(name):
    for reg in ({"name": name, "target_sparsity": 0.5}, {"name": name, "final": 0.6, "target_sparsity": 0.5}):
        with pytest.raises(ConfigError, match=r"regularizer.target_sparsity: .*set `final`, not "
                                              r"target_sparsity \(got 0.5\)$"):
            TrialConfig.from_dict(mlp_cfg(reg))


def test_target_defaults_row_families_to_relative_scale_and_round_trips():
    for name in ("group_lasso", "growl"):
        cfg = TrialConfig.from_dict(mlp_cfg({"name": name, "target_sparsity": 0.5}))
        assert cfg.regularizer.scale == "relative"
        assert TrialConfig.from_dict(cfg.to_dict()) == cfg
        explicit = TrialConfig.from_dict(mlp_cfg({"name": name, "target_sparsity": 0.5, "scale": "absolute"}))
        assert explicit.regularizer.scale == "absolute"
        assert TrialConfig.from_dict(mlp_cfg({"name": name})).regularizer.scale == "absolute"
    plain = TrialConfig.from_dict(mlp_cfg({"name": "cges"}))
    assert "target_sparsity" not in plain.to_dict()["regularizer"]  # unchanged exports without a target


def test_schedule_runs_from_zero_to_the_target():
    assert scheduled_sparsity(0.0, 0.6) == 0.0
    assert scheduled_sparsity(1.0, 0.6) == pytest.approx(0.6)
    values = [scheduled_sparsity(p / 10, 0.6) for p in range(11)]
    assert values == sorted(values)


# ----------------------------------------------------------------------------- training


def _train_cli(tmp_path: Path, cfg: dict, target: float, capsys, monkeypatch) -> dict:
    from search.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / f"run_{target}"
    assert main(["train", str(path), "--out", str(out), "--set", f"regularizer.target_sparsity={target}"]) == 0
    summary = capsys.readouterr().err
    assert "physical compression (total / compact)" in summary
    assert "sparse compression (total / unique non-zero)" in summary
    assert "compression rate" not in summary  # no unnamed figure that claims more than the file holds
    metrics = json.loads((out / "result.json").read_text())
    model = load_compact(out / "compact_model.pt")
    assert metrics["params_compact"] == sum(p.numel() for p in model.parameters())
    return metrics


def test_sparsetune_train_reaches_each_target_on_an_mlp(tmp_path, capsys, monkeypatch):
    cfg = mlp_cfg({"name": "group_lasso"}, epochs=10)
    flops, results = [], []
    for target in TARGETS:
        m = _train_cli(tmp_path, cfg, target, capsys, monkeypatch)
        results.append(m)
        assert m["target_sparsity"] == target and m["target_unit"] == "groups"
        assert abs(m["target_reached"] - target) <= 0.1
        groups = [r for r in m["layers"] if r["regularized"]]
        assert abs(sum(r["zero_groups"] for r in groups) / sum(r["groups"] for r in groups) - target) <= 0.1
        # the strength used, per layer and epoch
        assert len(m["history"]) == 10
        for h in m["history"]:
            assert set(h["strength"]) == {"fc1", "fc2"} and all(v > 0 for v in h["strength"].values())
        assert [h["target_scheduled"] for h in m["history"]] == sorted(h["target_scheduled"] for h in m["history"])
        flops.append(m["flops_compact"])
        assert m["params_compact"] < m["params_total"]
        assert m["params_nonzero"] <= m["params_compact"]
    assert flops[0] > flops[1] > flops[2]
    assert results[0]["params_compact"] > results[1]["params_compact"] > results[2]["params_compact"]
    assert results[0]["test_accuracy"] > 0.85  # a quarter of the inputs and units gone, little lost


@pytest.mark.parametrize("name", ["group_lasso", "growl", "cges"])
def test_defaults_remove_channels_of_a_cnn(name):
    """Only {name, target_sparsity}: channels go, at each target, fewer FLOPs the higher it is."""
    flops = []
    for target in TARGETS:
        result = fit(TrialConfig.from_dict(cnn_cfg({"name": name, "target_sparsity": target})), threads=2)
        m = result.metrics
        assert abs(m["target_reached"] - target) <= 0.1
        assert abs(zero_fraction(result, "groups") - target) <= 0.1
        shapes = {r["name"]: (r["shape"], r["compact_shape"]) for r in m["layers"]}
        removed = sum(dense[0] - small[0] for dense, small in shapes.values())
        assert removed > 0  # output channels / units physically removed
        assert shapes["conv2"][1][0] < 64 or shapes["conv1"][1][0] < 32
        flops.append(m["flops_compact"])
        if name != "cges" and target == 0.5:
            assert m["test_accuracy"] > 0.8
    assert flops[0] > flops[1] > flops[2]


@pytest.mark.parametrize("name", ["l1", "exclusive_lasso"])
def test_elementwise_families_target_weights(name):
    for target in (0.3, 0.7):
        result = fit(TrialConfig.from_dict(mlp_cfg({"name": name, "target_sparsity": target}, epochs=5)))
        m = result.metrics
        assert m["target_unit"] == "elements"
        assert abs(m["target_reached"] - target) <= 0.1
        assert abs(zero_fraction(result, "elements") - target) <= 0.1


def test_a_far_too_strong_start_is_tamed():
    """lam 100x too large would zero every input group at the first prox; the band holds it."""
    result = fit(TrialConfig.from_dict(mlp_cfg({"name": "group_lasso", "lam": 50.0, "target_sparsity": 0.4},
                                               epochs=6)))
    m = result.metrics
    assert abs(m["target_reached"] - 0.4) <= 0.1
    assert result.history[-1]["strength"]["fc1"] < 50.0  # lowered from the start
    assert m["test_accuracy"] > 0.5


def test_resume_continues_the_controller():
    cfg = TrialConfig.from_dict(mlp_cfg({"name": "cges", "target_sparsity": 0.5}, epochs=4, hidden=(32,)))
    states = {}
    full = fit(cfg, report=lambda e: states.__setitem__(e.metrics["epoch"], copy.deepcopy(e.state())))
    assert "target" in states[2]
    resumed = fit(cfg, resume=states[2])
    assert resumed.history[-1]["strength"] == full.history[-1]["strength"]
    assert resumed.metrics["target_reached"] == full.metrics["target_reached"]
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)


def test_params_compact_equals_the_saved_compact_model(tmp_path):
    result = fit(TrialConfig.from_dict(mlp_cfg({"name": "group_lasso", "target_sparsity": 0.5}, epochs=3)))
    save_run(result, tmp_path)
    model = load_compact(tmp_path / "compact_model.pt")
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["params_compact"] == sum(p.numel() for p in model.parameters())
    assert saved["params_compact"] == sum(p.numel() for p in result.compact_model.parameters())


# ----------------------------------------------------------------------------- search


def test_search_spec_can_search_target_sparsity(tmp_path):
    from search.spec import load_spec

    spec = {"name": "targets", "base": {"device": "cpu", "data": {"name": "digits"},
                                        "model": {"name": "mlp", "hidden": [16]},
                                        "optim": {"name": "sgd", "lr": 0.1, "epochs": 2}},
            "regularizers": {"group_lasso": {"target_sparsity": {"type": "uniform", "low": 0.0, "high": 0.95}},
                             "growl": {"target_sparsity": {"type": "uniform", "low": 0.0, "high": 0.95}}},
            "trials": 2,
            "objectives": [{"metric": "val_accuracy", "mode": "max"}, {"metric": "params_compact", "mode": "min"}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = load_spec(path)
    assert set(loaded.families) == {"group_lasso", "growl"}
    assert loaded.objective_names() == ["val_accuracy", "params_compact"]  # the physical size is an objective
    from search.frontier import DENSE_REFERENCE

    assert DENSE_REFERENCE["params_compact"] == "params_total"  # hypervolume: relative to the dense network
    # the same target for every family, from the base
    spec["base"]["regularizer"] = {"target_sparsity": 0.5}
    spec["regularizers"] = {"group_lasso": {"lam": 0.1}, "cges": {"lam": 1e-2}}
    path.write_text(yaml.safe_dump(spec))
    assert set(load_spec(path).families) == {"group_lasso", "cges"}


@pytest.mark.parametrize("name", ["group_lasso", "growl"])
def test_target_on_channel_groups_of_a_conv_bn_net(name, tmp_path):
    """`groups: channel` with a target: the target is reached on channel rows (filter, bias and
    BatchNorm together), those channels leave the compact model, and it computes what the masked
    network computes in eval mode."""
    import sys
    import types

    from torch import nn

    module = types.ModuleType("conv_bn_seq")
    module.build = lambda num_classes: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, num_classes))
    sys.modules["conv_bn_seq"] = module
    try:
        cfg = TrialConfig.from_dict({"seed": 0, "device": "cpu", "data": {"name": "digits"},
                                     "model": {"name": "python", "factory": "conv_bn_seq:build"},
                                     "optim": {"name": "adam", "lr": 0.01, "epochs": 4, "batch_size": 64},
                                     "regularizer": {"name": name, "target_sparsity": 0.5, "groups": "channel"}})
        result = fit(cfg)
        m = result.metrics
        assert abs(m["target_reached"] - 0.5) <= 0.1
        assert m["params_compact"] < 0.7 * m["params_total"] and m["test_accuracy"] > 0.8
        save_run(result, tmp_path)
        small = load_compact(tmp_path / "compact_model.pt").eval()
        x = torch.randn(16, 1, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(small(x), result.model.eval()(x), rtol=1e-4, atol=1e-5)
    finally:
        del sys.modules["conv_bn_seq"]



def test_masked_groups_count_as_zeros_for_the_target_with_momentum():
    """With mask_pruned and momentum, the optimizer step moves masked groups off zero before the
    prox. The controller must count them as the zeros they are about to be again: counted live,
    they push its zero count past the band, it lowers the strength to keep them, and the masks then
    zero them anyway, so the strength falls for nothing (on MNIST-10k this fed on itself into
    overshoots, then a layer with every group zero: docs/RESULTS.md §10)."""
    import torch

    from trainables import TrialConfig
    from trainables.train import _Trainer

    cfg = TrialConfig.from_dict({
        "device": "cpu", "model": {"name": "mlp", "hidden": [32]},
        "optim": {"name": "momentum", "momentum": 0.9, "lr": 0.05, "epochs": 4},
        "regularizer": {"name": "group_lasso", "lam": 0.5, "groups": "input", "layers": [0],
                        "mask_pruned": True, "target_sparsity": 0.9}})
    trainer = _Trainer(cfg)
    layer = trainer.layers[0]
    W = layer.module.weight  # [32, 64]: groups are the 64 input columns
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:40] = True
    trainer.dead[layer.name] = dead
    trainer.masks[layer.name] = (~dead).to(W.dtype).expand_as(W).contiguous()
    with torch.no_grad():
        W[:, :40] = 1e-3  # what a momentum step leaves in masked groups
    before = trainer.target.layers[0].multiplier
    trainer._prox(0.05, step=0)
    assert int((W.abs().sum(0) == 0).sum()) == 40
    assert trainer.target.layers[0].multiplier == before  # not lowered to spare groups that are dead
