"""Reversible views of a layer's weight as a ``[groups, members]`` matrix (one group per row).

Groupings, for ``nn.Linear`` (weight ``[out, in]``) and ``nn.Conv2d`` (weight ``[out, in, kh, kw]``):

- ``input``: one row per input feature / input channel, holding every weight that reads it
  (GrOWL, paper §3.2 and the official ``reshape_2D_4D``). Linear ``[in, out]``; Conv2d
  ``[in, out*kh*kw]``. A zero row means the input is unused: the neuron or channel feeding it can
  be removed.
- ``input_position``: one row per input position (channel, y, x) across all output filters (CGES,
  algorithms.md §2.3). Linear: same as ``input``; Conv2d ``[in*kh*kw, out]``.
- ``filter``: one row per output neuron / filter. Linear ``[out, in]``; Conv2d ``[out, in*kh*kw]``.

``to_groups(W, g)`` and ``from_groups(M, W.shape, g)`` are exact inverses.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

__all__ = ["Grouping", "GROUPINGS", "to_groups", "from_groups", "check_grouping", "member_dims"]

Grouping = Literal["input", "input_position", "filter"]
GROUPINGS: tuple[str, ...] = get_args(Grouping)


def check_grouping(grouping: str) -> None:
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; valid: {list(GROUPINGS)}")


def _check_weight(shape: torch.Size | tuple[int, ...]) -> None:
    if len(shape) not in (2, 4):
        raise ValueError(
            f"expected a Linear [out, in] or Conv2d [out, in, kh, kw] weight, got shape={tuple(shape)}"
        )


def to_groups(W: torch.Tensor, grouping: str) -> torch.Tensor:
    """The group matrix of a Linear or Conv2d weight (a view or a reshaped copy; never mutated)."""
    check_grouping(grouping)
    _check_weight(W.shape)
    out_, in_ = W.shape[0], W.shape[1]
    if grouping == "filter":
        return W.reshape(out_, -1)
    if W.ndim == 2 or grouping == "input_position":
        # Linear: rows = columns of W. Conv: [out, in*kh*kw] transposed -> one row per (c, y, x).
        return W.reshape(out_, -1).t()
    # Conv, grouping "input": [in, out, kh, kw] -> one row per input channel.
    return W.transpose(0, 1).reshape(in_, -1)


def from_groups(M: torch.Tensor, shape: torch.Size | tuple[int, ...], grouping: str) -> torch.Tensor:
    """Inverse of :func:`to_groups`: the weight of shape ``shape`` whose group matrix is ``M``."""
    check_grouping(grouping)
    _check_weight(shape)
    shape = tuple(shape)
    out_, in_ = shape[0], shape[1]
    if grouping == "filter":
        return M.reshape(shape)
    if len(shape) == 2 or grouping == "input_position":
        return M.t().reshape(shape)
    return M.reshape(in_, out_, *shape[2:]).transpose(0, 1).reshape(shape)


def member_dims(ndim: int, grouping: str) -> tuple[int, ...]:
    """The dimensions of a weight (2-D Linear, 4-D Conv2d) that one group's members span; the
    other dimensions index the groups. A reduction over them with ``keepdim=True`` gives one
    value per group that broadcasts back onto the weight, in any memory layout (channels_last
    included), so a per-group step can run in place with no ``to_groups``/``from_groups`` copy.
    Flattened, such a per-group result is in the order of :func:`to_groups`'s rows."""
    check_grouping(grouping)
    _check_weight((0,) * ndim)
    if grouping == "filter":
        return tuple(range(1, ndim))
    if grouping == "input" and ndim == 4:
        return (0, 2, 3)
    return (0,)  # input_position (Linear or Conv2d), and input on a Linear
