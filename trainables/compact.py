"""Physical compaction: the smaller network whose outputs equal the zeroed (masked) network's.

(Over 400 lines on purpose: which channels go, the checks before, and the grouped-conv and
grouped-norm cases must agree with each other — masked eval equals compacted eval — so they
stay together.)

Which channels and units can go is discovered from the network itself: Torch-Pruning's
``DependencyGraph`` traces one forward pass and groups every set of coupled channels (a producer's
output rows, the BatchNorm entries, depthwise filters, residual additions, concatenations, a flatten
into a ``Linear`` and the consumer columns that read them). Any traceable ``nn.Module`` works; nothing
is declared by the model. Per group, with the *root* channels of the group's first layer as units:

1. **Dead channels.** A channel is removed when every consumer weight that reads it (the ``Linear``
   / ``Conv2d`` columns of every consumer in the group, across every branch of a residual stream or
   concatenation) is zero: its value no longer matters. Its producer rows, BatchNorm entries,
   depthwise filters and consumer columns go together (``group.prune``).
2. **Constant channels.** A channel whose producer rows are all zero in every producer of the group
   carries a constant (bias -> BN -> activation -> ...). It is read, per consumer, from one forward
   pass with a forward pre-hook; it must also be the same for an all-zero and two random inputs (so a
   channel that an un-traced input path reaches, e.g. ``x + conv(x)``, is never taken for a
   constant). For a ``Linear`` consumer (2-D input, called once) it is folded exactly into the
   consumer's bias (``b += W[:, cols] @ const``; a zero bias is created if there is none). For a
   ``Conv`` consumer a constant map is not foldable (zero padding makes the border differ), so the
   channel is kept unless the constant is exactly zero there. A residual channel is removed only if
   it is removable at every consumer of the group.
3. **Model inputs.** When the model input is read by exactly one ``Conv2d`` (``groups=1``) or, through
   a flatten, one ``Linear``, the inputs it never reads (all-zero columns) are dropped; the compact
   model then starts with an index selection (``input_index`` buffer, saved in the ``state_dict``).
   If the network's own ``forward`` does not accept the narrower input (e.g. a hard-coded
   ``view(-1, 784)``), the selection is left out.

Removing a channel can make another removable (a fold or a removal zeroes a whole row or column
elsewhere), so passes over the groups repeat until nothing changes. The network's outputs are never
removed (channels that reach a graph output are protected), and a group never loses its last channel.

Where the graph gives no exact answer the channels are kept: groups touching a layer Torch-Pruning
can shrink but this module cannot reason about exactly (LayerNorm, PReLU, embeddings,
attention, recurrent layers, grouped convolutions other than depthwise, transposed convolutions,
bare ``nn.Parameter`` s, split/slice/expand ops, or a layer called more than once). A depthwise
convolution is a channel-wise link inside a group (its filter ``j`` reads only channel ``j``), so
zeroing a depthwise filter alone does not remove the channel (a known limitation: sound, not
complete).

A ``GroupNorm`` loses whole norm groups only (``num_groups`` shrinks with ``num_channels``; the
other groups' statistics are unchanged): removable channels that do not fill a norm group are
kept, with a warning (once per layer and compaction) naming the layer.

A model cannot be compacted when tracing fails or when some layer with parameters is not reached by
the traced forward pass (data-dependent control flow, unused modules): :func:`check_compactable`
says why, at validation time, before training; :func:`compact` raises :class:`CompactionError` for
the same reasons. Every compaction is verified: the compact model's outputs must equal the dense
model's on random inputs, else :class:`CompactionError`. A caller that must not fail after
training uses :func:`uncompacted` instead (``compaction: none``).

Semantics: compaction uses **eval** semantics (BatchNorm running statistics, dropout off), even if
``model`` is in train mode; ``model`` itself is never modified (a deep copy is compacted), and the
returned :class:`CompactModel` is in eval mode on ``model``'s device. It is meant for inference and
counting: training it further in train mode would not match the dense network (batch statistics of
folded channels are gone).

Saved format (:func:`save_compact`, loaded with ``torch.load(weights_only=True)``): a plain dict
with the model config (or none, for a model built by a factory), the data shape, the shapes and
``groups`` of every Linear/Conv/BatchNorm, the input selection and the state dict. No module is
pickled: :func:`load_compact` rebuilds the dense model (``build_model`` or the caller's ``build``),
re-shapes those layers and loads the state dict strictly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from .config import ModelConfig
from .data import DataSpec
from .metrics import eval_mode
from .models import build_model

__all__ = [
    "CompactModel",
    "CompactionError",
    "compact",
    "uncompacted",
    "check_compactable",
    "save_compact",
    "load_compact",
    "FORMAT",
]

FORMAT = "sparsetune.compact/2"
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MIXING = (nn.Linear,) + _CONV
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_GN = nn.GroupNorm
_SHAPED = _MIXING + _BN + (_GN,)
_OP = tp.ops.OPTYPE
_STRUCTURE = {_OP.ELEMENTWISE, _OP.CONCAT, _OP.RESHAPE}  # channel-wise ops Torch-Pruning re-indexes
_INPUT_MODES = ("features", "channels")


class CompactionError(RuntimeError):
    """The model cannot be compacted exactly (untraceable, or the result would differ)."""


class CompactModel(nn.Module):
    """An optional input selection (buffer ``input_index``) followed by the sliced network ``net``.

    Takes the same inputs as the dense model it came from. ``input_mode`` says how the selection
    reads the input: ``features`` (flatten, then select) or ``channels`` (select dimension 1).
    """

    def __init__(self, net: nn.Module, input_index: torch.Tensor | None = None,
                 input_mode: str | None = None):
        super().__init__()
        if input_index is not None and input_mode not in _INPUT_MODES:
            raise ValueError(f"input_mode must be one of {list(_INPUT_MODES)} with an input_index, "
                             f"got input_mode={input_mode!r}")
        self.net = net
        self.register_buffer("input_index", input_index)
        self.input_mode = input_mode if input_index is not None else None
        self.input_shape = getattr(net, "input_shape", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_index is not None:
            if self.input_mode == "features":
                x = x.flatten(1)
            x = x.index_select(1, self.input_index)
        return self.net(x)


def uncompacted(model: nn.Module) -> CompactModel:
    """``compaction: none``: a copy of the (masked) dense network in eval mode, nothing removed."""
    return CompactModel(copy.deepcopy(model).eval()).eval()


# ----------------------------------------------------------------------------- tracing


def _shape(model: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = tuple(input_shape if input_shape is not None else getattr(model, "input_shape", ()) or ())
    if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"{type(model).__name__}: input_shape must be a non-empty tuple of positive "
                         f"ints (pass input_shape=), got input_shape={input_shape!r}")
    return shape


def _example(net: nn.Module, shape: tuple[int, ...], batch: int = 1) -> torch.Tensor:
    ref = next(iter(net.parameters()), None)
    return torch.zeros(batch, *shape, dtype=ref.dtype if ref is not None else torch.float32,
                       device=ref.device if ref is not None else "cpu")


def _trace(net: nn.Module, shape: tuple[int, ...]) -> tp.DependencyGraph:
    """The dependency graph of ``net`` (in eval mode); CompactionError if it cannot be built or
    misses a layer."""
    net.eval()
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Torch-Pruning's notes on unwrapped parameters / unknown ops
            graph = tp.DependencyGraph().build_dependency(net, _example(net, shape), verbose=False)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "not compactable"
        raise CompactionError(f"Torch-Pruning cannot trace {type(net).__name__} with input_shape="
                              f"{shape}: {type(e).__name__}: {e}") from e
    traced = set(graph.module2node)
    missed = [name for name, m in net.named_modules()
              if any(True for _ in m.parameters(recurse=False))
              and m not in traced and not all(p in traced for p in m.parameters(recurse=False))]
    if missed:
        raise CompactionError(
            f"layers {missed[:5]}{' ...' if len(missed) > 5 else ''} of {type(net).__name__} are not "
            "reached by the traced forward pass (data-dependent control flow or unused modules), so "
            "which channels they read cannot be known")
    return graph


def _call_counts(net: nn.Module, shape: tuple[int, ...]) -> dict[nn.Module, int]:
    counts: dict[nn.Module, int] = {}

    def hook(module: nn.Module, _args: Any) -> None:
        counts[module] = counts.get(module, 0) + 1

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, _SHAPED)]
    try:
        with torch.no_grad():
            net(_example(net, shape))
    finally:
        for h in handles:
            h.remove()
    return counts


def _groups(graph: tp.DependencyGraph) -> Iterator[Any]:
    """Every dependency group, rooted at a Linear/Conv's output channels (fresh indices each time)."""
    return graph.get_all_groups(root_module_types=_MIXING)


