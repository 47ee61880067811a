"""The fast training loop: the in-place CGES step against the reference ``cges_step``, mixed
precision, per-run thread counts and the device check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.groups import GROUPINGS, from_groups, member_dims, to_groups
from trainables.prox import cges_step
from trainables.regularizers import LayerRegularizer
from trainables.regularizers.cges import CGES, cges_step_

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
    assert per_group.shape != W.shape or per_group.numel() == W.numel()  # it broadcasts onto W
    (W * per_group)  # noqa: B018 - broadcasting must not raise


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
    cges_step_(got, (1,), 0.0, 0.0)  # zero thresholds: the reference returns W unchanged
    assert torch.equal(reference(W, "filter", 0.0, 0.0), W)
    expected = torch.where(W.abs() < FLUSH, torch.zeros_like(W), W)
    assert torch.equal(got, expected)
    # a small exclusive threshold leaves a result of a few subnormals (|G| - t < tiny): flushed too
    W = torch.tensor([[2e-38, 1.0], [1.5e-38, 2.0]])
    got = W.clone()
    cges_step_(got, (1,), 0.0, 1e-38)
    nonzero = got[got != 0].abs()
    assert (nonzero >= FLUSH).all(), got
    assert got[0, 1] > 0.99 and got[1, 1] > 1.99


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
