"""Channel groups: the parameters that go when compaction removes one output channel / unit.

Torch-Pruning's ``DependencyGraph`` (the same trace :mod:`trainables.compact` uses) couples, for
one root channel of a ``Linear`` / ``Conv`` (``groups=1``): every producer's row and bias entry
(several producers when the channel is summed in a residual stream), the following BatchNorm /
GroupNorm entries, depthwise filters, and the input columns of every consumer (through residual
additions, concatenations and a flatten). A :class:`ChannelGroup` is one such dependency group read
as a ``[channels, members]`` matrix (one row per root channel, over all of its trainable
parameters), so the proximal operators of :mod:`trainables.prox` act on whole removable channels:
a zero row is a channel whose every weight, bias and norm entry is zero, which compaction removes.

Groups whose channels reach a network output (the logits) are never formed; a group touching a
layer that cannot be read this way (LayerNorm, PReLU, grouped non-depthwise convs, attention, ...)
is left out, so those channels are not regularized (:func:`channel_groups` says which).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["ChannelGroup", "channel_groups", "following_norms", "silence_filters", "trace"]

_OP = tp.ops.OPTYPE
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MIXING = (nn.Linear,) + _CONV
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS = {_OP.ELEMENTWISE, _OP.CONCAT, _OP.RESHAPE}


@dataclass
class _Slice:
    """``param.index_select(dim, idxs)``, with ``per`` consecutive indices per root channel."""

    module: nn.Module
    param: str
    dim: int
    idxs: torch.Tensor  # sorted by root channel
    per: int

    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.param)

    def rows(self, n: int) -> torch.Tensor:
        """``[n, members]``: this slice's values per root channel (differentiable)."""
        t = self.tensor().index_select(self.dim, self.idxs.to(self.tensor().device))
        t = t.movedim(self.dim, 0)
        return t.reshape(n, -1)

    def write(self, rows: torch.Tensor) -> None:
        t = self.tensor()
        idxs = self.idxs.to(t.device)
        shape = list(t.movedim(self.dim, 0).shape)
        shape[0] = len(idxs)
        t.data.index_copy_(self.dim, idxs, rows.reshape(shape).movedim(0, self.dim).to(t.dtype))