class _Item:
    """One member of a group: its module, its role and, per index, the root channel it belongs to."""

    def __init__(self, graph: tp.DependencyGraph, item: Any, calls: dict[nn.Module, int]):
        dep = item.dep
        node, m = dep.target, dep.target.module
        self.module, self.idxs, self.roots = m, list(item.idxs), list(item.root_idxs)
        self.role: str | None = None  # "producer" | "consumer" | "link" | None (unsupported)
        if node.type in (_OP.CONV, _OP.LINEAR) and isinstance(m, _MIXING) and getattr(m, "groups", 1) == 1:
            if graph.is_out_channel_pruning_fn(dep.handler):
                self.role = "producer"
            elif graph.is_in_channel_pruning_fn(dep.handler):
                self.role = "consumer"
        elif node.type == _OP.DEPTHWISE_CONV and isinstance(m, _CONV) or node.type == _OP.BN and isinstance(m, _BN):
            self.role = "link"
        elif node.type == _OP.GN and isinstance(m, _GN):
            self.role = "norm_groups"  # removable in whole GroupNorm groups only
        elif node.type in _STRUCTURE or node.type == _OP.OUTPUT:
            self.role = "link"
        # the group's channels are this node's outputs (not a consumer's inputs) and leave the graph
        self.terminal = not node.outputs and self.role != "consumer"
        if isinstance(m, _SHAPED) and calls.get(m, 0) != 1:
            self.role = None  # reused (or never called) layer: shapes of other calls are unknown

    def per_root(self, values: torch.Tensor, n: int) -> torch.Tensor:
        """``[n]`` bool: for each root channel, whether any of its indices has a True value."""
        out = torch.zeros(n, dtype=torch.long, device=values.device)
        roots = torch.as_tensor(self.roots, dtype=torch.long, device=values.device)
        return out.index_add_(0, roots, values[torch.as_tensor(self.idxs, device=values.device)].long()).gt(0)


