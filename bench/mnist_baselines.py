"""The MNIST-10k search with the pruning baselines on the frontier (bench/specs/mnist10k_baselines.yaml).

Group lasso, GrOWL (relative scale, per-step prox), CGES, magnitude pruning and input-pixel
magnitude pruning share one search: MO-TPE, round robin over the families, MO-ASHA (grace 10,
reduction factor 3) over trials of up to 80 + 10 epochs, so that the whole search trains at most
64 x 50 epochs. Reported, from the search's own MLflow store:

- per family: trials, complete, stopped by MO-ASHA, failed, and the frontier points it holds;
- the epochs the search trained in all (every (trial, epoch) logged), against 64 x 50 = 3,200;
- the complete trials that dominate the GrOWL paper's hand-tuned group-lasso setting as run on
  MNIST-10k (RESULTS §2: val 0.915, 10,519 unique parameters, 39,600 FLOPs = 8.3% of the dense
  476,400; read from ``--paper-json``), and the best of each family at that size;
- the frontier figures with every family and the paper point (bench/figures/mnist10k_baselines_*.png).

    python bench/mnist_baselines.py --out bench/results/mnist_baselines.json     # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

import torch  # noqa: E402
import yaml  # noqa: E402

from moasha_vs_fifo import trial_log  # noqa: E402
from search.plots import frontier_figure  # noqa: E402
from search.spec import SearchSpec, validate_spec  # noqa: E402
from search.run import run_search  # noqa: E402
from trainables.yamlio import load_yaml  # noqa: E402

SPEC = ROOT / "bench/specs/mnist10k_baselines.yaml"


def dominates(a: dict, b: dict) -> bool:
    """``a`` at least as good as ``b`` on accuracy (max), unique parameters and FLOPs (min), better on one."""
    ge = (a["val_accuracy"] >= b["val_accuracy"], a["params_unique"] <= b["params_unique"],
          a["flops_compact"] <= b["flops_compact"])
    gt = (a["val_accuracy"] > b["val_accuracy"], a["params_unique"] < b["params_unique"],
          a["flops_compact"] < b["flops_compact"])
    return all(ge) and any(gt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=1)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--work-dir", type=Path, default=None, help="Ray storage and MLflow store (default: a temp dir)")
    parser.add_argument("--trials", type=int, default=None, help="override the spec's 96 trials")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    parser.add_argument("--fifo", action="store_true", help="no scheduler: every trial trains all its epochs")
    parser.add_argument("--no-figure", action="store_true", help="do not redraw bench/figures/mnist10k_baselines_*.png")
    parser.add_argument("--paper-json", type=Path, default=ROOT / "bench/results/mnist_table1.json",
                        help="the paper settings as run by bench/mnist_table1.py (its 'group lasso (paper)' point)")
    args = parser.parse_args()
    if not args.data_dir.exists():
        raise SystemExit(f"--data-dir {args.data_dir} does not exist (the MNIST test set in IDX format)")
    import tempfile

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mnist-baselines-"))
    work.mkdir(parents=True, exist_ok=True)
    spec_dict = load_yaml(SPEC)  # YAML 1.2 numbers (1e-4), as `sparsetune search` reads specs
    spec_dict["base"]["data"]["path"] = str(args.data_dir)
    spec_dict.update(storage=str(work / "ray"), tracking_uri=f"sqlite:///{work}/mlflow.db")
    if args.trials:
        spec_dict["trials"] = args.trials
    if args.seed is not None:
        spec_dict["seed"] = args.seed
    if args.fifo:
        spec_dict.pop("scheduler", None)
    spec = SearchSpec.model_validate(spec_dict)
    validate_spec(spec)
    paper = next(p for p in json.loads(args.paper_json.read_text())["paper"] if p["label"] == "group lasso (paper)")
    payload = base_payload("mnist_baselines", args, torch.device("cpu"))
    scheduler = "FIFO" if args.fifo else "MO-ASHA"
    header = print_header(f"MNIST-10k: regularizers and pruning baselines on one frontier ({scheduler})", torch.device("cpu"), [
        f"{spec.trials} trials of {SPEC.relative_to(ROOT)} (families {', '.join(spec.families)}), "
        f"concurrency {spec.concurrency}; stores in {work}"])

    t0 = time.perf_counter()
    outcome = run_search(spec, yaml.safe_dump(spec_dict), quiet=True)
    wall = time.perf_counter() - t0
    frontier = outcome.frontier
    trials = trial_log(spec_dict["tracking_uri"], spec.name)
    epochs = sum(t["epochs"] for t in trials)

    rows = frontier.rows
    pareto = [r for r, keep in zip(rows, frontier.mask) if keep]
    table = []
    for family in spec.families:
        mine = [t for t in trials if t["regularizer"] == family]
        states = [t["state"] for t in mine]
        table.append([family, len(mine), states.count("complete"), states.count("pruned"), states.count("failed"),
                      sum(r["regularizer"] == family for r in pareto), sum(t["epochs"] for t in mine)])
    print(markdown_table(["family", "trials", "complete", "stopped by MO-ASHA", "failed", "frontier points",
                          "epochs trained"], table))
    print(f"\nepochs trained in all: {epochs} (the spec's budget 64 x 50 = 3,200); wall {wall / 60:.1f} min; "
          f"frontier {len(pareto)} of {len(rows)} complete trials, hypervolume {frontier.hypervolume:.4f}")

    point = {k: paper[k] for k in ("val_accuracy", "params_unique", "flops_compact")}
    winners = sorted((r for r in rows if dominates(r, point)), key=lambda r: -r["val_accuracy"])
    print(f"\npaper's group-lasso setting on MNIST-10k: val {point['val_accuracy']:.3f}, {point['params_unique']:,.0f} "
          f"unique parameters, {point['flops_compact']:,.0f} FLOPs ({point['flops_compact'] / paper['flops_dense']:.1%})")
    keys = ("val_accuracy", "test_accuracy", "params_unique", "flops_compact", "sparsity", "param_sharing")

    def line(r: dict) -> list:
        return [r["regularizer"], r["trial_id"], f"{r['val_accuracy']:.3f}", f"{r.get('test_accuracy', float('nan')):.3f}",
                f"{r['params_unique']:,.0f}", f"{r['flops_compact']:,.0f} ({r['flops_compact'] / r['flops_dense']:.1%})",
                f"{r.get('sparsity', float('nan')):.1%}", f"{r.get('param_sharing', float('nan')):.2f}"]

    head = ["family", "trial", "val acc", "test acc", "unique params", "FLOPs (of dense)", "sparsity", "sharing"]
    print(f"{len(winners)} complete trials dominate it" + (":" if winners else "."))
    if winners:
        print(markdown_table(head, [line(r) for r in winners]))
    small = [r for r in rows if r["params_unique"] <= 2 * point["params_unique"]]
    best = {}
    for r in small:
        if r["val_accuracy"] > best.get(r["regularizer"], {"val_accuracy": -1})["val_accuracy"]:
            best[r["regularizer"]] = r
    print("\nbest val accuracy per family at <= 2x the paper point's unique parameters:")
    print(markdown_table(head, [line(r) for r in best.values()]) if best else "(none)")
    print("\nthe frontier:")
    print(markdown_table(head, [line(r) for r in sorted(pareto, key=lambda r: -r["val_accuracy"])]))

    if not args.no_figure:
        fig_dir = ROOT / "bench/figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        extra = [{"label": "group lasso (paper setting, 400 epochs)", **paper}]
        for x, name in (("params_unique", "mnist10k_baselines_params.png"), ("flops_compact", "mnist10k_baselines_flops.png")):
            frontier_figure(frontier, x, "val_accuracy", extra=extra,
                            title=f"MNIST-10k, {len(rows)} complete of {len(trials)} trials ({scheduler})").savefig(
                fig_dir / name, dpi=130, bbox_inches="tight")
        print(f"figures: {fig_dir}/mnist10k_baselines_*.png")
    payload.update(header=header, search_id=outcome.search_id, wall_s=wall, epochs_trained=epochs,
                   hypervolume=frontier.hypervolume, scheduler=scheduler,
                   families=table, paper_point=point, dominating=[{k: r.get(k) for k in ("trial_id", "regularizer", *keys)}
                                                                  for r in winners],
                   frontier=[{k: v for k, v in r.items()} for r in pareto],
                   trials=[{k: v for k, v in t.items() if k != "epoch_ms"} for t in trials])
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
