"""The fast training loop: the in-place CGES step against the reference ``cges_step``, mixed
precision, per-run thread counts and the device check."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from trainables import ConfigError, TrialConfig, fit
from trainables.groups import GROUPINGS, from_groups, member_dims, to_groups
from trainables.prox import cges_step
from trainables.regularizers import LayerRegularizer
from trainables.regularizers.cges import ALWAYS_FLUSH, CGES, cges_step_
from trainables.train import _Trainer, check_device, uses_channels_last

SHAPES = [(30, 78), (10, 1), (8, 3, 5, 5), (16, 8, 3, 3)]
FLUSH = torch.finfo(torch.float32).tiny


def reference(W: torch.Tensor, grouping: str, g: float, e: float) -> torch.Tensor:
    return from_groups(cges_step(to_groups(W, grouping), g, e), W.shape, grouping)


def random_weight(shape, dtype, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(shape, dtype=dtype, generator=gen) * 0.1
    W.view(shape[0], -1)[0] = 0  # a dead filter: an all-zero row in every grouping's view
    W.view(shape[0], -1)[:, 0] = 0  # and a dead input position
    return W


# ----------------------------------------------------------------------------- member_dims


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_member_dims_reduce_to_the_group_rows_in_order(shape, grouping):
    W = torch.randn(shape, dtype=torch.float64)
    per_group = torch.linalg.vector_norm(W, dim=member_dims(W.ndim, grouping), keepdim=True)
    rows = torch.linalg.vector_norm(to_groups(W, grouping), dim=1)
    torch.testing.assert_close(per_group.flatten(), rows, rtol=1e-12, atol=0)
    # it broadcasts onto W, giving every element the norm of its own group
    spread = to_groups(per_group.expand_as(W).contiguous(), grouping)
    torch.testing.assert_close(spread, rows[:, None].expand_as(spread), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- cges_step_


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("g, e", [(0.05, 0.002), (0.3, 0.05), (0.0, 0.01), (0.02, 0.0), (0.0, 0.0)])
def test_in_place_step_equals_the_reference(shape, grouping, dtype, g, e):
    W = random_weight(shape, dtype)
    expected = reference(W, grouping, g, e)
    got = W.clone()
    cges_step_(got, member_dims(W.ndim, grouping), g, e)
    # the same arithmetic up to the rounding of the two row sums: a few ulps of the weights' scale
    # (a value just above its threshold, |G| - t, keeps the absolute error of |G| and t)
    ulp = torch.finfo(dtype).eps * W.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=8 * ulp)
    assert torch.equal(got == 0, expected == 0), "the zero pattern must be the reference's"


def test_in_place_step_with_a_scratch_buffer_and_channels_last():
    W = random_weight((16, 8, 3, 3), torch.float32)
    expected = reference(W, "input_position", 0.05, 0.01)
    got = W.clone().contiguous(memory_format=torch.channels_last)
    scratch = torch.full_like(got, float("nan"))  # stale contents must not matter
    cges_step_(got, member_dims(4, "input_position"), 0.05, 0.01, scratch)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)


def test_in_place_step_flushes_values_below_the_smallest_normal():
    W = torch.tensor([[3.0, 1e-39, -2.0, 5e-39], [1e-3, 0.0, 2e-39, -0.5]])
    assert (W.abs() < FLUSH).sum() == 4  # three subnormals and a zero
    got = W.clone()
    cges_step_(got, (1,), 0.0, 0.0)  # zero thresholds: only the flush changes W, as in the reference
    expected = torch.where(W.abs() < FLUSH, torch.zeros_like(W), W)
    assert torch.equal(reference(W, "filter", 0.0, 0.0), expected)
    assert torch.equal(got, expected)
    # a small exclusive threshold leaves a result of a few subnormals (|G| - t < tiny): flushed too
    W = torch.tensor([[2e-38, 1.0], [1.5e-38, 2.0]])
    got = W.clone()
    cges_step_(got, (1,), 0.0, 1e-38)
    nonzero = got[got != 0].abs()
    assert (nonzero >= FLUSH).all(), got
    assert got[0, 1] > 0.99 and got[1, 1] > 1.99


@pytest.mark.parametrize("rows", [4, ALWAYS_FLUSH // 2 + 1])  # a small layer, and one above ALWAYS_FLUSH
def test_subnormal_results_are_flushed_on_small_and_large_layers(rows):
    """Small layers are always flushed; large ones only when some kept row's threshold is small
    enough to leave subnormals, which this weight's first column makes happen."""
    W = torch.ones(rows, 2)
    W[:, 0] = 2e-38  # |G| - t with t = 1e-38 (2e-38 + 1): a subnormal result in every row
    assert (W.numel() <= ALWAYS_FLUSH) == (rows == 4)
    got = W.clone()
    cges_step_(got, (1,), 0.0, 1e-38)
    assert (got[:, 0] == 0).all() and (got[:, 1] > 0.99).all()
    assert torch.equal(got, reference(W, "filter", 0.0, 1e-38))
    big = random_weight((ALWAYS_FLUSH // 64 + 1, 64), torch.float32)  # the usual case: nothing to flush
    got = big.clone()
    cges_step_(got, member_dims(2, "filter"), 0.05, 0.002)
    assert torch.equal(got == 0, reference(big, "filter", 0.05, 0.002) == 0)


@pytest.mark.parametrize("exact", [False, True])
def test_layer_prox_uses_the_in_place_step_and_keeps_the_reference_values(exact):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    reg = CGES(lam=0.5, mu=0.4, exact=exact)
    before = conv.weight.detach().clone()
    layer = LayerRegularizer("conv", conv, "input_position", reg)
    layer.apply_prox(0.1)
    expected = from_groups(reg.prox(to_groups(before, "input_position"), 0.1), before.shape, "input_position")
    torch.testing.assert_close(conv.weight.detach(), expected, rtol=1e-6, atol=1e-8)
    assert (layer.scratch is not None) == (not exact)  # exact has no in-place form
    assert (conv.weight == 0).any()


# ----------------------------------------------------------------------------- the training loop


def digits(**optim) -> TrialConfig:
    return TrialConfig.from_dict({
        "device": "cpu", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [64]},
        "optim": {"name": "sgd", "lr": 0.1, "epochs": 8, "batch_size": 64, **optim},
        "regularizer": {"name": "cges", "lam": 3e-3},
    })


def test_bf16_autocast_on_the_cpu_trains_digits_as_well_as_fp32():
    fp32 = fit(digits())
    bf16 = fit(digits(amp="bf16"))
    assert fp32.metrics["val_accuracy"] > 0.9
    assert abs(bf16.metrics["val_accuracy"] - fp32.metrics["val_accuracy"]) <= 0.02
    assert abs(bf16.metrics["test_accuracy"] - fp32.metrics["test_accuracy"]) <= 0.02
    assert bf16.metrics["val_loss"] != fp32.metrics["val_loss"]  # autocast was on
    # the parameters (hence the prox and the masks) stay float32
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


def test_autocast_covers_forward_and_loss_only(monkeypatch):
    seen = []
    original = torch.nn.Linear.forward

    def spy(self, x):
        out = original(self, x)
        seen.append((self.training, torch.is_grad_enabled(), out.dtype))
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    fit(digits(amp="bf16", epochs=1))
    # training steps: train mode with gradients; validation/test: eval mode without (compaction's
    # graph tracing runs in eval mode with gradients, outside autocast: it is neither)
    training = {dtype for train, grad, dtype in seen if train and grad}
    evaluation = {dtype for train, grad, dtype in seen if not train and not grad}
    assert training == {torch.bfloat16} and evaluation == {torch.float32}


def test_fp16_resume_carries_the_gradient_scaler():
    cfg = digits(amp="fp16", epochs=4)
    states = {}

    def keep(epoch):
        buf = io.BytesIO()  # as Ray would: torch.save, then a weights_only load
        torch.save(epoch.state(), buf)
        buf.seek(0)
        states[epoch.metrics["epoch"]] = torch.load(buf, weights_only=True)

    full = fit(cfg, report=keep)
    assert states[2]["scaler"]["scale"] > 0 and "_growth_tracker" in states[2]["scaler"]
    resumed = fit(cfg, resume=states[2])
    assert resumed.metrics["val_loss"] == full.metrics["val_loss"]
    assert resumed.metrics["params_nonzero"] == full.metrics["params_nonzero"]
    # the scaler continues where it was (its scale and its count of steps since the last growth)
    state = {**states[2], "scaler": {**states[2]["scaler"], "scale": 1024.0, "_growth_tracker": 7}}
    trainer = _Trainer(cfg)
    trainer.load_state(state)
    assert trainer.scaler.get_scale() == 1024.0 and trainer.scaler.state_dict()["_growth_tracker"] == 7
    assert _Trainer(digits()).scaler is None and _Trainer(digits(amp="bf16")).scaler is None


def test_no_prox_after_a_step_the_fp16_scaler_skipped(monkeypatch):
    trainer = _Trainer(digits(amp="fp16", epochs=1))
    calls = []
    monkeypatch.setattr(trainer, "_prox", lambda step: calls.append(step))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # overflows: every step skipped
    trainer.scaler._growth_tracker = None
    original = trainer._backward_step
    outcomes = []
    monkeypatch.setattr(trainer, "_backward_step", lambda loss: outcomes.append(original(loss)) or outcomes[-1])
    trainer._train_epoch()
    assert outcomes[0] is False  # the first step overflowed, and no prox followed it
    assert len(calls) == sum(outcomes) < len(outcomes)


def test_threads_apply_to_the_run_and_are_restored():
    before = torch.get_num_threads()
    seen = []
    fit(digits(epochs=1), report=lambda r: seen.append(torch.get_num_threads()), threads=1)
    assert seen == [1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be an int >= 1, got threads=0"):
        fit(digits(epochs=1), threads=0)
    assert torch.get_num_threads() == before


def test_device_check_names_the_field_and_value(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device: CUDA is not available on this machine \(got 'cuda'\)"):
        check_device(digits().replace(device="cuda"))
    assert check_device(digits().replace(device="auto")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"device: this machine has 1 CUDA device\(s\): cuda:0 to cuda:0 \(got 'cuda:1'\)"):
        check_device(digits().replace(device="cuda:1"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100")
    with pytest.raises(ConfigError, match=r"optim.amp: Tesla V100 has no bfloat16: use fp16 \(got 'bf16'\)"):
        check_device(digits(amp="bf16").replace(device="cuda:0"))
    assert check_device(digits(amp="fp16").replace(device="cuda:0")) == torch.device("cuda:0")


def test_amp_off_reads_from_yaml_and_bad_values_name_the_field():
    from trainables.yamlio import loads_yaml

    assert TrialConfig.from_dict(loads_yaml("optim: {amp: off}")).optim.amp == "off"
    assert TrialConfig.from_dict(loads_yaml("optim: {amp: bf16}")).optim.amp == "bf16"
    with pytest.raises(ConfigError, match=r"optim.amp: .*'off', 'bf16' or 'fp16' \(got 'fp8'\)"):
        TrialConfig.from_dict({"optim": {"amp": "fp8"}})


def test_channels_last_only_for_conv_nets_on_a_gpu():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    mlp = nn.Sequential(nn.Linear(4, 2))
    assert uses_channels_last(conv, torch.device("cuda"))
    assert not uses_channels_last(conv, torch.device("cpu"))
    assert not uses_channels_last(mlp, torch.device("cuda"))