@dataclass
class ChannelGroup:
    """One dependency group: ``n`` root channels of ``root`` (a Linear/Conv, named ``name``)."""

    name: str
    root: nn.Module
    n: int
    slices: list[_Slice] = field(default_factory=list)
    norms: list[nn.Module] = field(default_factory=list)  # BatchNorm/GroupNorm layers in the group
    norm_idxs: list[torch.Tensor] = field(default_factory=list)

    # with a GroupNorm in the group: one row per norm group (its channels, in ``order``)
    order: torch.Tensor | None = None
    per_row: int = 1

    @property
    def rows(self) -> int:
        """Rows of :meth:`matrix`: channels, or whole GroupNorm groups (a GroupNorm only loses
        whole groups, so those are the units that can go)."""
        return self.n // self.per_row

    def _channels(self) -> torch.Tensor:
        return torch.cat([s.rows(self.n) for s in self.slices], dim=1)

    def matrix(self) -> torch.Tensor:
        """``[rows, members]``: every trainable parameter entry of each channel (or norm group of
        channels), differentiable."""
        M = self._channels()
        if self.order is None:
            return M
        return M.index_select(0, self.order.to(M.device)).reshape(self.rows, -1)

    def channel_mask(self, dead: torch.Tensor) -> torch.Tensor:
        """Per row (``[rows]``) to per root channel (``[n]``)."""
        if self.order is None:
            return dead
        out = torch.zeros(self.n, dtype=torch.bool, device=dead.device)
        out[self.order.to(dead.device)] = dead.repeat_interleave(self.per_row)
        return out

    @torch.no_grad()
    def write(self, M: torch.Tensor) -> None:
        """Write a ``[rows, members]`` matrix (e.g. a proximal step of :meth:`matrix`) back."""
        if self.order is not None:
            C = torch.empty_like(M.reshape(self.n, -1))
            C[self.order.to(M.device)] = M.reshape(self.n, -1)
            M = C
        start = 0
        for s in self.slices:
            k = s.rows(self.n).shape[1]
            s.write(M[:, start:start + k])
            start += k
        # A parameter entry can belong to two rows: a layer that reads the channels it writes (a
        # residual block's conv: its weight[i, j] is in row i as an output and in row j as an
        # input). The later write would restore what a zeroed row cleared; a zero row wins.
        shared = self._shared()
        if shared:
            dead = ~M.reshape(self.n, -1).ne(0).any(1)
            if dead.any():
                for s in shared:
                    R = s.rows(self.n).detach().clone()
                    R[dead.to(R.device)] = 0
                    s.write(R)

    def _shared(self) -> list[_Slice]:
        """The slices of a parameter that more than one slice of this group covers."""
        counts = Counter((id(s.module), s.param) for s in self.slices)
        return [s for s in self.slices if counts[(id(s.module), s.param)] > 1]

    @torch.no_grad()
    def zero(self, dead: torch.Tensor) -> None:
        """Zero the rows ``dead`` (bool ``[rows]``) in every member, and reset their BatchNorm
        running statistics (mean 0, var 1), so a zeroed channel outputs exactly 0 in eval mode."""
        self.zero_channels(self.channel_mask(dead.to(torch.bool)))

    @torch.no_grad()
    def zero_channels(self, dead: torch.Tensor) -> None:
        """:meth:`zero` per root channel (bool ``[n]``), whatever the rows."""
        order, self.order = self.order, None  # write per channel
        try:
            M = self._channels().detach().clone()
            M[dead.to(M.device)] = 0
            self.write(M)
        finally:
            self.order = order
        for bn, idxs in zip(self.norms, self.norm_idxs):
            if isinstance(bn, _BN) and bn.running_mean is not None:
                rows = idxs.view(self.n, -1)[dead.to(idxs.device)].flatten().to(bn.running_mean.device)
                bn.running_mean[rows] = 0
                bn.running_var[rows] = 1


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    ref = next(iter(model.parameters()))
    was = model.training
    model.eval()
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(
                model, torch.zeros(1, *input_shape, dtype=ref.dtype, device=ref.device), verbose=False)
    finally:
        model.train(was)


def _by_root(idxs: list[int], roots: list[int], n: int) -> tuple[torch.Tensor, int] | None:
    order = sorted(range(len(idxs)), key=lambda i: (roots[i], idxs[i]))
    counts = torch.bincount(torch.as_tensor(roots, dtype=torch.long), minlength=n)
    if len(idxs) == 0 or not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        return None
    return torch.as_tensor([idxs[i] for i in order], dtype=torch.long), int(counts[0])


def _group(graph: tp.DependencyGraph, group, names: dict[nn.Module, str]) -> tuple[ChannelGroup | None, str]:
    """The ChannelGroup of one dependency group, or ``(None, why)``."""
    root = group[0].dep.target.module
    n = len(group[0].idxs)
    cg = ChannelGroup(names.get(root, type(root).__name__), root, n)
    seen: set[tuple[int, str, int]] = set()
    for item in group.items:
        dep = item.dep
        node, m = dep.target, dep.target.module
        params: list[tuple[str, int]] = []
        if node.type == _OP.OUTPUT or (not node.outputs and not graph.is_in_channel_pruning_fn(dep.handler)):
            return None, "its channels are network outputs"
        if node.type in (_OP.CONV, _OP.LINEAR) and isinstance(m, _MIXING) and getattr(m, "groups", 1) == 1:
            params = [("weight", 0), ("bias", 0)] if graph.is_out_channel_pruning_fn(dep.handler) else [("weight", 1)]
        elif node.type == _OP.DEPTHWISE_CONV and isinstance(m, _CONV):
            params = [("weight", 0), ("bias", 0)]
        elif node.type in (_OP.BN, _OP.GN) and isinstance(m, _BN + (nn.GroupNorm,)):
            params = [("weight", 0), ("bias", 0)]
        elif node.type in _PASS:
            continue
        else:
            return None, f"it reaches {names.get(m, type(m).__name__)} ({type(m).__name__}), which a channel group cannot read"
        placed = _by_root(list(item.idxs), list(item.root_idxs), n)
        if placed is None:
            return None, f"{names.get(m, type(m).__name__)} maps its channels unevenly"
        idxs, per = placed
        if node.type in (_OP.BN, _OP.GN) and m not in cg.norms:
            cg.norms.append(m)
            cg.norm_idxs.append(idxs)
        for p, dim in params:
            if getattr(m, p, None) is None or (id(m), p, dim) in seen:
                continue
            seen.add((id(m), p, dim))
            cg.slices.append(_Slice(m, p, dim, idxs, per))
    _norm_group_rows(cg)
    return cg, ""