def _live_rows(m: nn.Module) -> torch.Tensor:
    """Per output row (filter / neuron): whether any weight is non-zero."""
    return m.weight.detach().reshape(m.weight.shape[0], -1).ne(0).any(1)


def _live_columns(m: nn.Module) -> torch.Tensor:
    """Per input column (channel / feature): whether any weight reading it is non-zero."""
    nz = m.weight.detach().ne(0)
    return (nz.flatten(2).any(2) if nz.ndim > 2 else nz).any(0)


class _Snapshot:
    """What planning reads from the network, computed at most once per pass (the network does not
    change while a pass plans)."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...]):
        self.net, self.shape = net, shape
        self._rows: dict[nn.Module, torch.Tensor] = {}
        self._cols: dict[nn.Module, torch.Tensor] = {}
        self._inputs: dict[nn.Module, torch.Tensor] | None = None

    def rows(self, m: nn.Module) -> torch.Tensor:
        if m not in self._rows:
            self._rows[m] = _live_rows(m)
        return self._rows[m]

    def cols(self, m: nn.Module) -> torch.Tensor:
        if m not in self._cols:
            self._cols[m] = _live_columns(m)
        return self._cols[m]

    def inputs(self) -> dict[nn.Module, torch.Tensor]:
        """Every Linear/Conv's input for a batch of an all-zero, a random and a large random example."""
        if self._inputs is None:
            self._inputs = {}

            def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                self._inputs[module] = args[0].detach()

            x = _example(self.net, self.shape, batch=3)
            noise = torch.randn(2, *self.shape, generator=torch.Generator().manual_seed(0)).to(x)
            x[1], x[2] = noise[0], 100 * noise[1] + 3
            handles = [m.register_forward_pre_hook(hook) for m in self.net.modules() if isinstance(m, _MIXING)]
            try:
                self.net(x)
            finally:
                for h in handles:
                    h.remove()
        return self._inputs


