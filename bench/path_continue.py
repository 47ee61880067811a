"""Where the next stage of a sparsity path starts: the fine-tuned point, or the weights before
fine-tuning (``path.continue_from``), measured on MNIST-10k (RESULTS §10).

The same path (RESULTS §7's network; targets 0.5, 0.8, 0.9, 0.95, 0.98; 6 regularized + 2
fine-tuning epochs a stage) for each family with both settings, 3 seeds; per point the validation
accuracy (what a search ranks by) and the unique parameters. One run per (family, setting, seed).

    python bench/path_continue.py --out bench/results/path_continue.json     # ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

import torch  # noqa: E402

from trainables import TrialConfig, fit  # noqa: E402

FAMILIES = {
    "group_lasso": {"name": "group_lasso", "lam": 0.1, "prox_every": "step"},
    "growl": {"name": "growl", "p": 0.5, "lambda1": 0.1, "lambda2": 1e-3, "prox_every": "step"},
    "magnitude": {"name": "magnitude", "every": 20},
    "channel_magnitude": {"name": "channel_magnitude", "every": 20},
}
TARGETS = [0.5, 0.8, 0.9, 0.95, 0.98]


def config(family: str, continue_from: str, seed: int, data_dir: Path, epochs: int) -> TrialConfig:
    return TrialConfig.from_dict({
        "seed": seed, "device": "cpu",
        "data": {"name": "idx", "path": str(data_dir), "test_fraction": 0.2, "test_split": "last"},
        "model": {"name": "mlp", "hidden": [300], "batch_norm": True},
        "optim": {"name": "momentum", "momentum": 0.9, "lr": 0.01, "epochs": epochs, "batch_size": 128},
        "regularizer": {**FAMILIES[family], "layers": [0], "groups": "input"},
        "path": {"targets": TARGETS, "epochs": epochs, "finetune_epochs": 2, "finetune_lr": 0.003,
                 "continue_from": continue_from}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=3)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=6, help="regularized epochs per stage")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    payload = base_payload("path_continue", args, torch.device("cpu"))
    header = print_header("sparsity paths: continue_from finetuned vs stage (MNIST-10k)", torch.device("cpu"),
                          [f"families {', '.join(args.families)}; targets {TARGETS}; {args.repeats} seeds"])
    runs = []
    for family in args.families:
        for continue_from in ("finetuned", "stage"):
            for seed in range(args.repeats or 3):
                result = fit(config(family, continue_from, seed, args.data_dir, args.epochs), threads=2)
                runs.append({"family": family, "continue_from": continue_from, "seed": seed,
                             "points": [{k: p[k] for k in ("point", "target", "val_accuracy", "test_accuracy",
                                                           "params_unique", "flops_compact")}
                                        for p in result.metrics["points"]]})
                print(family, continue_from, seed, [round(p["val_accuracy"], 3) for p in runs[-1]["points"]], flush=True)
    table = []
    for family in args.families:
        for continue_from in ("finetuned", "stage"):
            mine = [r for r in runs if r["family"] == family and r["continue_from"] == continue_from]
            row = [family, continue_from]
            for k in range(len(TARGETS)):
                vals = [r["points"][k]["val_accuracy"] for r in mine]
                row.append(f"{statistics.mean(vals):.3f} ± {statistics.pstdev(vals):.3f}")
            table.append(row)
    print(markdown_table(["family", "continue_from", *[f"val acc at {t}" for t in TARGETS]], table))
    payload.update(header=header, runs=runs, table=table)
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
