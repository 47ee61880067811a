"""Reversible views of a layer's weight as a ``[groups, members]`` matrix (one group per row).

Groupings, for ``nn.Linear`` (weight ``[out, in]``) and ``nn.Conv2d`` (weight ``[out, in/g, kh, kw]``
with ``g = conv.groups``; ``g = 1`` for an ordinary convolution):

- ``input``: one row per input feature / input channel, holding every weight that reads it
  (GrOWL, paper §3.2 and the official ``reshape_2D_4D``). Linear ``[in, out]``; Conv2d
  ``[in, (out/g)*kh*kw]``. A zero row means the input is unused: the neuron or channel feeding it can
  be removed.
- ``input_position``: one row per input position (channel, y, x) across all output filters that
  read it (CGES, algorithms.md §2.3). Linear: same as ``input``; Conv2d ``[in*kh*kw, out/g]``.
- ``filter``: one row per output neuron / filter. Linear ``[out, in]``; Conv2d ``[out, (in/g)*kh*kw]``.

Grouped and depthwise convolutions (``g > 1``): input channel ``c`` belongs to channel group
``k = c // (in/g)`` and is read only by that group's ``out/g`` filters ``k*out/g ... (k+1)*out/g - 1``,
at their weight slice ``c % (in/g)``. Its ``input`` row is exactly those weights (so every row has
the same size and a zero row still means "channel ``c`` is unused"); ``input_position`` rows are the
same per (c, y, x). For a depthwise convolution (``g = in``) the ``input`` row of channel ``c`` is the
weights of the filters of channel ``c`` (with one filter per channel: that filter, i.e. the same
rows as ``filter``). ``filter`` needs no ``g``: a filter's row is its whole weight.

``to_groups(W, g, groups=...)`` and ``from_groups(M, W.shape, g, groups=...)`` are exact inverses;
:func:`conv_groups` gives the ``groups`` of a module (1 for a Linear).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

__all__ = ["Grouping", "GROUPINGS", "to_groups", "from_groups", "check_grouping", "conv_groups",
           "member_dims", "module_groups"]

Grouping = Literal["input", "input_position", "filter"]
GROUPINGS: tuple[str, ...] = get_args(Grouping)


def check_grouping(grouping: str) -> None:
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; valid: {list(GROUPINGS)}")


def conv_groups(module: nn.Module) -> int:
    """``module.groups`` for a convolution, 1 for anything else (a Linear)."""
    return int(getattr(module, "groups", 1) or 1)


def module_groups(module: nn.Module, grouping: str, W: torch.Tensor | None = None) -> torch.Tensor:
    """The group matrix of ``module``'s weight (or of ``W``, a tensor of its weight's shape, e.g. a
    mask) with the module's own ``groups``: the one call that cannot forget a grouped conv's ``g``."""
    return to_groups(module.weight.detach() if W is None else W, grouping, conv_groups(module))


def _check_weight(shape: torch.Size | tuple[int, ...], groups: int) -> None:
    if len(shape) not in (2, 4):
        raise ValueError(
            f"expected a Linear [out, in] or Conv2d [out, in/groups, kh, kw] weight, got shape={tuple(shape)}"
        )
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got groups={groups!r}")
    if groups > 1 and (len(shape) != 4 or shape[0] % groups):
        raise ValueError(f"groups={groups} needs a Conv2d weight whose {shape[0] if shape else 0} "
                         f"output filters divide into {groups} groups, got shape={tuple(shape)}")


def to_groups(W: torch.Tensor, grouping: str, groups: int = 1) -> torch.Tensor:
    """The group matrix of a Linear or Conv2d weight (a view or a reshaped copy; never mutated).

    ``groups`` is the convolution's ``groups`` (see the module docstring for grouped convolutions).
    """
    check_grouping(grouping)
    _check_weight(W.shape, groups)
    out_ = W.shape[0]
    if grouping == "filter":
        return W.reshape(out_, -1)
    if W.ndim == 2:  # Linear: rows = columns of W
        return W.t()
    g = groups
    _, cin_g, kh, kw = W.shape
    # [g, out/g, in/g, kh, kw]: filter block k reads input channels k*in/g ... (k+1)*in/g - 1
    blocks = W.reshape(g, out_ // g, cin_g, kh, kw)
    if grouping == "input_position":  # one row per (c, y, x), over the out/g filters reading it
        return blocks.permute(0, 2, 3, 4, 1).reshape(g * cin_g * kh * kw, out_ // g)
    return blocks.permute(0, 2, 1, 3, 4).reshape(g * cin_g, -1)  # "input": one row per channel


def from_groups(M: torch.Tensor, shape: torch.Size | tuple[int, ...], grouping: str,
                groups: int = 1) -> torch.Tensor:
    """Inverse of :func:`to_groups`: the weight of shape ``shape`` whose group matrix is ``M``."""
    check_grouping(grouping)
    shape = tuple(shape)
    _check_weight(shape, groups)
    if grouping == "filter":
        return M.reshape(shape)
    if len(shape) == 2:
        return M.t().reshape(shape)
    g = groups
    out_, cin_g, kh, kw = shape
    if grouping == "input_position":
        return M.reshape(g, cin_g, kh, kw, out_ // g).permute(0, 4, 1, 2, 3).reshape(shape)
    return M.reshape(g, cin_g, out_ // g, kh, kw).permute(0, 2, 1, 3, 4).reshape(shape)


def member_dims(ndim: int, grouping: str) -> tuple[int, ...]:
    """The dimensions of a weight (2-D Linear, 4-D Conv2d) that one group's members span; the
    other dimensions index the groups. A reduction over them with ``keepdim=True`` gives one
    value per group that broadcasts back onto the weight, in any memory layout (channels_last
    included), so a per-group step can run in place with no ``to_groups``/``from_groups`` copy.
    Flattened, such a per-group result is in the order of :func:`to_groups`'s rows."""
    check_grouping(grouping)
    _check_weight((0,) * ndim, 1)
    if grouping == "filter":
        return tuple(range(1, ndim))
    if grouping == "input" and ndim == 4:
        return (0, 2, 3)
    return (0,)  # input_position (Linear or Conv2d), and input on a Linear