def _plan(graph: tp.DependencyGraph, group: Any, calls: dict[nn.Module, int], snap: _Snapshot) -> tuple[list[int], list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]]:
    """Root channels to remove from one group, and the bias folds ``(linear, cols, values)`` first."""
    items = [_Item(graph, it, calls) for it in group.items]
    if any(it.role is None for it in items):
        return [], []
    n = len(group[0].idxs)
    device = group[0].dep.target.module.weight.device
    protected = torch.zeros(n, dtype=torch.bool, device=device)
    fed = torch.zeros(n, dtype=torch.bool, device=device)  # some producer row is non-zero
    read = torch.zeros(n, dtype=torch.bool, device=device)  # some consumer column is non-zero
    for it in items:
        if it.terminal:
            protected[torch.as_tensor(sorted(set(it.roots)), device=device)] = True
        if it.role == "producer":
            fed |= it.per_root(snap.rows(it.module), n)
        elif it.role == "consumer":
            read |= it.per_root(snap.cols(it.module), n)
    constant = ~fed & read & ~protected
    removable = ~read & ~protected
    folds: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
    if constant.any():
        consumers = [it for it in items if it.role == "consumer"]
        inputs = snap.inputs()
        ok = constant.clone()
        for it in consumers:
            same, zero = _constant_at(it, inputs[it.module])
            idxs = torch.as_tensor(it.idxs, device=device)
            foldable = isinstance(it.module, nn.Linear) and inputs[it.module].ndim == 2
            good = ~snap.cols(it.module)[idxs] | (same & (zero | foldable))
            roots = torch.as_tensor(it.roots, device=device)
            ok &= torch.zeros(n, dtype=torch.long, device=device).index_add_(0, roots, (~good).long()).eq(0)
        removable |= ok
        removable = _norm_groups(items, removable, n)  # before the folds: only what goes is folded
        if removable.all():
            removable[0] = False
            removable = _norm_groups(items, removable, n, warn=False)
        for it in consumers:  # fold what is removed as a constant into Linear biases
            if not isinstance(it.module, nn.Linear):
                continue
            idxs = torch.as_tensor(it.idxs, device=device)
            roots = torch.as_tensor(it.roots, device=device)
            pick = (removable & constant)[roots] & snap.cols(it.module)[idxs]
            if pick.any():
                folds.append((it.module, idxs[pick], inputs[it.module][0, idxs[pick]]))
    removable = _norm_groups(items, removable, n)
    if removable.all():
        removable[0] = False  # keep one channel: no zero-sized layers
        removable = _norm_groups(items, removable, n, warn=False)  # its whole norm group stays
    return removable.nonzero().flatten().tolist(), folds


def _norm_groups(items: list[_Item], removable: torch.Tensor, n: int, warn: bool = True) -> torch.Tensor:
    for it in items:
        if it.role == "norm_groups":
            removable = removable & _whole_norm_groups(it, removable, n, warn)
    return removable


