"""Size and cost of a sparse network: GrOWL's metrics (algorithms.md §3.7) and FLOPs.

Definitions (all computed from the modules themselves, nothing per-network is hard-coded):

- ``params_total``: parameter entries of the dense model (weights, biases, BatchNorm affine;
  buffers such as BN running statistics are not parameters and are not counted).
- ``params_nonzero``: non-zero parameter entries of the compact model (the sparse count: what a
  sparse format would store).
- ``params_compact``: parameter entries of the compact model, zeros included: what a dense runtime
  stores for the compacted network (``sum(p.numel())`` of the loaded ``compact_model.pt``; buffers
  such as BatchNorm statistics and the input selection are not parameters). ``params_total /
  params_compact`` is the physical compression, ``params_total / params_nonzero`` the sparse one.
- ``params_unique``: per parameter tensor of the compact model, the number of distinct *non-zero*
  values, summed over tensors. Tied rows (GrOWL's parameter sharing) therefore count once. Unlike
  the official GrOWL MNIST code (``len(np.unique(W))``, which counts 0 once per layer) zero is not
  a stored value here, so a layer with any zero has one unique value less than in that code.
- ``sparsity = 1 - params_nonzero / params_total``, ``compression_rate = params_total /
  params_unique``, ``param_sharing = params_nonzero / params_unique``; so ``compression_rate =
  param_sharing / (1 - sparsity)``. A network without any non-zero parameter is degenerate: both
  ratios are reported as ``0.0`` (kept finite so every value is JSON- and MLflow-safe).
- ``flops_dense`` / ``flops_compact``: :class:`torch.utils.flop_counter.FlopCounterMode` totals for
  one example (batch 1, eval mode, no grad) through the dense / compact model. torch counts
  2 FLOPs per multiply-accumulate of matmuls and convolutions and nothing for bias, activations,
  BatchNorm, pooling or the compact model's input selection.
- ``flops_sparse``: the CGES paper's convention (algorithms.md §2.6): the sum over Linear/Conv2d
  layers of the layer's dense FLOPs times the fraction of non-zero weights of that layer in the
  dense model (FLOPs assumed proportional to element density).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .groups import check_grouping, module_groups
from .models import prunable_layers

__all__ = [
    "at_chance",
    "model_metrics",
    "count_params",
    "count_nonzero",
    "count_unique",
    "count_flops",
    "eval_mode",
]


def count_params(model: nn.Module) -> int:
    """Number of parameter entries."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Number of non-zero parameter entries."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def count_unique(tensor: torch.Tensor) -> int:
    """Distinct non-zero values of one tensor (0 is not counted)."""
    values = tensor.detach().flatten()
    values = values[values != 0]
    if values.device.type == "cpu":  # numpy's unique is ~10x torch's on the CPU (bench/train_overhead.py)
        return int(np.unique(values.numpy()).size)
    return int(torch.unique(values).numel())


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; every submodule's own train/eval flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """FLOPs of one example through ``model``: the total, and per qualified module name.

    ``FlopCounterMode`` keys modules as ``<root class name>.<qualified name>``; the root prefix is
    stripped here (the root itself is under ``""``).
    """
    _check_shape(input_shape)
    ref = next(iter(model.parameters()), None)
    x = torch.zeros(1, *input_shape, dtype=ref.dtype if ref is not None else torch.float32,
                    device=ref.device if ref is not None else "cpu")
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(x)
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == root or key.startswith(root + "."):
            per_module[key[len(root) + 1:]] = int(sum(ops.values()))
    return int(counter.get_total_flops()), per_module


def _check_shape(input_shape: tuple[int, ...]) -> None:
    shape = tuple(input_shape)
    if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}")


def _inner(compact_model: nn.Module) -> tuple[nn.Module, str]:
    """The module whose qualified names match the dense model's, and its prefix."""
    net = getattr(compact_model, "net", None)
    return (net, "net.") if isinstance(net, nn.Module) else (compact_model, "")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def model_metrics(model: nn.Module, compact_model: nn.Module, input_shape: tuple[int, ...], *,
                  groupings: dict[str, str] | None = None) -> dict:
    """Sparsity, parameter counts, sharing, compression and FLOPs (see the module docstring).

    ``groupings`` maps a prunable layer's name to its grouping (``input``, ``input_position``,
    ``filter``); those layers also report ``groups`` and ``zero_groups`` of the dense weight.
    """
    layers = prunable_layers(model)
    _check_groupings(groupings or {}, [name for name, _ in layers])
    total, nonzero = count_params(model), count_nonzero(compact_model)
    uniques = {id(p): count_unique(p) for p in compact_model.parameters()}  # each tensor once
    unique = sum(uniques.values())
    flops_dense, dense_by = count_flops(model, input_shape)
    flops_compact, compact_by = count_flops(compact_model, input_shape)
    inner, prefix = _inner(compact_model)
    rows = []
    for name, m in layers:
        small = inner.get_submodule(name)
        rows.append(_layer_row(name, m, small, uniques[id(small.weight)], dense_by.get(name, 0),
                               compact_by.get(prefix + name, 0), (groupings or {}).get(name)))
    return {
        "params_total": total,
        "params_nonzero": nonzero,
        "params_compact": count_params(compact_model),
        "params_unique": unique,
        "sparsity": 1.0 - _ratio(nonzero, total) if total else 0.0,
        "compression_rate": _ratio(total, unique),
        "param_sharing": _ratio(nonzero, unique),
        "flops_dense": flops_dense,
        "flops_compact": flops_compact,
        "flops_sparse": sum(r["flops_sparse"] for r in rows),
        "layers": rows,
    }


def _check_groupings(groupings: dict[str, str], names: list[str]) -> None:
    for name, grouping in groupings.items():
        if name not in names:
            raise ValueError(f"groupings names layer {name!r}, which is not a prunable layer; "
                             f"valid: {names}")
        if grouping != "channel":  # groups: channel counts the layer's channels (its filters)
            check_grouping(grouping)


def _layer_row(name: str, dense: nn.Module, small: nn.Module, unique: int, flops_dense: int,
               flops_compact: int, grouping: str | None) -> dict:
    w = dense.weight.detach()
    nz = int(torch.count_nonzero(w))
    row = {
        "name": name,
        "type": type(dense).__name__,
        "shape": list(w.shape),
        "compact_shape": list(small.weight.shape),
        "params": w.numel(),
        "nonzero": nz,
        "compact_nonzero": int(torch.count_nonzero(small.weight.detach())),
        "unique": unique,
        "flops_dense": flops_dense,
        "flops_compact": flops_compact,
        "flops_sparse": flops_dense * nz / w.numel() if w.numel() else 0.0,
    }
    if grouping is not None:
        g = module_groups(dense, "filter" if grouping == "channel" else grouping)
        row.update(grouping=grouping, groups=int(g.shape[0]), zero_groups=int((~g.ne(0).any(1)).sum()))
    return row



def at_chance(accuracy: float, chance: float, n: int) -> bool:
    """Whether ``accuracy`` on ``n`` examples is no better than always predicting the most frequent
    class (accuracy ``chance``): at most two standard errors of a ``chance`` coin (and 0.02) above it."""
    margin = max(0.02, 2 * (chance * (1 - chance) / max(n, 1)) ** 0.5)
    return accuracy <= chance + margin
