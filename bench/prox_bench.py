"""Cost of the proximal operators (``trainables.prox``) against the memory-bound floor.

Three measurements, each printed as a Markdown table (medians of ``--repeats``; ratios are
between numbers measured in this one run):

1. **Prox vs floor.** Every prox on the group matrices of real layers (MLP 784-300-10, LeNet fc3,
   a VGG-16 512->512 3x3 conv in both groupings), as a contiguous ``[groups, members]`` tensor,
   against the floor: one elementwise pass producing a new tensor of the same size (``W * 0.5``).
   A second table times the same regularizers the way the training loop calls them,
   ``LayerRegularizer.apply_prox`` on the layer's module (grouping view or copy, prox, copy back
   into ``weight``), still relative to the floor on that weight.
2. **Exact exclusive prox vs the official one-shot CGES step** (the step is what ``cges`` runs by
   default; ``exact: true`` runs group shrink + the exact exclusive prox).
3. **GrOWL scaling** in the number of rows ``n`` (fixed row length 16): total time,
   time / (n log2 n), and the split into the implementation's steps: row norms, the n norms to
   the CPU, numpy's argsort, SciPy's PAVA, the unsort, and the rescale (back to the device,
   every row scaled).

    python bench/prox_bench.py                  # default size: ~1 minute on 2 busy CPU cores
    python bench/prox_bench.py --full --device cuda --out prox.json
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy.optimize import isotonic_regression
from torch import nn

from bench.common import (
    add_common_args,
    apply_threads,
    base_payload,
    fmt_ratio,
    fmt_time,
    markdown_table,
    minor_faults,
    print_header,
    resolve_device,
    sync,
    timeit,
    write_json,
)
from trainables.groups import to_groups
from trainables.prox import (
    _check_owl_weights,
    growl_prox_unchecked,
    _owl_magnitudes,
    _row_norms,
    cges_step,
    growl_weights,
    prox_exclusive_lasso,
    prox_group_lasso,
    prox_growl,
    prox_l1,
)
from trainables.regularizers import LayerRegularizer, get_regularizer

# Layers of the papers' networks: (label, module factory, grouping). The group matrix of a Linear
# [out, in] under "input"/"input_position" is [in, out]; of a Conv2d [out, in, 3, 3] it is
# [in, out*9] ("input") or [in*9, out] ("input_position").
LAYERS = [
    ("MLP fc1 784→300, input", lambda: nn.Linear(784, 300), "input"),
    ("MLP fc2 300→10, input", lambda: nn.Linear(300, 10), "input"),
    ("LeNet fc3 3136→1024, input", lambda: nn.Linear(3136, 1024), "input"),
    ("VGG conv 512→512 3×3, input", lambda: nn.Conv2d(512, 512, 3, padding=1), "input"),
    ("VGG conv 512→512 3×3, input_position", lambda: nn.Conv2d(512, 512, 3, padding=1), "input_position"),
]

# Strengths: the config defaults (trainables.config.REGULARIZER_PARAMS) with step = lr = 0.1.
STEP = 0.1
REG_KWARGS = {
    "l1": {"lam": 1e-3},
    "group_lasso": {"lam": 0.1},
    "exclusive_lasso": {"lam": 3e-3},
    "cges": {"lam": 1e-2, "mu": 0.5},
    "cges_exact": {"lam": 1e-2, "mu": 0.5, "exact": True},
    "growl": {"p": 0.5, "lambda1": 0.1, "lambda2": 1e-3},
}
PROX_COLUMNS = ["l1", "group_lasso", "exclusive_lasso", "cges_step", "cges_exact", "growl", "growl_unchecked"]


def _weights(module: nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return module.to(device=device, dtype=dtype)


def _prox_fns(W: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """The prox functions on one group matrix, with the thresholds the regularizers would use."""
    n = W.shape[0]
    lam = STEP * growl_weights(n, max(1, n // 2), 0.1, 1e-3, dtype=W.dtype, device=W.device)
    g = e = STEP * 1e-2 * 0.5
    return {
        "floor": lambda: W * 0.5,
        "l1": lambda: prox_l1(W, STEP * 1e-3),
        "group_lasso": lambda: prox_group_lasso(W, STEP * 0.1),
        "exclusive_lasso": lambda: prox_exclusive_lasso(W, STEP * 3e-3),
        "cges_step": lambda: cges_step(W, g, e),
        "cges_exact": lambda: prox_exclusive_lasso(prox_group_lasso(W, g), e),
        "growl": lambda: prox_growl(W, lam),  # public: validates lam (a CPU copy) every call
        "growl_unchecked": lambda: growl_prox_unchecked(W, lam),  # what the regularizer runs
        # the one-shot exclusive threshold alone (cges_step without its group step)
        "oneshot_exclusive": lambda: _oneshot(W, e),
    }


def _oneshot(W: torch.Tensor, t: float) -> torch.Tensor:
    a = W.abs()
    return torch.sign(W) * torch.clamp(a - t * a.sum(dim=1, keepdim=True), min=0)


def bench_prox(args, device, dtype, repeats) -> tuple[list[dict], list[dict]]:
    """Section 1: contiguous group matrices, then the training loop's apply_prox per layer."""
    contiguous, layered = [], []
    for i, (label, make, grouping) in enumerate(LAYERS):
        module = _weights(make(), device, dtype, seed=i)
        W = to_groups(module.weight.detach(), grouping).contiguous().clone()
        fns = _prox_fns(W)
        row = {"layer": label, "shape": list(W.shape), "grouping": grouping}
        row["faults"] = {}
        for name, fn in fns.items():
            row[name] = timeit(fn, repeats=repeats, warmup=1, device=device).median
            if device.type == "cpu":  # JSON only: temporaries above the mmap threshold fault pages in
                row["faults"][name] = minor_faults(fn, number=3)
        contiguous.append(row)
        print(f"  timed {label} {tuple(W.shape)} (contiguous)", file=sys.stderr, flush=True)
        if args.skip_layer:
            continue
        weight = module.weight
        G = to_groups(weight.detach(), grouping)
        is_view = G.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
        lrow = {"layer": label, "shape": list(W.shape), "weight_shape": list(weight.shape), "grouping": grouping,
                "group_matrix": ("contiguous view" if G.is_contiguous() else "strided view") if is_view else "copy"}
        lrow["floor"] = timeit(lambda: weight.detach() * 0.5, repeats=repeats, warmup=1, device=device).median
        original = weight.detach().clone()
        for name in ("l1", "group_lasso", "exclusive_lasso", "cges", "cges_exact", "growl"):
            cls = get_regularizer("cges" if name == "cges_exact" else name)
            layer = LayerRegularizer(label, module, grouping, cls(**REG_KWARGS[name]))

            def call(layer=layer):
                with torch.no_grad():
                    weight.copy_(original)  # every call sees the same input (the copy is subtracted)
                layer.apply_prox(STEP)

            lrow[name] = timeit(call, repeats=repeats, warmup=1, device=device).median
        with torch.no_grad():
            lrow["copy_only"] = timeit(lambda: weight.copy_(original), repeats=repeats, warmup=1,
                                       device=device).median
        layered.append(lrow)
        print(f"  timed {label} (apply_prox on the module)", file=sys.stderr, flush=True)
    return contiguous, layered