def _whole_norm_groups(it: _Item, removable: torch.Tensor, n: int, warn: bool = True) -> torch.Tensor:
    """``[n]`` bool: the root channels whose GroupNorm channels of ``it`` fill whole norm groups
    that are removable entirely (a GroupNorm can only lose whole groups: the others' statistics
    stay the same). Zero channels that do not fill a norm group are kept, with a warning (once
    per layer) naming the layer."""
    gn: nn.GroupNorm = it.module
    per = gn.num_channels // gn.num_groups
    idxs = torch.as_tensor(it.idxs, dtype=torch.long, device=removable.device)
    roots = torch.as_tensor(it.roots, dtype=torch.long, device=removable.device)
    channel = torch.zeros(gn.num_channels, dtype=torch.bool, device=removable.device)
    channel[idxs] = removable[roots]
    whole = channel.view(gn.num_groups, per).all(1).repeat_interleave(per)
    ok = torch.ones(n, dtype=torch.bool, device=removable.device)
    ok[roots[~whole[idxs]]] = False
    blocked = removable & ~ok
    if warn and blocked.any() and not getattr(gn, "_sparsetune_warned", False):
        gn._sparsetune_warned = True
        name = getattr(gn, "_sparsetune_name", type(gn).__name__)
        warnings.warn(f"compaction keeps {int(blocked.sum())} zeroed channel(s) at GroupNorm layer {name!r}: "
                      f"a GroupNorm ({gn.num_groups} groups of {per} channels) can only lose whole groups, "
                      "and these do not fill one", stacklevel=2)
    return ok


