"""Physical compaction: the smaller network whose outputs equal the zeroed (masked) network's.

A structured-sparsity regularizer leaves zeroed weights; :func:`compact` removes what they make
useless, using the model's own ``couplings()`` (see :class:`trainables.models.Coupling`):

1. **Dead consumer inputs.** Channel ``j`` of a producer ``P`` is removed when every consumer
   weight that reads it is zero (Conv consumer: ``W[:, j]``; Linear after a flatten: the
   ``positions`` consecutive columns of channel ``j``; Linear -> Linear: column ``j``). ``P``'s row
   ``j`` (weight and bias), the BatchNorm entries ``j`` and the consumer's columns go.
2. **Dead producers.** Channel ``j`` whose producer row is all zero carries a constant (bias ->
   BN -> activation -> pooling). The constant is read by running the network on one zero input
   with a forward pre-hook on the consumer (valid because the channel does not depend on the
   input). For a Linear consumer it is folded exactly into the consumer's bias
   (``b += W[:, cols_j] @ const_j``; a zero bias is created if there is none) and the channel is
   removed. For a Conv consumer a constant map is not foldable (zero padding makes the border
   differ), so the channel is kept, unless the constant is exactly zero (e.g. ReLU of a negative
   bias), in which case it contributes nothing and is removed.
3. **Model inputs.** Inputs that the first prunable layer (the one reading the model's input)
   never reads (all-zero Linear columns / Conv input channels) are dropped; the compact model then
   starts with an index selection (flatten + ``index_select`` before a Linear, channel
   ``index_select`` before a Conv), stored as the buffer ``input_index`` so that it is saved in the
   ``state_dict``.

Removing a channel can make another removable (rule 2 can zero a whole consumer row, which makes
the next coupling's producer dead; rule 1 can zero a whole producer column, which makes the
previous coupling's consumer input dead), so passes over the couplings (in forward order) repeat
until nothing changes; then the input selection is done once (dropping zero columns changes no
row). The network's outputs (classes) are never removed: they are no coupling's producer. A
coupling never loses its last channel (one is kept, so no layer becomes zero-sized).

Semantics: compaction uses **eval** semantics (BatchNorm running statistics, dropout off), even if
``model`` is in train mode; ``model`` itself is never modified (a deep copy is compacted), and the
returned :class:`CompactModel` is in eval mode on ``model``'s device. It is meant for inference and
counting: training it further in train mode would not match the dense network (batch statistics of
folded channels are gone).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .data import DataSpec
from .models import Coupling, build_model, prunable_layers

__all__ = [
    "CompactModel",
    "compact",
    "check_couplings",
    "save_compact",
    "load_compact",
    "FORMAT",
]

FORMAT = "sparsetune.compact/1"
_LAYER = (nn.Linear, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class CompactModel(nn.Module):
    """An optional input selection (buffer ``input_index``) followed by the sliced network ``net``.

    Takes the same inputs as the dense model it came from.
    """

    def __init__(self, net: nn.Module, input_index: torch.Tensor | None = None):
        super().__init__()
        self.net = net
        self.register_buffer("input_index", input_index)
        self.input_mode = _input_mode(net)
        self.input_shape = getattr(net, "input_shape", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_index is not None:
            if self.input_mode == "features":
                x = x.flatten(1)
            x = x.index_select(1, self.input_index)
        return self.net(x)


def _input_mode(net: nn.Module) -> str:
    layers = prunable_layers(net)
    if not layers:
        raise ValueError(f"{type(net).__name__} has no Linear/Conv2d layer")
    return "features" if isinstance(layers[0][1], nn.Linear) else "channels"


# ----------------------------------------------------------------------------- validation


def check_couplings(model: nn.Module) -> list[Coupling]:
    """``model.couplings()``, checked: modules exist, have the right types and matching sizes."""
    if not callable(getattr(model, "couplings", None)):
        raise TypeError(f"{type(model).__name__} has no couplings() method; compaction needs one")
    couplings = list(model.couplings())
    producers = [c.producer for c in couplings]
    for c in couplings:
        if producers.count(c.producer) > 1:
            raise ValueError(f"producer {c.producer!r} appears in {producers.count(c.producer)} "
                             "couplings; a producer's channels must reach exactly one consumer")
        _check_coupling(model, c)
    return couplings


def _module(model: nn.Module, name: str, kinds: tuple[type, ...], role: str) -> nn.Module:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"coupling {role} {name!r} is not a module of {type(model).__name__}") from None
    if not isinstance(m, kinds):
        raise ValueError(f"coupling {role} {name!r} is a {type(m).__name__}, expected "
                         + " or ".join(k.__name__ for k in kinds))
    if isinstance(m, nn.Conv2d) and m.groups != 1:
        raise ValueError(f"coupling {role} {name!r}: grouped convolutions are not supported")
    return m


def _check_coupling(model: nn.Module, c: Coupling) -> None:
    p = _module(model, c.producer, _LAYER, "producer")
    q = _module(model, c.consumer, _LAYER, "consumer")
    n = p.weight.shape[0]
    if c.bn is not None:
        bn = _module(model, c.bn, _BN, "bn")
        if bn.num_features != n:
            raise ValueError(f"coupling bn {c.bn!r} has {bn.num_features} features, "
                             f"producer {c.producer!r} has {n} outputs")
    expected = n * (c.positions if isinstance(q, nn.Linear) else 1)
    if q.weight.shape[1] != expected:
        raise ValueError(f"coupling {c.producer!r} -> {c.consumer!r}: consumer reads "
                         f"{q.weight.shape[1]} inputs, expected {n} channels x positions="
                         f"{c.positions if isinstance(q, nn.Linear) else 1} = {expected}")


# ----------------------------------------------------------------------------- compaction


def compact(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> CompactModel:
    """The physically smaller network equal to ``model`` in eval mode (see the module docstring).

    ``input_shape`` (one example) defaults to ``model.input_shape``; it is needed to read the
    constants of dead producers.
    """
    if isinstance(model, CompactModel):
        raise TypeError("the model is already a CompactModel; compact the dense model")
    couplings = check_couplings(model)
    shape = tuple(input_shape if input_shape is not None else getattr(model, "input_shape", ()))
    if not shape:
        raise ValueError(f"{type(model).__name__} has no input_shape; pass input_shape=")
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        while any([_compact_coupling(net, c, shape) for c in couplings]):
            pass
        index = _select_inputs(net, shape)
    return CompactModel(net, index).eval()


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def _reads(consumer: nn.Module, n: int, positions: int) -> torch.Tensor:
    """``[n, k]``: the consumer weights reading each of the ``n`` producer channels."""
    w = consumer.weight
    if isinstance(consumer, nn.Linear):
        return w.reshape(w.shape[0], n, positions).transpose(0, 1).reshape(n, -1)
    return w.transpose(0, 1).reshape(n, -1)


def _compact_coupling(net: nn.Module, c: Coupling, shape: tuple[int, ...]) -> bool:
    """One coupling's removals (rules 1 and 2); True when something was removed."""
    p, q = net.get_submodule(c.producer), net.get_submodule(c.consumer)
    bn = net.get_submodule(c.bn) if c.bn is not None else None
    n = p.weight.shape[0]
    positions = c.positions if isinstance(q, nn.Linear) else 1
    consumer_dead = ~_reads(q, n, positions).ne(0).any(1)
    constant = (~_rows(p.weight).ne(0).any(1)) & ~consumer_dead
    remove = consumer_dead.clone()
    if constant.any():
        x = _consumer_input(net, q, shape)
        removable = constant if isinstance(q, nn.Linear) else constant & ~x[0].ne(0).flatten(1).any(1)
        remove |= removable
    if remove.all():
        remove[0] = False  # keep one channel: no zero-sized layers
    if not remove.any():
        return False
    if isinstance(q, nn.Linear) and (remove & constant).any():
        _fold(q, (remove & constant).repeat_interleave(positions), x.reshape(-1))
    keep = ~remove
    _slice_out(p, keep)
    if bn is not None:
        _slice_bn(bn, keep)
    _slice_in(q, keep.repeat_interleave(positions))
    return True