def _norm_group_rows(cg: ChannelGroup) -> None:
    """Rows of whole GroupNorm groups when the group holds exactly one GroupNorm whose every norm
    group lies in it (else one row per channel, and compaction warns about partial groups)."""
    gns = [(m, idxs) for m, idxs in zip(cg.norms, cg.norm_idxs) if isinstance(m, nn.GroupNorm)]
    if len(gns) != 1:
        return
    gn, idxs = gns[0]
    per = gn.num_channels // gn.num_groups
    if per == 1 or len(idxs) != cg.n:
        return
    group_of = idxs // per  # per root channel (idxs sorted by root)
    counts = torch.bincount(group_of, minlength=gn.num_groups)
    if not bool(((counts == 0) | (counts == per)).all()):
        return
    cg.order = torch.sort(group_of, stable=True).indices
    cg.per_row = per


def channel_groups(model: nn.Module, input_shape: tuple[int, ...], roots: list[nn.Module] | None = None,
                   graph: tp.DependencyGraph | None = None) -> tuple[list[ChannelGroup], dict[str, str]]:
    """Every channel group of ``model`` (rooted at a Linear/Conv in ``roots``, default all), in
    model order, and ``{layer name: why}`` for the roots whose channels form no group."""
    graph = graph if graph is not None else trace(model, input_shape)
    names = {m: q for q, m in model.named_modules()}
    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    wanted = None if roots is None else set(roots)
    out: list[ChannelGroup] = []
    skipped: dict[str, str] = {}
    for group in graph.get_all_groups(root_module_types=_MIXING):
        root = group[0].dep.target.module
        if wanted is not None and root not in wanted:
            continue
        cg, why = _group(graph, group, names)
        if cg is None:
            skipped[names.get(root, "?")] = why
        else:
            out.append(cg)
    out.sort(key=lambda c: order.get(c.root, 0))
    return out, skipped


def following_norms(graph: tp.DependencyGraph, modules: list[nn.Module]) -> dict[nn.Module, list[nn.Module]]:
    """Per Linear/Conv: the BatchNorm / GroupNorm layers that read its output directly."""
    out: dict[nn.Module, list[nn.Module]] = {}
    for m in modules:
        node = graph.module2node.get(m)
        out[m] = [o.module for o in (node.outputs if node is not None else [])
                  if isinstance(o.module, _BN + (nn.GroupNorm,)) and len(o.inputs) == 1]
    return out


@torch.no_grad()
def silence_filters(module: nn.Module, norms: list[nn.Module], dead: torch.Tensor) -> None:
    """A zeroed filter of ``module`` (bool ``dead`` per output row) also zeroes its bias and its
    following norm channels ``norms`` (weight, bias; BatchNorm running mean 0, var 1), so the
    channel outputs 0 in eval mode and compaction removes it (its input slices elsewhere are left)."""
    if not dead.any():
        return
    for m in [module] + list(norms):
        rows = dead.to(torch.bool)
        if m is not module and (getattr(m, "num_features", getattr(m, "num_channels", None)) != len(rows)):
            continue
        for p in ("bias",) if m is module else ("weight", "bias"):
            t = getattr(m, p, None)
            if t is not None:
                t.data[rows.to(t.device)] = 0
        if isinstance(m, _BN) and m.running_mean is not None:
            m.running_mean[rows.to(m.running_mean.device)] = 0
            m.running_var[rows.to(m.running_var.device)] = 1
