"""Group views of Linear and Conv2d weights: exact round trips and the meaning of each row."""

from __future__ import annotations

import pytest
import torch

from torch import nn

from trainables.groups import GROUPINGS, conv_groups, from_groups, to_groups

SHAPES = [(5, 7), (4, 3, 2, 2), (6, 1, 5, 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_round_trip_is_exact(shape, grouping):
    W = torch.randn(shape, dtype=torch.float64)
    before = W.clone()
    G = to_groups(W, grouping)
    assert G.ndim == 2 and G.numel() == W.numel()
    assert torch.equal(from_groups(G, W.shape, grouping), W)
    # a modified group matrix lands in the right places: zero a row, map back, view again
    G2 = G.clone()
    G2[-1] = 0
    assert torch.equal(to_groups(from_groups(G2, W.shape, grouping), grouping), G2)
    assert torch.equal(W, before)  # never mutated


def test_linear_rows():
    W = torch.arange(12.0).reshape(3, 4)  # [out=3, in=4]
    assert torch.equal(to_groups(W, "input")[2], W[:, 2])  # input feature 2, across all outputs
    assert torch.equal(to_groups(W, "input_position"), to_groups(W, "input"))
    assert torch.equal(to_groups(W, "filter")[1], W[1])  # output neuron 1


def test_conv_rows():
    W = torch.randn(4, 3, 2, 2)  # [out, in, kh, kw]
    assert to_groups(W, "input").shape == (3, 16)
    assert torch.equal(to_groups(W, "input")[1].sort().values, W[:, 1].flatten().sort().values)
    # CGES: one row per (channel, y, x) position across all output filters (algorithms.md §2.3)
    G = to_groups(W, "input_position")
    assert G.shape == (12, 4)
    assert torch.equal(G[1 * 4 + 0 * 2 + 1], W[:, 1, 0, 1])
    assert torch.equal(to_groups(W, "filter")[2], W[2].flatten())


def test_input_row_norms_are_channel_norms():
    """GrOWL's reshape_2D_4D: row norms equal per-input-channel norms (algorithms.md §3.1)."""
    W = torch.randn(8, 5, 3, 3, dtype=torch.float64)
    norms = torch.linalg.vector_norm(to_groups(W, "input"), dim=1)
    torch.testing.assert_close(norms, torch.linalg.vector_norm(W.transpose(0, 1).reshape(5, -1), dim=1))
    torch.testing.assert_close(norms, W.pow(2).sum(dim=(0, 2, 3)).sqrt())


@pytest.mark.parametrize("grouping, message", [("rows", "unknown grouping 'rows'"), ("input", "shape")])
def test_errors(grouping, message):
    with pytest.raises(ValueError, match=message):
        to_groups(torch.zeros(2, 3, 4), grouping)


def test_groups_errors_name_the_value():
    with pytest.raises(ValueError, match="groups=4"):
        to_groups(torch.zeros(6, 2, 3, 3), "input", groups=4)  # 6 filters do not split into 4
    with pytest.raises(ValueError, match="groups=2"):
        to_groups(torch.zeros(6, 4), "input", groups=2)  # a Linear has no groups
    with pytest.raises(ValueError, match="groups=0"):
        from_groups(torch.zeros(4, 9), (6, 2, 3, 3), "input", groups=0)


# grouped (6 in, 4 out, g=2), depthwise (3 channels, g=3) and depthwise with multiplier 2
GROUPED = [(4, 6, 2), (3, 3, 3), (6, 3, 3)]


@pytest.mark.parametrize("out_, in_, g", GROUPED)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_grouped_conv_round_trip_is_exact(out_, in_, g, grouping):
    conv = nn.Conv2d(in_, out_, 3, groups=g)
    assert conv_groups(conv) == g and conv_groups(nn.Linear(2, 2)) == 1
    W = conv.weight.detach().double()
    G = to_groups(W, grouping, g)
    assert G.numel() == W.numel()
    assert torch.equal(from_groups(G, W.shape, grouping, g), W)
    G2 = G.clone()
    G2[1] = 0
    assert torch.equal(to_groups(from_groups(G2, W.shape, grouping, g), grouping, g), G2)


@pytest.mark.parametrize("out_, in_, g", GROUPED)
def test_grouped_conv_input_rows_are_the_weights_reading_the_channel(out_, in_, g):
    """Zeroing input row c leaves the conv's output independent of input channel c, and of no
    other channel: the row is exactly the weights that read c (brute force via the gradient)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(in_, out_, 3, padding=1, groups=g).double()
    W = conv.weight.detach().clone()
    G = to_groups(W, "input", g)
    assert G.shape == (in_, (out_ // g) * 9)
    for c in range(in_):
        x = torch.randn(1, in_, 5, 5, dtype=torch.float64, requires_grad=True)
        conv(x).sum().backward()
        reads = x.grad[0].abs().sum((1, 2)) != 0  # channels the conv reads
        assert reads.all()
        G2 = G.clone()
        G2[c] = 0
        conv.weight.data.copy_(from_groups(G2, W.shape, "input", g))
        x.grad = None
        conv(x).sum().backward()
        reads = x.grad[0].abs().sum((1, 2)) != 0
        assert reads.tolist() == [k != c for k in range(in_)]
        conv.weight.data.copy_(W)
    # rows by hand: channel c of group k is read by filters k*out/g ... at weight slice c % (in/g)
    cin_g, cout_g = in_ // g, out_ // g
    for c in range(in_):
        k = c // cin_g
        assert torch.equal(G[c], W[k * cout_g:(k + 1) * cout_g, c % cin_g].flatten())
    P = to_groups(W, "input_position", g)
    assert P.shape == (in_ * 9, cout_g)
    c, y, x_ = in_ - 1, 2, 1
    k = c // cin_g
    assert torch.equal(P[c * 9 + y * 3 + x_], W[k * cout_g:(k + 1) * cout_g, c % cin_g, y, x_])
    assert to_groups(W, "filter", g).shape == (out_, cin_g * 9)