def _constant_at(it: _Item, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per index of ``it`` (a consumer) in its captured input batch of 3 examples: whether the value
    is the same for the three, and whether it is exactly zero."""
    k = len(it.idxs)
    idxs = torch.as_tensor(it.idxs, device=x.device)
    if isinstance(it.module, _CONV):  # [3, C, *spatial]: channel dimension 1
        values = x.index_select(1, idxs).reshape(3, k, -1)
        return values.eq(values[:1]).all(2).all(0), values[0].eq(0).all(1)
    values = x.index_select(x.ndim - 1, idxs).reshape(3, -1, k)  # Linear: last dimension
    return values.eq(values[:1]).all(1).all(0), values[0].eq(0).all(0)


def _fold(q: nn.Linear, cols: torch.Tensor, x: torch.Tensor) -> None:
    """``q.bias += W[:, cols] @ x`` (columns about to be removed, input-independent values)."""
    shift = q.weight.detach()[:, cols] @ x.to(q.weight.dtype)
    if q.bias is None:
        q.bias = nn.Parameter(torch.zeros_like(shift))
    q.bias.data = q.bias.data + shift


def _one_pass(graph: tp.DependencyGraph, net: nn.Module, shape: tuple[int, ...],
              calls: dict[nn.Module, int]) -> bool:
    """Plan every group on the unchanged network (one forward pass for all constants), then fold
    and prune. Decisions taken on one snapshot stay exact together: each removal preserves the
    function on its own, a group's root channels belong to that group only (their indices stay
    valid while other groups shrink), and a fold only adds to the bias of a consumer row that still
    reads the channel (never to a row that another group finds constant)."""
    plans, snap = [], _Snapshot(net, shape)
    for group in _groups(graph):
        remove, folds = _plan(graph, group, calls, snap)
        if remove:
            plans.append((group[0].dep.target.module, group[0].dep.handler, remove, folds))
    per = {m: m.num_channels // m.num_groups for m in net.modules() if isinstance(m, _GN)}
    for *_, folds in plans:
        for q, cols, x in folds:
            _fold(q, cols, x)
    for module, handler, remove, _ in plans:
        graph.get_pruning_group(module, handler, remove).prune(record_history=False)
    for m, c in per.items():  # Torch-Pruning shrinks num_channels only; whole groups went
        m.num_groups = m.num_channels // c
    return bool(plans)


# ----------------------------------------------------------------------------- model inputs


def _input_reader(net: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, str] | None:
    """The one Conv2d/Linear that reads the model input (directly, or a Linear through a flatten),
    with the selection mode; None when the input is read in any other way."""
    layers: dict[Any, nn.Module] = {}

    def hook(module: nn.Module, _args: Any, out: torch.Tensor) -> None:
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            layers[out.grad_fn] = module

    x = _example(net, shape).requires_grad_(True)
    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.enable_grad():
            out = net(x)
    finally:
        for h in handles:
            h.remove()
    users: dict[Any, list[Any]] = {}
    seen, stack, leaf = set(), [o.grad_fn for o in _tensors(out) if o.grad_fn is not None], None
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        for nxt, _ in getattr(fn, "next_functions", ()):
            if nxt is None:
                continue
            users.setdefault(nxt, []).append(fn)
            if getattr(nxt, "variable", None) is x:
                leaf = nxt
            stack.append(nxt)
    if leaf is None or len(users.get(leaf, [])) != 1:
        return None
    user = users[leaf][0]
    m = layers.get(user)
    if isinstance(m, nn.Conv2d) and m.groups == 1 and len(shape) == 3:
        return m, "channels"
    if isinstance(m, nn.Linear) and len(shape) == 1:
        return m, "features"
    if m is None and any(k in type(user).__name__ for k in ("View", "Reshape")):
        after = users.get(user, [])
        m = layers.get(after[0]) if len(after) == 1 else None
        if isinstance(m, nn.Linear) and m.in_features == math.prod(shape):
            return m, "features"
    return None


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _select_inputs(net: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor | None, str | None]:
    """Drop the model inputs the input layer never reads (in place); the kept indices and the mode."""
    reader = _input_reader(net, shape)
    if reader is None:
        return None, None
    m, mode = reader
    live = _live_columns(m)
    if live.all():
        return None, None
    if not live.any():
        live[0] = True
    m.weight = nn.Parameter(m.weight.detach()[:, live].clone(), requires_grad=m.weight.requires_grad)
    if isinstance(m, nn.Linear):
        m.in_features = m.weight.shape[1]
    else:
        m.in_channels = m.weight.shape[1]
    return live.nonzero().flatten(), mode


# ----------------------------------------------------------------------------- compaction


def check_compactable(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> str | None:
    """None when :func:`compact` can work on ``model``, else a short reason (for validation).

    Builds the dependency graph once, on a CPU copy, and shrinks every group Torch-Pruning offers by
    one channel to check that the network's own ``forward`` still runs on the result (a hard-coded
    ``view(-1, 512 * 7 * 7)`` would not). Nothing of ``model`` is modified.
    """
    shape = _shape(model, input_shape)
    try:
        net = copy.deepcopy(model).cpu().eval()
        graph = _trace(net, shape)
        calls = _call_counts(net, shape)
        with torch.no_grad():
            for group in _groups(graph):
                items = [_Item(graph, it, calls) for it in group.items]
                n = len(group[0].idxs)
                if n > 1 and all(it.role not in (None, "norm_groups") and not it.terminal for it in items):
                    group.prune(idxs=[n - 1], record_history=False)
            net(_example(net, shape, batch=2))
    except CompactionError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001
        return (f"{type(model).__name__}'s forward fails once channels are removed "
                f"({type(e).__name__}: {e}); does it hard-code a channel count?")
    return None


def compact(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> CompactModel:
    """The physically smaller network equal to ``model`` in eval mode (see the module docstring).

    ``input_shape`` (one example) defaults to ``model.input_shape``. Raises :class:`CompactionError`
    when the model cannot be traced or the result would not be exact.
    """
    if isinstance(model, CompactModel):
        raise TypeError("the model is already a CompactModel; compact the dense model")
    shape = _shape(model, input_shape)
    net = copy.deepcopy(model).eval()
    with exact_float32():
        graph = _trace(net, shape)
        for name, m in net.named_modules():
            if isinstance(m, _GN):
                m._sparsetune_name = name  # for the warning of _whole_norm_groups
        try:
            calls = _call_counts(net, shape)
            with torch.no_grad():
                while _one_pass(graph, net, shape, calls):
                    pass
            small = _with_inputs_selected(model, net, shape)
        except CompactionError:
            raise
        except Exception as e:  # noqa: BLE001 - a failure inside the graph surgery: not compactable
            raise CompactionError(f"compacting {type(model).__name__} failed: {type(e).__name__}: {e}") from e
        _verify(model, small, shape)
    return small.eval()


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TensorFloat-32 off for the block. cuDNN runs float32 convolutions in TF32 by default on
    Ampere and later GPUs (a 10-bit mantissa), so the dense network and its narrower compaction,
    equal in exact arithmetic, differ by ~1e-3 there: more than :func:`_verify` allows."""
    cudnn = torch.backends.cudnn
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _with_inputs_selected(model: nn.Module, net: nn.Module, shape: tuple[int, ...]) -> CompactModel:
    trial = copy.deepcopy(net)
    with torch.no_grad():
        index, mode = _select_inputs(trial, shape)
    if index is None:
        return CompactModel(net)
    small = CompactModel(trial, index, mode)
    try:
        _verify(model, small, shape)
    except Exception:  # noqa: BLE001 - the network's forward does not take the narrower input
        return CompactModel(net)
    return small