def growl_parts(n: int, row_len: int, device, dtype, repeats: int) -> dict:
    """Section 3: one GrOWL prox on an n x row_len matrix, total and split into the steps of
    ``trainables.prox.growl_prox_unchecked`` (row norms on the device; the n norms to the CPU;
    numpy argsort, SciPy's PAVA and the unsort there; back to the device and rescale the rows)."""
    gen = torch.Generator().manual_seed(n)
    W = (torch.randn(n, row_len, generator=gen, dtype=dtype) / math.sqrt(row_len)).to(device)
    # row norms are ~1; lam_1 = lambda1 + P lambda2 = 0.05 + 0.25 = 0.3 whatever n is, so the
    # amount of pooling (ties) does not change with n
    lam = growl_weights(n, max(1, n // 2), 0.05, 0.5 / n, dtype=dtype, device=device)
    # the intermediate values, computed once
    norms = _row_norms(W).squeeze(1)
    a = norms.detach().abs().cpu().numpy().astype(np.float64)
    lam64 = lam.detach().cpu().numpy().astype(np.float64)
    order = np.argsort(-a)
    d = a[order] - lam64
    x_sorted = np.maximum(isotonic_regression(d, increasing=False).x, 0.0)
    magnitudes = _owl_magnitudes(a, lam64)
    tiny = torch.finfo(dtype).tiny

    def unsort():
        out = np.empty_like(x_sorted)
        out[order] = x_sorted
        return out

    def rescale():
        x = torch.sign(norms) * torch.from_numpy(magnitudes).to(device, dtype)
        scale = torch.where(norms > 0, x / norms.clamp_min(tiny), torch.zeros_like(norms))
        return W * scale.unsqueeze(1)

    t = lambda fn: timeit(fn, repeats=repeats, warmup=1, device=device).median  # noqa: E731
    out = {
        "n": n,
        "row_len": row_len,
        "total": t(lambda: growl_prox_unchecked(W, lam)),
        "checks": t(lambda: _check_owl_weights(lam, n)),  # the extra cost of the public prox_growl
        "row_norms": t(lambda: _row_norms(W).squeeze(1)),
        "to_cpu": t(lambda: (norms.detach().abs().cpu().numpy().astype(np.float64),
                             lam.detach().cpu().numpy().astype(np.float64))),
        "sort": t(lambda: np.argsort(-a)),
        "pava": t(lambda: np.maximum(isotonic_regression(a[order] - lam64, increasing=False).x, 0.0)),
        "unsort": t(unsort),
        "rescale": t(rescale),
        "pools": int(len(np.unique(x_sorted))),
    }
    parts = ("row_norms", "to_cpu", "sort", "pava", "unsort", "rescale")
    out["sum_of_parts"] = sum(out[p] for p in parts)
    out["other"] = out["total"] - out["sum_of_parts"]  # Python and dispatch overhead of the calls
    out["per_nlogn_ns"] = out["total"] / (n * math.log2(n)) * 1e9
    out["per_n_ns"] = out["total"] / n * 1e9
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--growl-n", type=int, nargs="+", default=None,
                        help="row counts of the GrOWL scaling (default 1e2 1e3 1e4 1e5; --full adds 1e6)")
    parser.add_argument("--growl-row-len", type=int, default=16)
    parser.add_argument("--skip-layer", action="store_true",
                        help="skip the apply_prox-on-the-module table (halves the time)")
    parser.add_argument("--only", choices=["prox", "growl"], default=None, help="run one section only")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (15 if args.full else 5)
    growl_ns = args.growl_n or ([10**k for k in range(2, 7)] if args.full else [10**k for k in range(2, 6)])
    payload = base_payload("bench/prox_bench.py", args, device)
    payload.update(repeats=repeats, dtype=args.dtype)
    print_header("Prox cost (bench/prox_bench.py)", device, [
        f"Median of {repeats} after a warm-up call, {args.dtype}; ratios are to the floor "
        "(`W * 0.5`, one elementwise pass writing a new tensor of the same size) measured in the same run."])

    if args.only in (None, "prox"):
        contiguous, layered = bench_prox(args, device, dtype, repeats)
        payload["prox"], payload["apply_prox"] = contiguous, layered
        print("#### Prox on a contiguous group matrix: median time (ratio to the floor)\n")
        headers = ["layer", "groups × members", "floor"] + PROX_COLUMNS
        rows = [[r["layer"], "×".join(map(str, r["shape"])), fmt_time(r["floor"])]
                + [f"{fmt_time(r[c])} ({fmt_ratio(r[c] / r['floor'])})" for c in PROX_COLUMNS]
                for r in contiguous]
        print(markdown_table(headers, rows))
        print("\n`growl` is the public `prox_growl` (validates the weights on the CPU every call); "
              "`growl_unchecked` is what the `growl` regularizer runs. `cges_exact` = group prox "
              "then the exact exclusive prox (`cges` with `exact: true`).\n")

        print("#### Exact exclusive prox vs the official one-shot CGES step\n")
        rows = [[r["layer"], "×".join(map(str, r["shape"])), fmt_time(r["oneshot_exclusive"]),
                 fmt_time(r["exclusive_lasso"]), fmt_ratio(r["exclusive_lasso"] / r["oneshot_exclusive"]),
                 fmt_time(r["cges_step"]), fmt_time(r["cges_exact"]), fmt_ratio(r["cges_exact"] / r["cges_step"])]
                for r in contiguous]
        print(markdown_table(["layer", "groups × members", "one-shot threshold", "exact exclusive prox",
                              "exact / one-shot", "cges_step (official)", "group + exact exclusive",
                              "exact / official"], rows))
        if layered:
            print("\n#### As the training loop calls it: `LayerRegularizer.apply_prox` on the module "
                  "(median time, ratio to the floor on the weight)\n")
            cols = ["l1", "group_lasso", "exclusive_lasso", "cges", "cges_exact", "growl"]
            rows = [[r["layer"], "×".join(map(str, r["weight_shape"])),
                     r["group_matrix"], fmt_time(r["floor"])]
                    + [f"{fmt_time(r[c] - r['copy_only'])} ({fmt_ratio((r[c] - r['copy_only']) / r['floor'])})"
                       for c in cols] for r in layered]
            print(markdown_table(["layer", "weight", "group matrix", "floor"] + cols, rows))
            print("\nEach call first restores the weight (`copy_`, timed separately and subtracted). "
                  "`group matrix`: what `to_groups` gives the prox: a strided view (Linear: `W.t()`, "
                  "Conv2d `input_position`) or a copy (Conv2d `input`).\n")

    if args.only in (None, "growl"):
        print(f"#### GrOWL prox vs the number of rows n (row length {args.growl_row_len}): where the time goes\n",
              flush=True)
        scaling = []
        for n in growl_ns:
            scaling.append(growl_parts(n, args.growl_row_len, device, dtype, repeats))
            print(f"  timed GrOWL n={n}", file=sys.stderr, flush=True)
        payload["growl_scaling"] = scaling
        headers = ["n", "total", "total / (n log₂ n)", "total / n", "row norms", "to CPU", "argsort",
                   "PAVA (SciPy)", "unsort", "rescale", "other", "prox_growl checks", "pools"]
        rows = [[f"{s['n']:,}", fmt_time(s["total"]), f"{s['per_nlogn_ns']:.3g} ns", f"{s['per_n_ns']:.3g} ns",
                 fmt_time(s["row_norms"]), fmt_time(s["to_cpu"]), fmt_time(s["sort"]), fmt_time(s["pava"]),
                 fmt_time(s["unsort"]), fmt_time(s["rescale"]), fmt_time(s["other"]),
                 fmt_time(s["checks"]), f"{s['pools']:,}"] for s in scaling]
        print(markdown_table(headers, rows))
        if len(scaling) >= 2:
            slopes = []
            for a, b in zip(scaling, scaling[1:]):
                slope = math.log(b["total"] / a["total"]) / math.log(b["n"] / a["n"])
                ideal = math.log(b["n"] * math.log2(b["n"]) / (a["n"] * math.log2(a["n"]))) / math.log(b["n"] / a["n"])
                slopes.append({"from": a["n"], "to": b["n"], "slope": slope, "n_log_n_slope": ideal})
            payload["growl_loglog_slopes"] = slopes
            print("\nlog-log slope of the total time between consecutive n (O(n log n) gives the value in "
                  "brackets, O(n) 1.00; fixed per-call overheads pull the slope below): "
                  + ", ".join(f"{s['from']:,}→{s['to']:,}: {s['slope']:.2f} ({s['n_log_n_slope']:.2f})"
                              for s in slopes) + ".")
        print("\nParts are timed separately on the same intermediate values (`other` = total − the six "
              "parts before it: Python and dispatch overhead). `prox_growl checks` is the weight validation "
              "that the public `prox_growl` adds (the `growl` regularizer skips it). `pools`: distinct "
              "values of the PAVA output.\n")

    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
