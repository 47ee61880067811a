"""The pruning baselines ``magnitude`` and ``channel_magnitude``: Zhu & Gupta's schedule to the
count, masks that never let a weight come back, resume and re-run, bad values, whole groups."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from trainables import TrialConfig, fit
from trainables import train as train_module
from trainables.config import ConfigError
from trainables.groups import to_groups
from trainables.regularizers import Pruner, build_layer_regularizers
from trainables.regularizers.gradual import is_pruning_step, sparsity_at

# ----------------------------------------------------------------------------- references


def zhu_gupta(t: int, s_i: float, s_f: float, t0: int, n_dt: int) -> float:
    """The paper's formula, written out again: s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3."""
    return s_f + (s_i - s_f) * (1 - (t - t0) / n_dt) ** 3


def expected_count(s: float, n: int) -> int:
    """round(s n), halves up (0.5 -> 1)."""
    return int(math.floor(s * n + 0.5))


def separated(score: torch.Tensor, chosen: torch.Tensor) -> bool:
    """Every chosen score is at most every other one (the k smallest were chosen)."""
    if not chosen.any() or chosen.all():
        return True
    return bool(score[chosen].max() <= score[~chosen].min())


def cfg_dict(reg: dict, **sections) -> dict:
    data = {"device": "cpu", "model": {"name": "mlp", "hidden": [16]},
            "optim": {"epochs": 4, "batch_size": 64}, "regularizer": reg}
    data.update(sections)
    return data


def small(reg: dict, **sections) -> TrialConfig:
    return TrialConfig.from_dict(cfg_dict(reg, **sections))


# ----------------------------------------------------------------------------- the schedule


def test_schedule_worked_example():
    # s_i = 0.1, s_f = 0.5, window steps 10..20: half way, 0.5 - 0.4 * 0.5^3 = 0.45
    assert sparsity_at(15, initial=0.1, final=0.5, t0=10, t1=20) == pytest.approx(0.45)
    assert sparsity_at(10, initial=0.1, final=0.5, t0=10, t1=20) == 0.1
    assert sparsity_at(20, initial=0.1, final=0.5, t0=10, t1=20) == 0.5
    assert sparsity_at(25, initial=0.1, final=0.5, t0=10, t1=20) == 0.5
    for t in range(10, 21):
        assert sparsity_at(t, initial=0.1, final=0.5, t0=10, t1=20) == pytest.approx(zhu_gupta(t, 0.1, 0.5, 10, 10))
    # every 3 steps from t0, and the window's last step; never before the first optimizer step
    assert [t for t in range(40) if is_pruning_step(t, t0=10, t1=20, every=3)] == [10, 13, 16, 19, 20]
    assert [t for t in range(40) if is_pruning_step(t, t0=0, t1=9, every=4)] == [4, 8, 9]


def _layers(reg: dict, seed: int = 0):
    cfg = TrialConfig.from_dict({"regularizer": reg, "optim": {"epochs": 10}})
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 3))
    layers = build_layer_regularizers(cfg.regularizer, net)
    pruner = layers[0].regularizer
    assert isinstance(pruner, Pruner)
    return cfg, layers, pruner


def _simulate(reg: dict, steps_per_epoch: int, check, seed: int = 0):
    """Drive a pruner through a whole run by hand, as the training loop does: after each
    "optimizer step" (random updates that also try to revive pruned weights) prune, then mask."""
    cfg, layers, pruner = _layers(reg, seed)
    weights = [layer.module.weight for layer in layers]
    gen = torch.Generator().manual_seed(seed + 1)
    keep: list[torch.Tensor | None] = [None] * len(layers)
    for step in range(cfg.optim.epochs * steps_per_epoch):
        with torch.no_grad():
            for W in weights:
                W.add_(0.05 * torch.randn(W.shape, generator=gen))  # revives every masked weight
        before = [k.clone() if k is not None else None for k in keep]
        new = pruner.prune(weights, keep, step=step, steps_per_epoch=steps_per_epoch)
        if new is not None:
            for i, (k_old, k_new) in enumerate(zip(before, new)):
                assert k_new.dtype == torch.bool and k_new.shape == weights[i].shape
                if k_old is not None:
                    assert not (k_new & ~k_old.bool()).any(), "a pruned weight came back"
            check(step + 1, cfg, layers, [w.detach().clone() for w in weights], before, new)
            keep = [k.float() for k in new]
        with torch.no_grad():
            for W, k in zip(weights, keep):
                if k is not None:
                    W.mul_(k)
    return keep


def _window(cfg: TrialConfig, spe: int) -> tuple[int, int]:
    r = cfg.regularizer
    return r.start_epoch * spe, r.end_epoch * spe