def _verify(model: nn.Module, small: nn.Module, shape: tuple[int, ...]) -> None:
    """The compact model's outputs equal the dense model's (eval) on random inputs."""
    ref = next(iter(model.parameters()), None)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, *shape, generator=gen).to(dtype=ref.dtype if ref is not None else torch.float32,
                                                  device=ref.device if ref is not None else "cpu")
    with torch.no_grad(), eval_mode(model), eval_mode(small):
        expected, got = _tensors(model(x)), _tensors(small(x))
    if len(expected) != len(got) or any(
            e.shape != g.shape or not torch.allclose(g, e, rtol=1e-4, atol=1e-5 * max(1.0, float(e.abs().max())))
            for e, g in zip(expected, got)):
        raise CompactionError(f"the compacted {type(model).__name__} does not compute the same outputs "
                              "as the dense one (an operation the graph does not model exactly)")


# ----------------------------------------------------------------------------- save / load

DenseFactory = Callable[[], nn.Module]


def save_compact(path: str | Path, compact_model: CompactModel, *, spec: DataSpec,
                 model_cfg: dict[str, Any] | ModelConfig | None = None,
                 build: DenseFactory | None = None,
                 preprocessing: dict[str, Any] | None = None) -> None:
    """Save a plain dict (tensors, strings, numbers; no pickled modules) for :func:`load_compact`.

    The dense architecture is described by ``model_cfg`` (rebuilt with ``build_model``) or, for a
    network the registry does not know, by ``build`` (a factory of the dense model, which
    :func:`load_compact` must then be given too). Either is checked to rebuild the same modules.
    ``preprocessing`` (``trainables.data.Dataset.preprocessing``: plain lists, strings and numbers)
    is stored under that key for inference (``trainables.deploy``); files without it still load.
    """
    if not isinstance(compact_model, CompactModel):
        raise TypeError(f"save_compact needs a CompactModel, got {type(compact_model).__name__}")
    if model_cfg is None and build is None:
        raise ValueError("save_compact needs model_cfg= (a registered model) or build= (a dense-model factory)")
    cfg = _model_config(model_cfg) if model_cfg is not None else None
    _check_architecture(compact_model, _dense_factory(cfg, spec, build), cfg)
    torch.save({
        "format": FORMAT,
        "model": cfg.model_dump(mode="json", exclude_none=True) if cfg is not None else None,
        "input_shape": [int(d) for d in spec.input_shape],
        "num_classes": int(spec.num_classes),
        "input_mode": compact_model.input_mode,
        "layers": _layer_shapes(compact_model.net),
        "state_dict": {k: v.detach().cpu() for k, v in compact_model.state_dict().items()},
        **({"preprocessing": preprocessing} if preprocessing is not None else {}),
    }, Path(path))


