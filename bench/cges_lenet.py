"""CGES on the official LeNet, on MNIST-10k: parameters and FLOPs kept vs the l2 baseline.

MNIST-10k: the real MNIST test set (../shared/data/mnist), first 8,000 for training + validation
(7,200 / 800), last 2,000 for testing. Configurations (3 seeds each):

- l2 baseline: the official script with cges=False: plain SGD, lr 0.05 x0.9 every ~9 epochs,
  batch 100, dropout 0.5, and its weight decay ``lr * 0.01 * sum(W^2)/2``, i.e. 5e-4 at lr 0.05.
- CGES (official lambda 6e-5): examples/papers/lenet_cges.yaml as it is (mu_l 0.2..0.8, the
  official per-layer normalisers, the CGES step after every iteration).
- CGES with lambda multiplied by each of ``--lam-multipliers`` (default 3 and 10): the official
  run makes 30,000 iterations, this one 72 per epoch, so how far the official lambda carries is
  an open question; ``--lam-multipliers iters`` adds 30,000 / (72 x epochs), the same total
  shrinkage as the official run.

Reported: parameters kept (non-zero / total) and FLOPs kept in three conventions:
- CGES's printout (utils.py): 1 - sum_l zero-fraction_l x cost_l / sum_l cost_l, with the official
  code's hard-coded VALID-convolution costs [460800, 5120000, 3211264, 10240];
- density-weighted dense FLOPs of our SAME-padded net (``flops_sparse``);
- FLOPs of the physically compacted network (``flops_compact``), what an inference engine runs.

    python bench/cges_lenet.py                 # 8 epochs, 3 seeds, lambda x1, x3, x10 (~20 min on 2 cores)
    python bench/cges_lenet.py --full          # 30 epochs
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

import torch  # noqa: E402

from trainables import TrialConfig, fit  # noqa: E402

OFFICIAL_COSTS = [460800, 5120000, 3211264, 10240]  # CGES utils.py, VALID convolutions
OFFICIAL_ITERATIONS = 30000


def configs(data_dir: Path, epochs: int, multipliers: list[str]) -> dict[str, dict]:
    data = {"name": "idx", "path": str(data_dir), "test_fraction": 0.2, "test_split": "last"}
    cges = TrialConfig.from_yaml(ROOT / "examples/papers/lenet_cges.yaml").to_dict()
    cges.update(data=data, device="cpu")
    cges["optim"]["epochs"] = epochs
    iterations = epochs * -(-7200 // cges["optim"]["batch_size"])
    l2 = {**cges, "regularizer": {"name": "none"}, "optim": {**cges["optim"], "weight_decay": 0.01 * cges["optim"]["lr"]}}
    out = {"l2 baseline": l2, "CGES (official lambda 6e-5)": cges}
    for m in multipliers:
        factor = OFFICIAL_ITERATIONS / iterations if m == "iters" else float(m)
        out[f"CGES (lambda x{factor:.3g})"] = {**cges, "regularizer": {**cges["regularizer"],
                                                                       "lam": cges["regularizer"]["lam"] * factor}}
    return out


def official_flop_fraction(layers: list[dict]) -> float:
    zero = [1 - info["nonzero"] / info["params"] for info in layers]
    return 1 - sum(z * c for z, c in zip(zero, OFFICIAL_COSTS)) / sum(OFFICIAL_COSTS)


def summarise(metrics: list[dict]) -> dict[str, tuple[float, float]]:
    rows = {
        "test_accuracy": [m["test_accuracy"] for m in metrics],
        "params_kept": [m["params_nonzero"] / m["params_total"] for m in metrics],
        "weights_kept": [sum(l["nonzero"] for l in m["layers"]) / sum(l["params"] for l in m["layers"]) for m in metrics],
        "flops_official": [official_flop_fraction(m["layers"]) for m in metrics],
        "flops_sparse": [m["flops_sparse"] / m["flops_dense"] for m in metrics],
        "flops_compact": [m["flops_compact"] / m["flops_dense"] for m in metrics],
    }
    per_layer = [[1 - l["nonzero"] / l["params"] for l in m["layers"]] for m in metrics]
    out = {k: (statistics.mean(v), statistics.pstdev(v)) for k, v in rows.items()}
    out["layer_sparsity"] = [statistics.mean(col) for col in zip(*per_layer)]
    return out


def pct(ms: tuple[float, float]) -> str:
    return f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=1)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default 8, --full 30")
    parser.add_argument("--lam-multipliers", nargs="*", default=["3", "10"],
                        help="extra CGES runs with lambda x these (or 'iters': the official run's total shrinkage)")
    args = parser.parse_args()
    epochs = args.epochs or (30 if args.full else 8)
    if not args.data_dir.exists():
        raise SystemExit(f"--data-dir {args.data_dir} does not exist (the MNIST test set in IDX format)")
    payload = base_payload("cges_lenet", args, torch.device("cpu"))
    print_header("CGES on LeNet, MNIST-10k: parameters and FLOPs kept", torch.device("cpu"), [
        f"{epochs} epochs ({epochs * 72} iterations; the official run makes {OFFICIAL_ITERATIONS}), seeds {args.seeds}."])
    start = time.perf_counter()
    results, rows, layer_rows = {}, [], []
    for label, cfg in configs(args.data_dir, epochs, args.lam_multipliers).items():
        metrics = [fit(TrialConfig.from_dict({**cfg, "seed": s})).metrics for s in args.seeds]
        stats = summarise(metrics)
        results[label] = {"config": cfg, "stats": stats}
        rows.append([label, pct(stats["test_accuracy"]), pct(stats["weights_kept"]), pct(stats["params_kept"]),
                     pct(stats["flops_official"]), pct(stats["flops_sparse"]), pct(stats["flops_compact"])])
        layer_rows.append([label, *[f"{100 * z:.1f}%" for z in stats["layer_sparsity"]]])
        print(f"  {label}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    print()
    print(markdown_table(["configuration", "test accuracy", "weights kept (CGES printout)",
                          "params kept (compacted net)", "FLOPs kept (CGES printout)",
                          "FLOPs kept (density, SAME)", "FLOPs kept (compacted net)"], rows))
    print()
    print(markdown_table(["configuration", "conv1 zeros", "conv2 zeros", "fc3 zeros", "fc4 zeros"], layer_rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    payload["results"] = results
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
