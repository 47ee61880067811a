"""fit(): short real runs on digits for every regularizer, checkpoints, masks, divergence."""

from __future__ import annotations

import io

import pytest
import torch

from trainables import TrainingDiverged, TrialConfig, fit
from trainables.regularizers import implementations
from trainables.train import evaluate

# Strong enough settings for every sparsity regularizer to zero something in 3 epochs.
STRONG = {
    "none": {},
    "l2": {"lam": 1e-2},
    "l1": {"lam": 1e-2},
    # per-step prox: three per-epoch steps leave too narrow a window between nothing and collapse
    "group_lasso": {"lam": 0.05, "layers": "all", "prox_every": "step"},
    "exclusive_lasso": {"lam": 1e-2},
    "cges": {"lam": 3e-2},
    "growl": {"lambda1": 0.05, "lambda2": 1e-4, "layers": "all", "prox_every": "step"},
    "magnitude": {"final": 0.5, "end_epoch": 2, "every": 5},
    "channel_magnitude": {"final": 0.3, "end_epoch": 2, "every": 5},
}


def small(reg: dict | None = None, **sections) -> TrialConfig:
    data = {
        "model": {"name": "mlp", "hidden": [32]},
        "optim": {"epochs": 3, "batch_size": 64},
        "regularizer": reg or {"name": "none"},
        "device": "cpu",
    }
    data.update(sections)
    return TrialConfig.from_dict(data)


def test_strong_settings_cover_the_registry():
    assert set(STRONG) == set(implementations())


@pytest.mark.parametrize("name", sorted(STRONG))
def test_short_fit_per_regularizer(name):
    reports = []
    result = fit(small({"name": name, **STRONG[name]}), report=lambda e: reports.append(e.metrics))
    m = result.metrics
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert reports[-1]["test_accuracy"] == m["test_accuracy"]  # the last report carries the finals
    for key in ("test_accuracy", "val_accuracy", "params_total", "params_nonzero", "params_unique",
                "sparsity", "compression_rate", "param_sharing", "flops_dense", "flops_compact", "layers"):
        assert key in m
    assert 0.5 < m["val_accuracy"] <= 1.0  # 10 classes: chance is 0.1
    if name in ("none", "l2"):
        assert m["sparsity"] == 0.0
    else:
        assert m["sparsity"] > 0.0, name
    assert m["params_nonzero"] <= m["params_total"]
    assert m["flops_compact"] <= m["flops_dense"]
    # the compact network computes exactly what the trained network computes
    x = torch.randn(16, 1, 8, 8)
    result.model.eval()
    torch.testing.assert_close(result.compact_model(x), result.model(x), rtol=1e-4, atol=1e-5)


def test_same_config_same_numbers():
    cfg = small({"name": "cges", **STRONG["cges"]})
    a, b = fit(cfg).metrics, fit(cfg).metrics
    for key in ("params_nonzero", "params_unique", "flops_compact", "test_accuracy", "val_accuracy"):
        assert a[key] == b[key], key
    c = fit(cfg.replace(seed=1)).metrics
    assert c["val_loss"] != a["val_loss"]


def test_resume_from_checkpoint_matches_uninterrupted_run():
    cfg = small({"name": "growl", **STRONG["growl"]}, optim={"epochs": 4, "name": "momentum"},
                tying={"enabled": True, "retrain_epochs": 2})
    states = {}

    def keep(epoch):
        buf = io.BytesIO()  # round trip through torch.save / weights_only load, as Ray would
        torch.save(epoch.state(), buf)
        buf.seek(0)
        states[epoch.metrics["epoch"]] = torch.load(buf, weights_only=True)

    full = fit(cfg, report=keep)
    # mid-training, mid-training with groups already masked (more die after the resume),
    # mid-retraining (after tying started), after the end
    for epoch in (2, 3, 5, 6):
        reports = []
        resumed = fit(cfg, resume=states[epoch], report=reports.append)
        assert resumed.metrics["params_nonzero"] == full.metrics["params_nonzero"]
        assert resumed.metrics["val_loss"] == pytest.approx(full.metrics["val_loss"], rel=1e-6)
        assert [h["epoch"] for h in resumed.history] == list(range(1, 7))
        # resumed after the end: the last epoch is reported again, with the result
        assert [r.metrics["epoch"] for r in reports] == (list(range(epoch + 1, 7)) if epoch < 6 else [6])
        assert reports[-1].result is not None and reports[-1].metrics["test_accuracy"] == resumed.metrics["test_accuracy"]


def test_resume_rejects_another_config():
    cfg = small()
    states = []
    fit(cfg, report=lambda e: states.append(e.state()))
    with pytest.raises(ValueError, match="different config"):
        fit(cfg.replace(seed=3), resume=states[0])


def test_pruned_groups_stay_pruned_with_masks():
    cfg = small({"name": "group_lasso", "lam": 1.0, "layers": "all", "mask_pruned": True},
                optim={"epochs": 6, "name": "momentum", "lr": 0.05})
    zero_rows = []

    def watch(epoch):
        W = epoch.state()["model"]["fc2.weight"]  # rows of the input grouping = columns
        zero_rows.append(set(torch.nonzero(W.abs().sum(0) == 0).flatten().tolist()))

    fit(cfg, report=watch)
    assert zero_rows[-1], "nothing was pruned"
    for before, after in zip(zero_rows, zero_rows[1:]):
        assert before <= after  # once pruned, never revived (momentum would revive without masks)


