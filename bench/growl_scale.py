"""GrOWL's controllability on MNIST-10k: row sparsity against strength, ``scale: absolute`` (the
papers' prox) vs ``scale: relative`` (strengths multiplied by the layer's RMS row norm at each prox).

The network is the Table-1 analogue's (bench/specs/mnist10k_families.yaml: 784-300-10 MLP, ReLU
then BatchNorm, only the first layer regularized on input rows, per-epoch prox with masking, lr
0.01, 40 epochs). BatchNorm after the ReLU makes that layer almost scale-invariant: the loss does
not resist the whole layer shrinking, so an absolute threshold keeps shrinking it and GrOWL
prunes in lumps (every row survives, or every row dies, within a factor of ~1.2 of strength).

For each scale and each ``lambda1`` of the grid (``lambda2 = --ratio x lambda1``, the paper's
ratio 0.036 by default), trains with each seed and reports the fraction of the 784 input rows
pruned, the validation and test accuracy and, with ``--tying``, parameter sharing and the unique
parameters after tying and retraining. The "window" is the part of the grid whose sparsity lies
strictly between 5% and 95%.

    python bench/growl_scale.py --out bench/results/growl_scale.json          # the sweep, seed 0
    python bench/growl_scale.py --scales relative --lambda1 10 --tying --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

import torch  # noqa: E402
from trainables import TrialConfig, fit  # noqa: E402
from trainables.yamlio import load_yaml  # noqa: E402

# 12 strengths, x1.5 apart, per (prox_every, scale): each spans no pruning to collapse (pilot runs)
GRID = {("epoch", "absolute"): [0.3 * 1.5 ** k for k in range(12)],  # 0.3 .. 26
        ("epoch", "relative"): [1.0 * 1.5 ** k for k in range(12)],  # 1 .. 86
        ("step", "absolute"): [0.02 * 1.5 ** k for k in range(12)],  # 0.02 .. 1.7
        ("step", "relative"): [0.3 * 1.5 ** k for k in range(12)]}  # 0.3 .. 26


def base_config(data_dir: Path, epochs: int, tying: bool) -> dict:
    spec = load_yaml(ROOT / "bench/specs/mnist10k_families.yaml")
    cfg = spec["base"]
    cfg["data"]["path"] = str(data_dir)
    cfg["optim"]["epochs"] = epochs
    cfg["device"] = "cpu"
    if not tying:
        cfg["tying"] = {"enabled": False}
    return cfg


def empty_pixels(data_dir: Path, n: int = 8000) -> tuple[int, int]:
    """Pixels never non-zero, and non-zero in at most 1% of the images, over the first ``n``
    (training + validation) images of the IDX file: rows that cost nothing to prune."""
    import gzip

    import numpy as np

    path = next(p for p in sorted(data_dir.iterdir()) if "images" in p.name)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        X = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 784)[:n]
    seen = (X > 0).sum(axis=0)
    return int((seen == 0).sum()), int((seen <= n // 100).sum())


def run_one(job: tuple[dict, int]) -> dict:
    cfg, threads = job
    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = fit(TrialConfig.from_dict(cfg))
    m = result.metrics
    first = result.model.state_dict()  # the regularized layer is the first Linear
    W = next(v for k, v in first.items() if k.endswith("weight") and v.ndim == 2)
    rows_pruned = float((W.abs().sum(dim=0) == 0).float().mean())  # input rows = columns of [out, in]
    keys = ("val_accuracy", "test_accuracy", "sparsity", "param_sharing", "params_unique", "params_nonzero",
            "flops_compact", "tying_layers", "tying_converged_layers", "tying_fallback_rows")
    return {"rows_pruned": rows_pruned, "seconds": time.perf_counter() - start,
            **{k: float(m[k]) for k in keys if k in m}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=1)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--scales", nargs="+", default=["absolute", "relative"], choices=["absolute", "relative"])
    parser.add_argument("--lambda1", type=float, nargs="+", default=None, help="strengths (default: each scale's grid)")
    parser.add_argument("--ratio", type=float, default=0.036, help="lambda2 / lambda1 (default 0.036, the paper's)")
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--prox-every", choices=["epoch", "step"], default="epoch",
                        help="the prox once per epoch (the official code's, default) or after every step")
    parser.add_argument("--tying", action="store_true", help="tie and retrain 10 epochs (the search's base)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each (default 2)")
    args = parser.parse_args()
    if not args.data_dir.exists():
        raise SystemExit(f"--data-dir {args.data_dir} does not exist (the MNIST test set in IDX format)")
    payload = base_payload("growl_scale", args, torch.device("cpu"))
    header = print_header("GrOWL sparsity vs strength, absolute vs relative scale (MNIST-10k, 784-300-10)",
                          torch.device("cpu"), [f"{args.epochs} epochs, lambda2 = {args.ratio} x lambda1, p = {args.p}, "
                                                f"prox every {args.prox_every}, tying {'on' if args.tying else 'off'}, seeds {args.seeds}"])
    never, rare = empty_pixels(args.data_dir)
    print(f"of the 784 pixels, {never} are zero in all 8,000 training + validation images and {rare} are "
          "non-zero in at most 1% of them\n")
    base = base_config(args.data_dir, args.epochs, args.tying)
    jobs, keys = [], []
    for scale in args.scales:
        for lam in args.lambda1 or GRID[args.prox_every, scale]:
            for seed in args.seeds:
                cfg = {**base, "seed": seed, "regularizer": {
                    **base["regularizer"], "name": "growl", "p": args.p, "lambda1": lam, "lambda2": args.ratio * lam,
                    "prox_every": args.prox_every, "mask_pruned": True, "scale": scale}}
                jobs.append((cfg, 1))
                keys.append((scale, lam, seed))
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_one, jobs))
    runs = [{"scale": s, "lambda1": lam, "lambda2": args.ratio * lam, "seed": seed, **r}
            for (s, lam, seed), r in zip(keys, results)]

    def ms(vals: list[float], pct: bool = False, digits: int = 1) -> str:
        m, sd = statistics.mean(vals), statistics.pstdev(vals)
        f = (lambda x: f"{100 * x:.{digits}f}") if pct else (lambda x: f"{x:.{digits}f}")
        return f"{f(m)} ± {f(sd)}" + ("%" if pct else "") if len(vals) > 1 else f(m) + ("%" if pct else "")

    table, summary = [], {}
    for scale in args.scales:
        cells = [(lam, [r for r in runs if r["scale"] == scale and r["lambda1"] == lam]) for lam in args.lambda1 or GRID[args.prox_every, scale]]
        for lam, rs in cells:
            row = [scale, f"{lam:.3g}", f"{args.ratio * lam:.3g}", ms([r["rows_pruned"] for r in rs], pct=True),
                   ms([r["val_accuracy"] for r in rs], pct=True), ms([r["test_accuracy"] for r in rs], pct=True)]
            if args.tying:
                row += [ms([r["param_sharing"] for r in rs], digits=2), ms([r["params_unique"] for r in rs], digits=0),
                        " ".join(f"{r.get('tying_converged_layers', 0):.0f}/{r.get('tying_layers', 0):.0f}" for r in rs)]
            table.append(row)
        mean_sp = [statistics.mean(r["rows_pruned"] for r in rs) for _, rs in cells]
        inside = [sp for sp in mean_sp if 0.05 < sp < 0.95]
        summary[scale] = {"grid_points": len(cells), "in_window": len(inside),
                          "sparsities_in_window": inside}
    head = ["scale", "lambda1", "lambda2", "input rows pruned", "val accuracy", "test accuracy"]
    if args.tying:
        head += ["param. sharing", "unique params", "tying converged"]
    print()
    print(markdown_table(head, table))
    for scale, s in summary.items():
        print(f"{scale}: {s['in_window']} of {s['grid_points']} strengths prune between 5% and 95% of the rows "
              f"({', '.join(f'{100 * x:.0f}%' for x in s['sparsities_in_window']) or 'none'})")
    print(f"total {time.perf_counter() - start:.0f} s")
    payload.update(header=header, runs=runs, summary=summary)
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
