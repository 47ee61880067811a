"""Group views of Linear and Conv2d weights: exact round trips and the meaning of each row."""

from __future__ import annotations

import pytest
import torch

from trainables.groups import GROUPINGS, from_groups, to_groups

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