class _Captured(Exception):
    """Stops the forward pass once the consumer's input is known."""


def _consumer_input(net: nn.Module, consumer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """The consumer's input when the network sees one all-zero example."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach())
        raise _Captured

    handle = consumer.register_forward_pre_hook(hook)
    ref = next(net.parameters())
    try:
        net(torch.zeros(1, *shape, dtype=ref.dtype, device=ref.device))
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"{type(consumer).__name__} was not called in the forward pass")
    return captured[0]


def _fold(q: nn.Linear, cols: torch.Tensor, x: torch.Tensor) -> None:
    """``q.bias += W[:, cols] @ x[cols]`` (columns about to be removed, input-independent)."""
    shift = q.weight[:, cols] @ x[cols].to(q.weight.dtype)
    if q.bias is None:
        q.bias = nn.Parameter(torch.zeros_like(shift))
    q.bias.data = q.bias.data + shift


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
    else:
        module._buffers[name] = value.clone()


def _slice_out(m: nn.Module, keep: torch.Tensor) -> None:
    _set(m, "weight", m.weight[keep])
    if m.bias is not None:
        _set(m, "bias", m.bias[keep])
    if isinstance(m, nn.Linear):
        m.out_features = m.weight.shape[0]
    else:
        m.out_channels = m.weight.shape[0]


def _slice_in(m: nn.Module, keep: torch.Tensor) -> None:
    _set(m, "weight", m.weight[:, keep])
    if isinstance(m, nn.Linear):
        m.in_features = m.weight.shape[1]
    else:
        m.in_channels = m.weight.shape[1]


def _slice_bn(bn: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(bn, name, None) is not None:
            _set(bn, name, getattr(bn, name)[keep])
    bn.num_features = int(keep.sum())


def _select_inputs(net: nn.Module, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Drop the model inputs the first layer never reads; the kept indices, or None if all."""
    _, first = prunable_layers(net)[0]
    n_in = math.prod(shape) if isinstance(first, nn.Linear) else shape[0]
    if first.weight.shape[1] != n_in:
        raise ValueError(f"the first layer reads {first.weight.shape[1]} inputs, but "
                         f"input_shape={shape} gives {n_in}")
    live = _reads(first, n_in, 1).ne(0).any(1)
    if live.all():
        return None
    if not live.any():
        live[0] = True
    _slice_in(first, live)
    return live.nonzero().flatten()


# ----------------------------------------------------------------------------- save / load


def save_compact(path: str | Path, compact_model: CompactModel, *,
                 model_cfg: dict[str, Any] | ModelConfig, spec: DataSpec,
                 preprocessing: dict[str, Any] | None = None) -> None:
    """Save a plain dict (tensors, strings, numbers; no pickled modules) for :func:`load_compact`.

    ``preprocessing`` (``trainables.data.Dataset.preprocessing``: plain lists, strings and numbers)
    is stored under that key for inference (``trainables.deploy``); files without it still load."""
    if not isinstance(compact_model, CompactModel):
        raise TypeError(f"save_compact needs a CompactModel, got {type(compact_model).__name__}")
    cfg = _model_config(model_cfg)
    _check_architecture(compact_model, cfg, spec)
    torch.save({
        "format": FORMAT,
        "model": cfg.model_dump(mode="json", exclude_none=True),
        "input_shape": [int(d) for d in spec.input_shape],
        "num_classes": int(spec.num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in compact_model.state_dict().items()},
        **({"preprocessing": preprocessing} if preprocessing is not None else {}),
    }, Path(path))


def load_compact(path: str | Path, map_location: str | torch.device | None = None) -> CompactModel:
    """Rebuild a model saved by :func:`save_compact` (``torch.load(weights_only=True)``).

    The dense architecture is built with ``build_model``, every Linear/Conv2d/BatchNorm is shrunk to
    the saved shapes, the input selection is added if present, and the state dict is loaded
    strictly. The result is in eval mode (on ``map_location`` if given, else on the CPU).
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a compact model saved by save_compact "
                         f"(format={payload.get('format') if isinstance(payload, dict) else None!r})")
    spec = DataSpec(tuple(payload["input_shape"]), int(payload["num_classes"]))
    net = build_model(_model_config(payload["model"]), spec)
    state = payload["state_dict"]
    _shrink_to(net, {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    model = CompactModel(net, state.get("input_index"))
    model.load_state_dict(state, strict=True)
    if map_location is not None:
        model.to(map_location)
    return model.eval()


def _model_config(cfg: dict[str, Any] | ModelConfig) -> ModelConfig:
    if isinstance(cfg, ModelConfig):
        return cfg
    if not isinstance(cfg, dict):
        raise TypeError(f"model_cfg must be a dict or ModelConfig, got {type(cfg).__name__}")
    try:
        return ModelConfig.model_validate(cfg)
    except Exception as e:
        raise ValueError(f"invalid model config {cfg!r}: {e}") from None


def _check_architecture(compact_model: CompactModel, cfg: ModelConfig, spec: DataSpec) -> None:
    """The saved config must rebuild the same modules (checked on the meta device: no memory)."""
    with torch.device("meta"):
        dense = build_model(cfg, spec)
    expected = set(dense.state_dict())
    got = set(compact_model.net.state_dict())
    # folding may have given a bias-free Linear consumer a bias
    extra = sorted(k for k in got - expected if not _is_linear_bias(dense, k))
    missing = sorted(expected - got)
    if extra or missing:
        raise ValueError(f"model_cfg {cfg.name!r} with input_shape={tuple(spec.input_shape)} does not "
                         f"describe this compact model (unexpected {extra[:5]}, missing {missing[:5]})")


def _is_linear_bias(model: nn.Module, key: str) -> bool:
    owner, _, leaf = key.rpartition(".")
    try:
        return leaf == "bias" and isinstance(model.get_submodule(owner), nn.Linear)
    except AttributeError:
        return False


def _shrink_to(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize every Linear/Conv2d/BatchNorm of ``net`` to the shapes in ``state``."""
    for name, m in net.named_modules():
        if not isinstance(m, _LAYER + _BN):
            continue
        prefix = f"{name}." if name else ""
        for key in ("weight", "bias", "running_mean", "running_var"):
            value = state.get(prefix + key)
            if value is None or not hasattr(m, key):
                continue
            if key in ("weight", "bias"):
                setattr(m, key, nn.Parameter(torch.empty_like(value)))
            else:
                m._buffers[key] = torch.empty_like(value)
        _sync_sizes(m)


def _sync_sizes(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.Conv2d):
        m.out_channels, m.in_channels = m.weight.shape[:2]
    elif m.weight is not None:
        m.num_features = m.weight.shape[0]
    elif m.running_mean is not None:
        m.num_features = m.running_mean.shape[0]
