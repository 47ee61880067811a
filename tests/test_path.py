"""Sparsity paths (``path:``): one run, one point per target, each re-run exactly by its config."""

from __future__ import annotations

import io

import pytest
import torch

from trainables import TrialConfig, fit
from trainables.config import ConfigError

SCALARS = ("test_accuracy", "test_loss", "params_compact", "flops_compact", "params_nonzero", "val_accuracy")


def path_cfg(reg: dict, **path) -> TrialConfig:
    return TrialConfig.from_dict({
        "model": {"name": "mlp", "hidden": [32]}, "device": "cpu",
        "optim": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "regularizer": reg, "path": {"targets": [0.3, 0.6], "finetune_epochs": 1, **path}})


def saved(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)  # at once, as a checkpoint is: the state holds the live tensors
    return buf.getvalue()


def run(cfg: TrialConfig, resume=None):
    points, states = [], []
    result = fit(cfg, lambda e: (states.append(saved(e.state())),
                                 points.append(e) if e.result is not None else None), resume=resume, threads=1)
    return result, points, states


@pytest.mark.parametrize("reg", [{"name": "group_lasso", "lam": 0.01}, {"name": "channel_magnitude"},
                                 {"name": "l1", "lam": 0.01}])
def test_one_point_per_target_each_rerun_exactly(reg):
    cfg = path_cfg(reg)
    result, points, _ = run(cfg)
    assert [p.metrics["point"] for p in points] == [0, 1]
    assert [p.metrics["target"] for p in points] == [0.3, 0.6]
    assert [p.final for p in points] == [False, True]
    assert [p.metrics["epoch"] for p in points] == [3, 6]  # epochs trained so far: 2 + 1 per stage
    # each point's result carries the config that re-runs to it: the path up to its target
    assert [p.result.config.path.targets for p in points] == [[0.3], [0.3, 0.6]]
    assert points[-1].result.config == cfg and result.metrics["point"] == 1
    # sparser at every point, and the point's zeros are the target (units: groups, or weights for l1)
    reached = [p.metrics.get("target_reached") for p in points]
    if reached[0] is not None:
        assert reached[0] == pytest.approx(0.3, abs=0.05) and reached[1] == pytest.approx(0.6, abs=0.05)
    assert points[1].metrics["params_nonzero"] < points[0].metrics["params_nonzero"]
    assert [p["point"] for p in result.metrics["points"]] == [0, 1]
    first = fit(points[0].result.config, threads=1)
    for key in SCALARS:
        assert first.metrics[key] == points[0].metrics[key], key


def test_fine_tuning_keeps_the_zeros_and_runs_without_prox():
    result, points, _ = run(path_cfg({"name": "group_lasso", "lam": 0.01}, finetune_epochs=2))
    phases = [(h["stage"], h["phase"]) for h in result.history]
    assert phases == [(0, "train"), (0, "train"), (0, "finetune"), (0, "finetune"),
                      (1, "train"), (1, "train"), (1, "finetune"), (1, "finetune")]
    tuned = [h for h in result.history if h["phase"] == "finetune"]
    # fine-tuning at finetune_lr (default optim.lr) with every zero masked: the sparsity stays put
    assert all(h["lr"] == 0.05 for h in tuned)
    assert tuned[0]["weights_nonzero"] == tuned[1]["weights_nonzero"]
    assert tuned[2]["weights_nonzero"] == tuned[3]["weights_nonzero"]


@pytest.mark.parametrize("continue_from", ["finetuned", "stage"])
def test_resume_from_any_checkpoint_gives_the_same_points(continue_from):
    cfg = path_cfg({"name": "group_lasso", "lam": 0.01}, continue_from=continue_from, finetune_epochs=2)
    result, points, states = run(cfg)
    # inside a stage, at the fine-tuning boundary, mid fine-tuning, right after a point
    for k in (1, 2, 3, 4, 6):
        state = torch.load(io.BytesIO(states[k - 1]), weights_only=True)  # no pickled objects
        resumed, later, _ = run(cfg, resume=state)
        for key in SCALARS:
            assert resumed.metrics[key] == result.metrics[key], (k, key)
        assert [p.metrics["point"] for p in later] == [p.metrics["point"] for p in points if p.metrics["epoch"] > k]
        assert [p["test_accuracy"] for p in resumed.metrics["points"]] == \
            [p.metrics["test_accuracy"] for p in points]


def test_continue_from_changes_where_the_next_stage_starts():
    a, _, _ = run(path_cfg({"name": "group_lasso", "lam": 0.01}, continue_from="finetuned"))
    b, _, _ = run(path_cfg({"name": "group_lasso", "lam": 0.01}, continue_from="stage"))
    assert a.metrics["points"][0]["test_accuracy"] == b.metrics["points"][0]["test_accuracy"]
    assert a.metrics["test_loss"] != b.metrics["test_loss"]


def test_a_path_with_tying_ties_while_fine_tuning():
    cfg = path_cfg({"name": "growl", "lambda1": 0.02, "lambda2": 0.01, "groups": "input"},
                   finetune_epochs=1)
    cfg = cfg.replace(tying__enabled=True, tying__preference=0.5)
    result, points, _ = run(cfg)
    assert [p.metrics["point"] for p in points] == [0, 1]
    assert all(p.metrics["tying_layers"] >= 1 for p in points)
    first = fit(points[0].result.config, threads=1)
    assert first.metrics["test_accuracy"] == points[0].metrics["test_accuracy"]


@pytest.mark.parametrize("data, field, text", [
    ({"regularizer": {"name": "l2"}, "path": {"targets": [0.5]}}, "path.targets", "no sparsity"),
    ({"regularizer": {"name": "none"}, "path": {"targets": [0.5]}}, "path.targets", "no sparsity"),
    ({"regularizer": {"name": "group_lasso"}, "path": {"targets": [0.5, 0.5]}}, "path.targets", "increasing"),
    ({"regularizer": {"name": "group_lasso"}, "path": {"targets": [0.0, 0.5]}}, "path.targets", "> 0"),
    ({"regularizer": {"name": "group_lasso"}, "path": {"targets": []}}, "path.targets", "at least one"),
    ({"regularizer": {"name": "group_lasso", "target_sparsity": 0.5}, "path": {"targets": [0.5]}},
     "regularizer.target_sparsity", "path.targets"),
    ({"regularizer": {"name": "group_lasso"}, "path": {"targets": [0.5], "finetune_epochs": -1}},
     "path.finetune_epochs", ">= 0"),
    ({"regularizer": {"name": "magnitude"}, "optim": {"epochs": 0}, "path": {"targets": [0.5]}},
     "optim.epochs", "path"),
])
def test_bad_paths_are_one_line_errors(data, field, text):
    with pytest.raises(ConfigError) as e:
        TrialConfig.from_dict(data)
    message = str(e.value)
    assert field in message and text in message and "\n" not in message


def test_defaults_are_filled_in_and_round_trip():
    cfg = TrialConfig.from_dict({"regularizer": {"name": "magnitude"}, "optim": {"epochs": 4, "lr": 0.2},
                                 "path": {"targets": [0.5, 0.8]}})
    assert cfg.path.epochs == 4 and cfg.path.finetune_lr == 0.2 and cfg.path.finetune_epochs == 0
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.at_point(0).path.targets == [0.5] and cfg.at_point(1) == cfg
    with pytest.raises(ValueError):
        cfg.at_point(2)