@pytest.mark.parametrize("glob", [False, True], ids=["per_layer", "global"])
def test_magnitude_prunes_the_scheduled_count_at_every_pruning_step(glob):
    reg = {"name": "magnitude", "initial": 0.05, "final": 0.8, "start_epoch": 2, "end_epoch": 7,
           "every": 4, "global": glob}
    spe = 5
    seen = []

    def check(t, cfg, layers, weights, before, new):
        t0, t1 = _window(cfg, spe)
        assert t0 <= t <= t1 and ((t - t0) % 4 == 0 or t == t1)
        s = zhu_gupta(t, 0.05, 0.8, t0, t1 - t0)
        pruned = [int((~k).sum()) for k in new]
        sizes = [w.numel() for w in weights]
        if glob:
            assert sum(pruned) == expected_count(s, sum(sizes))
            # exactly the smallest |w| over all layers, the ones pruned before first
            score = torch.cat([torch.where(b.bool(), w.abs(), torch.full_like(w, -1.0)).flatten()
                               if b is not None else w.abs().flatten() for w, b in zip(weights, before)])
            chosen = torch.cat([(~k).flatten() for k in new])
            assert separated(score, chosen)
        else:
            assert pruned == [expected_count(s, n) for n in sizes]
            for w, b, k in zip(weights, before, new):
                score = w.abs() if b is None else torch.where(b.bool(), w.abs(), torch.full_like(w, -1.0))
                assert separated(score.flatten(), (~k).flatten())
        seen.append(t)

    keep = _simulate(reg, spe, check)
    assert seen == [10, 14, 18, 22, 26, 30, 34, 35]  # t0 = 10, every 4, t1 = 35
    # the final sparsity is reached exactly and kept through the fine-tuning epochs
    sizes = [k.numel() for k in keep]
    pruned = [int((k == 0).sum()) for k in keep]
    if glob:
        assert sum(pruned) == expected_count(0.8, sum(sizes))
    else:
        assert pruned == [expected_count(0.8, n) for n in sizes]


@pytest.mark.parametrize("glob", [False, True], ids=["per_layer", "global"])
@pytest.mark.parametrize("groups", ["input", "filter"])
def test_channel_magnitude_prunes_whole_groups_on_schedule(glob, groups):
    reg = {"name": "channel_magnitude", "final": 0.6, "start_epoch": 1, "end_epoch": 5, "every": 3,
           "global": glob, "groups": groups}
    spe = 4
    steps = []

    def check(t, cfg, layers, weights, before, new):
        t0, t1 = _window(cfg, spe)
        s = zhu_gupta(t, 0.0, 0.6, t0, t1 - t0)
        rows = [to_groups(k, groups) for k in new]
        for r in rows:  # whole groups only
            assert (r.all(1) | ~r.any(1)).all()
        pruned = [int((~r.any(1)).sum()) for r in rows]
        n = [r.shape[0] for r in rows]
        if glob:
            assert sum(pruned) == expected_count(s, sum(n))
            # ranked by norm / sqrt(group size) over all layers
            score = torch.cat([torch.linalg.vector_norm(to_groups(w, groups), dim=1) / math.sqrt(r.shape[1])
                               for w, r in zip(weights, rows)])
            was = torch.cat([to_groups(b, groups).eq(0).all(1) if b is not None else torch.zeros(r.shape[0], dtype=torch.bool)
                             for b, r in zip(before, rows)])
            score[was] = -1
            chosen = torch.cat([~r.any(1) for r in rows])
            assert separated(score, chosen)
        else:
            assert pruned == [expected_count(s, m) for m in n]
        steps.append(t)

    _simulate(reg, spe, check)
    assert steps == [4, 7, 10, 13, 16, 19, 20]