def load_compact(path: str | Path, map_location: str | torch.device | None = None, *,
                 build: DenseFactory | None = None) -> CompactModel:
    """Rebuild a model saved by :func:`save_compact` (``torch.load(weights_only=True)``).

    The dense architecture is built with ``build_model`` from the saved config, or by ``build()``
    (needed when the file was saved with ``build=``); every Linear/Conv/BatchNorm is re-shaped to the
    saved sizes (``groups`` included), the input selection is added if present, and the state dict is
    loaded strictly. The result is in eval mode (on ``map_location`` if given, else on the CPU).
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a compact model saved by save_compact "
                         f"(format={payload.get('format') if isinstance(payload, dict) else None!r}, "
                         f"expected {FORMAT!r})")
    spec = DataSpec(tuple(payload["input_shape"]), int(payload["num_classes"]))
    cfg = _model_config(payload["model"]) if payload["model"] is not None else None
    if cfg is None and build is None:
        raise ValueError(f"{path} holds a network built by a factory, not a registered model: "
                         "pass load_compact(..., build=<the dense-model factory>)")
    net = _dense_factory(cfg, spec, build)()
    state = payload["state_dict"]
    _reshape(net, payload["layers"], {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    model = CompactModel(net, state.get("input_index"), payload["input_mode"])
    model.load_state_dict(state, strict=True)
    if map_location is not None:
        model.to(map_location)
    return model.eval()


def _dense_factory(cfg: ModelConfig | None, spec: DataSpec, build: DenseFactory | None) -> DenseFactory:
    if build is not None:
        if not callable(build):
            raise TypeError(f"build must be a callable returning the dense nn.Module, got {type(build).__name__}")
        return build
    return lambda: build_model(cfg, spec, weights=False)


def _model_config(cfg: dict[str, Any] | ModelConfig) -> ModelConfig:
    if isinstance(cfg, ModelConfig):
        return cfg
    if not isinstance(cfg, dict):
        raise TypeError(f"model_cfg must be a dict or ModelConfig, got {type(cfg).__name__}")
    try:
        return ModelConfig.model_validate(cfg)
    except Exception as e:
        raise ValueError(f"invalid model config {cfg!r}: {e}") from None


def _layer_shapes(net: nn.Module) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, m in net.named_modules():
        if isinstance(m, _CONV):
            out[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, _BN):
            out[name] = {"out": m.num_features}
        elif isinstance(m, _GN):
            out[name] = {"out": m.num_channels, "groups": m.num_groups}
    return out


def _check_architecture(compact_model: CompactModel, factory: DenseFactory, cfg: ModelConfig | None) -> None:
    """The saved description must rebuild the same modules (built on the meta device: no memory)."""
    with torch.device("meta"):
        dense = factory()
    if not isinstance(dense, nn.Module):
        raise TypeError(f"build() must return an nn.Module, got {type(dense).__name__}")
    expected = set(dense.state_dict())
    got = set(compact_model.net.state_dict())
    # folding may have given a bias-free Linear consumer a bias
    extra = sorted(k for k in got - expected if not _is_linear_bias(dense, k))
    missing = sorted(expected - got)
    if extra or missing:
        what = f"model_cfg {cfg.name!r}" if cfg is not None else "build()"
        raise ValueError(f"{what} does not describe this compact model "
                         f"(unexpected {extra[:5]}, missing {missing[:5]})")


def _is_linear_bias(model: nn.Module, key: str) -> bool:
    owner, _, leaf = key.rpartition(".")
    try:
        return leaf == "bias" and isinstance(model.get_submodule(owner), nn.Linear)
    except AttributeError:
        return False


def _reshape(net: nn.Module, layers: dict[str, dict[str, int]], state: dict[str, torch.Tensor]) -> None:
    """Give every saved Linear/Conv/BatchNorm of ``net`` its compact sizes and empty tensors of the
    saved shapes (the strict ``load_state_dict`` fills them)."""
    for name, sizes in layers.items():
        try:
            m = net.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the rebuilt dense model has no layer {name!r}") from None
        if isinstance(m, _CONV):
            m.in_channels, m.out_channels, m.groups = sizes["in"], sizes["out"], sizes["groups"]
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = sizes["in"], sizes["out"]
        elif isinstance(m, _BN):
            m.num_features = sizes["out"]
        elif isinstance(m, _GN):
            m.num_channels, m.num_groups = sizes["out"], sizes["groups"]
        else:
            raise ValueError(f"layer {name!r} is a {type(m).__name__} in the rebuilt model, "
                             "not the saved Linear/Conv/BatchNorm")
        prefix = f"{name}." if name else ""
        for key in ("weight", "bias", "running_mean", "running_var"):
            value = state.get(prefix + key)
            if value is None or not hasattr(m, key):
                continue
            if key in ("weight", "bias"):
                setattr(m, key, nn.Parameter(torch.empty_like(value)))
            else:
                m._buffers[key] = torch.empty_like(value)