def test_prox_every_epoch_applies_once_per_epoch(monkeypatch):
    from trainables.regularizers.group_lasso import GroupLasso

    calls = []
    original = GroupLasso.prox
    monkeypatch.setattr(GroupLasso, "prox", lambda self, W, step: calls.append(step) or original(self, W, step))
    fit(small({"name": "group_lasso", "lam": 0.1, "layers": [0], "prox_every": "epoch"}))
    assert len(calls) == 3  # one regularized layer, three epochs
    calls.clear()
    cfg = small({"name": "group_lasso", "lam": 0.1, "layers": [0], "prox_every": "step"})
    fit(cfg)
    n_train = len(__import__("trainables.data", fromlist=["load"]).load(cfg.data).train)
    assert len(calls) == 3 * -(-n_train // 64)  # every optimizer step
    assert set(calls) == {0.1}  # step = the current learning rate


def test_prox_step_follows_the_learning_rate_schedule(monkeypatch):
    from trainables.regularizers.l1 import L1

    steps = []
    original = L1.prox
    monkeypatch.setattr(L1, "prox", lambda self, W, step: steps.append(step) or original(self, W, step))
    fit(small({"name": "l1", "lam": 1e-3, "prox_every": "epoch", "layers": [0]},
              optim={"epochs": 3, "lr": 0.1, "lr_schedule": "step", "lr_step": 1, "lr_gamma": 0.5}))
    assert steps == pytest.approx([0.1, 0.05, 0.025])


def test_divergence_names_epoch_and_regularizer():
    cfg = small({"name": "l1", "lam": 1e-3}, optim={"epochs": 3, "lr": 1e12})
    with pytest.raises(TrainingDiverged, match=r"epoch 1 .*regularizer 'l1'"):
        fit(cfg)


def test_tying_retrains_with_tied_rows_and_reports_sharing():
    cfg = small({"name": "growl", "lambda1": 0.2, "lambda2": 1e-3, "layers": "all"},
                optim={"epochs": 4}, tying={"enabled": True, "preference": 0.5, "retrain_epochs": 2})
    result = fit(cfg)
    assert [h["phase"] for h in result.history] == ["train"] * 4 + ["retrain"] * 2
    tied = [t for t in result.ties if t.enabled]
    assert tied, [t.summary() for t in result.ties]
    modules = dict(result.model.named_modules())
    from trainables.groups import to_groups

    for t in tied:
        G = to_groups(modules[t.name].weight.detach(), t.grouping)
        for label in set(t.labels[t.labels >= 0].tolist()):
            rows = G[torch.as_tensor((t.labels == label).nonzero()[0])]
            torch.testing.assert_close(rows, rows[:1].expand_as(rows))  # still tied after retraining
    assert result.metrics["param_sharing"] > 1.0
    assert result.metrics["tying"] == [t.summary() for t in result.ties]
    assert all("converged" in t and t["damping"] >= 0.9 for t in result.metrics["tying"])
    assert result.metrics["tying_layers"] == len(result.ties) == 2
    assert result.metrics["tying_converged_layers"] == sum(t.converged for t in result.ties) >= len(tied)


def test_flops_estimate_per_epoch_bounds_the_compact_count():
    """The per-epoch FLOPs estimate (what MO-ASHA ranks by) is the dense count while nothing is
    zero and never below the exact compacted count at the end."""
    dense = fit(small({"name": "none"}, optim={"epochs": 1}))
    assert dense.history[-1]["flops_estimate"] == dense.metrics["flops_dense"]
    sparse = fit(small({"name": "group_lasso", **STRONG["group_lasso"]}))
    estimates = [h["flops_estimate"] for h in sparse.history]
    assert sparse.metrics["flops_compact"] <= estimates[-1] < sparse.metrics["flops_dense"], estimates


def test_params_estimate_per_epoch_is_dense_first_and_tracks_the_compact_count():
    """The per-epoch stand-in for params_compact (what MO-ASHA ranks a params_compact objective
    by): every parameter while nothing is zero; on an MLP whose units are removed whole (channel
    groups: a unit's row, bias and the next layer's column), the compact count exactly."""
    dense = fit(small({"name": "none"}, optim={"epochs": 1}))
    assert dense.history[-1]["params_estimate"] == dense.metrics["params_total"] == dense.metrics["params_compact"]
    sparse = fit(small({"name": "group_lasso", "groups": "channel", "target_sparsity": 0.5, "layers": "all"},
                       optim={"epochs": 6}))
    estimates = [h["params_estimate"] for h in sparse.history]
    assert sparse.metrics["params_compact"] < sparse.metrics["params_total"], sparse.metrics
    assert estimates[-1] == sparse.metrics["params_compact"], estimates
    assert estimates == sorted(estimates, reverse=True)  # units only die (dead ones stay at zero)


def test_evaluate_matches_manual_accuracy():
    from trainables.data import load

    data = load(TrialConfig().data)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    got = evaluate(model, data.test, batch_size=50)
    with torch.no_grad():
        manual = (model(data.test.X).argmax(1) == data.test.y).double().mean().item()
    assert got["accuracy"] == pytest.approx(manual)


def test_a_network_at_chance_level_is_called_that():
    """chance_accuracy is the most frequent test class's share; a network that learned nothing
    (a learning rate of 1e-7) is flagged at chance, a trained one is not."""
    from trainables.data import load

    cfg = small()
    test = load(cfg.data).test
    majority = torch.bincount(test.y).max().item() / len(test.y)
    stuck = fit(small(optim={"epochs": 2, "lr": 1e-7})).metrics
    trained = fit(cfg).metrics
    for m in (stuck, trained):
        assert m["chance_accuracy"] == pytest.approx(majority)
        assert 0 < m["val_chance_accuracy"] < 1
    assert stuck["test_at_chance"] == stuck["val_at_chance"] == 1
    assert trained["test_at_chance"] == trained["val_at_chance"] == 0 and trained["test_accuracy"] > 0.8