def test_ties_are_broken_by_position_and_counts_stay_exact():
    """Equal magnitudes: the count is still exact, and the first ones (flat order, layer order)
    go first, the same way every time."""
    cfg, layers, pruner = _layers({"name": "magnitude", "final": 0.5, "end_epoch": 1, "every": 1,
                                   "global": True})
    with torch.no_grad():
        for layer in layers:
            layer.module.weight.fill_(0.25)
    weights = [layer.module.weight for layer in layers]
    a = pruner.prune(weights, [None] * 3, step=0, steps_per_epoch=1)
    b = pruner.prune(weights, [None] * 3, step=0, steps_per_epoch=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    flat = torch.cat([(~k).flatten() for k in a])
    k = expected_count(0.5, flat.numel())
    assert flat[:k].all() and not flat[k:].any()


# ----------------------------------------------------------------------------- in training


def _masked(state: dict) -> dict[str, int]:
    return {name: int((m == 0).sum()) for name, m in state["masks"].items()}


@pytest.mark.parametrize("reg", [
    {"name": "magnitude", "final": 0.7, "start_epoch": 1, "end_epoch": 3, "every": 7},
    {"name": "magnitude", "final": 0.7, "start_epoch": 1, "end_epoch": 3, "every": 7, "global": True},
    {"name": "channel_magnitude", "final": 0.5, "start_epoch": 0, "end_epoch": 2, "every": 5},
], ids=["magnitude", "magnitude_global", "channel_magnitude"])
def test_fit_reaches_the_schedule_at_each_epoch(reg):
    cfg = small(reg)
    states = []
    result = fit(cfg, report=lambda e: states.append(e.state()))
    spe = math.ceil(1293 / 64)  # digits: 1797 examples, 20% test, 10% of the rest validation
    trainer = train_module._Trainer(cfg)
    assert trainer.steps_per_epoch == spe
    r = cfg.regularizer
    t0, t1 = r.start_epoch * spe, r.end_epoch * spe
    unit = "weights" if r.name == "magnitude" else "groups"
    for epoch, state in enumerate(states, start=1):
        t = epoch * spe
        last = max((u for u in range(1, t + 1) if is_pruning_step(u, t0=t0, t1=t1, every=r.every)), default=None)
        masked = _masked(state)
        if last is None:
            assert not masked
            continue
        s = zhu_gupta(last, r.initial, r.final, t0, t1 - t0)
        sizes = {l.name: (l.module.weight.numel() if unit == "weights" else l.groups().shape[0])
                 for l in trainer.layers}
        if unit == "groups":  # masked weights: whole groups of the layer's size
            masked = {n: c // (trainer.layers[i].module.weight.numel() // sizes[n])
                      for i, (n, c) in enumerate(masked.items())}
        if r.model_dump().get("global"):
            assert sum(masked.values()) == expected_count(s, sum(sizes.values()))
        else:
            assert masked == {n: expected_count(s, m) for n, m in sizes.items()}
    # the trained network's weights are zero where masked, and compaction counts them
    for layer in trainer.layers:
        mask = states[-1]["masks"][layer.name]
        W = dict(result.model.named_modules())[layer.name].weight
        assert (W[mask == 0] == 0).all()
    assert result.metrics["params_nonzero"] < result.metrics["params_total"]


@pytest.mark.parametrize("optim", ["momentum", "adam"])
def test_pruned_weights_never_revive(monkeypatch, optim):
    """Checked after every optimizer step: with momentum or Adam the update of a pruned weight is
    not zero (its momentum still pushes), yet it stays exactly zero and the mask only grows."""
    cfg = small({"name": "magnitude", "final": 0.8, "start_epoch": 0, "end_epoch": 2, "every": 3},
                optim={"epochs": 3, "name": optim, "lr": 0.05 if optim == "momentum" else 0.01})
    history: list[dict[str, torch.Tensor]] = []
    original = train_module._Trainer._apply_masks

    def watched(self):
        original(self)
        history.append({l.name: l.module.weight.detach().eq(0).clone() for l in self.layers})
        masks = {n: m.eq(0) for n, m in self.masks.items()}
        for name, masked in masks.items():
            assert history[-1][name][masked].all(), "a pruned weight is non-zero"

    monkeypatch.setattr(train_module._Trainer, "_apply_masks", watched)
    fit(cfg)
    assert len(history) == 3 * math.ceil(1293 / 64)
    assert sum(int(z.sum()) for z in history[-1].values()) > 0
    # the zero weights at one step are still zero at every later step (only the masks zero them:
    # a weight that merely touched zero in training would be a coincidence of floats)
    for before, after in zip(history, history[1:]):
        for name in before:
            assert not (before[name] & ~after[name]).any()


@pytest.mark.parametrize("name", ["magnitude", "channel_magnitude"])
def test_resume_mid_schedule_matches_an_uninterrupted_run(name):
    cfg = small({"name": name, "final": 0.6, "start_epoch": 1, "end_epoch": 3, "every": 6, "global": True},
                optim={"epochs": 4, "name": "momentum"})
    states = {}

    def keep(epoch):
        buf = io.BytesIO()  # through torch.save / a weights_only load, as Ray's checkpoints go
        torch.save(epoch.state(), buf)
        buf.seek(0)
        states[epoch.metrics["epoch"]] = torch.load(buf, weights_only=True)

    full = fit(cfg, report=keep)
    for epoch in (1, 2, 3):  # before pruning began, mid-window with masks, at the window's end
        resumed = fit(cfg, resume=states[epoch])
        for a, b in zip(resumed.model.parameters(), full.model.parameters()):
            assert torch.equal(a, b)
        for key in ("params_nonzero", "flops_compact", "val_accuracy", "test_accuracy"):
            assert resumed.metrics[key] == full.metrics[key], key


@pytest.mark.parametrize("name", ["magnitude", "channel_magnitude"])
def test_an_exported_baseline_trial_reruns_exactly(name):
    cfg = small({"name": name, "final": 0.5, "start_epoch": 1, "every": 10})  # end_epoch left out
    exported = cfg.to_dict()
    assert exported["regularizer"]["end_epoch"] == 4  # filled in from optim.epochs
    assert exported["regularizer"]["global"] is False
    again = TrialConfig.from_dict(TrialConfig.from_dict(exported).to_dict())
    assert again == cfg
    import yaml

    from_file = TrialConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert from_file == cfg
    a, b = fit(cfg).metrics, fit(from_file).metrics
    for key in ("params_nonzero", "params_unique", "flops_compact", "val_accuracy", "test_accuracy", "val_loss"):
        assert a[key] == b[key], key


# ----------------------------------------------------------------------------- structure and FLOPs


def test_channel_magnitude_makes_flops_fall_on_an_mlp():
    result = fit(small({"name": "channel_magnitude", "final": 0.5, "end_epoch": 2, "every": 5}))
    m = result.metrics
    assert m["flops_compact"] < m["flops_dense"]
    for info in m["layers"]:
        assert info["zero_groups"] == expected_count(0.5, info["groups"])
    x = torch.randn(8, 1, 8, 8)
    result.model.eval()
    torch.testing.assert_close(result.compact_model(x), result.model(x), rtol=1e-4, atol=1e-5)


def test_channel_magnitude_makes_flops_fall_on_a_cnn():
    cfg = TrialConfig.from_dict({
        "device": "cpu", "data": {"name": "digits", "train_subset": 128},
        "model": {"name": "lenet_cges"}, "optim": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "regularizer": {"name": "channel_magnitude", "final": 0.5, "end_epoch": 1, "every": 1,
                        "groups": "filter"}})
    result = fit(cfg)
    m = result.metrics
    assert m["flops_compact"] < m["flops_dense"]
    for info in m["layers"]:
        assert info["zero_groups"] == expected_count(0.5, info["groups"])


def test_magnitude_is_element_wise():
    result = fit(small({"name": "magnitude", "final": 0.5, "end_epoch": 2, "every": 5}))
    m = result.metrics
    assert m["weights_sparsity"] > 0.4
    # half of every layer's weights pruned, yet (nearly) no whole group: the structure stays
    assert sum(info["zero_groups"] for info in m["layers"]) < sum(info["groups"] for info in m["layers"]) / 4


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("name", ["magnitude", "channel_magnitude"])
@pytest.mark.parametrize("change, expected", [
    ({"final": 1.0}, "regularizer.final: `final < 1` must hold (got 1.0)"),
    ({"final": -0.1}, "regularizer.final: `final >= 0` must hold (got -0.1)"),
    ({"initial": 0.6, "final": 0.5}, "regularizer.initial: `initial <= final` must hold (final=0.5) (got 0.6)"),
    ({"initial": -0.1}, "regularizer.initial: `initial >= 0` must hold (got -0.1)"),
    ({"start_epoch": -1}, "regularizer.start_epoch: `start_epoch >= 0` must hold (got -1)"),
    ({"start_epoch": 2, "end_epoch": 2}, "regularizer.end_epoch: `start_epoch < end_epoch` must hold "
                                         "(start_epoch=2) (got 2)"),
    ({"end_epoch": 5}, "regularizer.end_epoch: `end_epoch <= optim.epochs` must hold (optim.epochs=4) (got 5)"),
    ({"start_epoch": 4}, "regularizer.start_epoch: `start_epoch < end_epoch` must hold (end_epoch=4, "
                         "from optim.epochs) (got 4)"),
    ({"every": 0}, "regularizer.every: `every >= 1` must hold (got 0)"),
    ({"global": "yes"}, "regularizer.global: "),
    ({"prox_every": "epoch"}, "regularizer.prox_every: "),
    ({"lam": 0.1}, "regularizer.lam: not a parameter of regularizer"),
])
def test_bad_values_are_rejected_with_the_field_named(name, change, expected):
    with pytest.raises(ConfigError) as info:
        small({"name": name, **change})
    assert expected in str(info.value)


# ----------------------------------------------------------------------------- in a search spec


def test_search_spec_takes_the_baselines_and_names_a_window_past_the_epochs(tmp_path):
    import yaml

    from search.spec import SpecError, load_spec

    path = Path(__file__).parent.parent / "examples/search/baselines_digits.yaml"
    spec = load_spec(path)
    assert {"magnitude", "channel_magnitude"} <= set(spec.families)
    data = yaml.safe_load(path.read_text())
    data["regularizers"]["magnitude"]["end_epoch"] = {"type": "int", "low": 5, "high": 14}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert ("regularizers.magnitude.end_epoch: `end_epoch <= optim.epochs` must hold (optim.epochs=12) (got 14)"
            in str(info.value))
