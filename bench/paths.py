"""Sparsity paths from one shared dense start on MNIST-10k (bench/specs/mnist10k_paths.yaml, RESULTS §10).

RESULTS §7's network, data, families and objectives; every trial is a path of 5 targets from the
search's dense start. Reported, from the search's own MLflow store:

- epochs trained in all (the start's, plus every (trial, epoch) logged), against §7's 3,200;
- frontier candidates (points) and frontier points, per 100 epochs;
- the hypervolume, and its growth with the epochs trained (points in the order they were recorded);
- per family: trials, points, frontier points; the frontier.

    python bench/paths.py --out bench/results/paths.json     # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

import torch  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from moasha_vs_fifo import trial_log  # noqa: E402
from search.frontier import Frontier  # noqa: E402
from search.plots import frontier_figure  # noqa: E402
from search.run import run_search  # noqa: E402
from search.spec import SearchSpec, validate_spec  # noqa: E402
from search.store import open_store, row_of  # noqa: E402
from trainables.yamlio import load_yaml  # noqa: E402

SPEC = ROOT / "bench/specs/mnist10k_paths.yaml"
TAG = "sparsetune"


def tell_every_point() -> None:
    """Make the searcher tell Optuna every point of a path, not only the best: the path's trial
    gets its best point (as always) and each other point becomes a COMPLETE trial with the same
    parameters (``study.add_trial``). Round-robin then counts only the asked trials, so the extra
    ones do not shift which family comes next."""
    import json
    import math

    import optuna

    from search import samplers, space
    from search.trainable import POINTS_KEY

    told = samplers.FullBudgetOptunaSearch.on_trial_complete
    pick = space.SpaceDefinition.__call__

    def on_trial_complete(self, trial_id, result=None, error=False):
        trial = samplers._compat.optuna_trial_of(self, trial_id)
        told(self, trial_id, result, error)
        if trial is None or error or not result or result.get("final") != 1.0 or not result.get(POINTS_KEY):
            return
        study = samplers._compat.study_of(self)
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state != optuna.trial.TrialState.COMPLETE:
            return
        for p in json.loads(result[POINTS_KEY]):
            values = [p.get(m) for m in self.metric]
            if values != list(frozen.values) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                study.add_trial(optuna.trial.create_trial(params=frozen.params, distributions=frozen.distributions,
                                                          values=values, user_attrs={"extra_point": p["point"]}))

    def call(self, trial):
        if self.families and self.allocation == "round_robin":
            asked = [t for t in trial.study.get_trials(deepcopy=False) if "extra_point" not in t.user_attrs]
            return pick(self, _Renumbered(trial, len(asked) - 1))
        return pick(self, trial)

    samplers.FullBudgetOptunaSearch.on_trial_complete = on_trial_complete
    space.SpaceDefinition.__call__ = call


class _Renumbered:
    """An Optuna trial seen with another ``number`` (everything else passes through)."""

    def __init__(self, trial, number: int):
        self._trial, self.number = trial, number

    def __getattr__(self, name):
        return getattr(self._trial, name)


def draw_curves(files: list[Path], out: Path) -> None:
    """Hypervolume after each recorded point against the epochs trained so far, one line per
    result file (its seed and what MO-TPE was told), and §7's search (3,200 epochs, 0.9298)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for f in files:
        d = json.loads(f.read_text())
        curve = d["curve"]
        seed = d["args"].get("seed")
        ax.plot([c["epochs"] for c in curve], [c["hypervolume"] for c in curve], drawstyle="steps-post",
                label=f"paths, seed {0 if seed is None else seed}, told {d.get('tell', 'best')}")
    ax.scatter([3200], [0.9298], color="black", zorder=3, label="§7 from scratch (MO-ASHA), its end")
    ax.axhline(0.9298, color="black", lw=0.6, ls=":")
    ax.axvline(800, color="grey", lw=0.6, ls="--", label="25% of §7's epochs")
    ax.set_xscale("log")
    ax.set_xlabel("epochs trained (the start's included)")
    ax.set_ylabel("hypervolume (val acc, unique params, FLOPs)")
    ax.set_ylim(0.85, 0.95)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("MNIST-10k: sparsity paths from a shared start")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=1)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--work-dir", type=Path, default=None, help="Ray storage and MLflow store (default: a temp dir)")
    parser.add_argument("--trials", type=int, default=None, help="override the spec's trials")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    parser.add_argument("--continue-from", choices=["finetuned", "stage"], default=None)
    parser.add_argument("--tell", choices=["best", "every"], default="best",
                        help="what MO-TPE learns of a path: the point with the largest hypervolume of its own "
                             "(what sparsetune does), or every point (the others added as trials of the same "
                             "parameters; measured here only)")
    parser.add_argument("--no-figure", action="store_true", help="do not redraw bench/figures/mnist10k_paths_flops.png")
    parser.add_argument("--curves", type=Path, nargs="+", default=None,
                        help="no search: draw the hypervolume against the epochs trained of these result files "
                             "(bench/figures/mnist10k_paths_hv.png) beside §7's end point")
    args = parser.parse_args()
    if args.curves:
        draw_curves(args.curves, ROOT / "bench/figures/mnist10k_paths_hv.png")
        return
    if args.tell == "every":
        tell_every_point()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="paths-"))
    work.mkdir(parents=True, exist_ok=True)
    spec_dict = load_yaml(SPEC)
    spec_dict["base"]["data"]["path"] = str(args.data_dir)
    spec_dict.update(storage=str(work / "ray"), tracking_uri=f"sqlite:///{work}/mlflow.db")
    if args.trials:
        spec_dict["trials"] = args.trials
    if args.seed is not None:
        spec_dict["seed"] = spec_dict["base"]["seed"] = args.seed
    if args.continue_from:
        spec_dict["base"]["path"]["continue_from"] = args.continue_from
    spec = SearchSpec.model_validate(spec_dict)
    validate_spec(spec)
    payload = base_payload("paths", args, torch.device("cpu"))
    header = print_header("MNIST-10k: sparsity paths from a shared dense start", torch.device("cpu"), [
        f"{spec.trials} path trials of {SPEC.relative_to(ROOT)} (families {', '.join(spec.families)}), "
        f"concurrency {spec.concurrency}; stores in {work}"])
    t0 = time.perf_counter()
    outcome = run_search(spec, yaml.safe_dump(spec_dict), quiet=True)
    wall = time.perf_counter() - t0
    frontier = outcome.frontier

    trials = [t for t in trial_log(spec_dict["tracking_uri"], spec.name) if t["trial_id"] != "start"]
    start_epochs = int((spec_dict.get("start") or {}).get("epochs", 0))
    epochs = start_epochs + sum(t["epochs"] for t in trials)
    client = MlflowClient(spec_dict["tracking_uri"])
    store = open_store(spec_dict["tracking_uri"])
    exp, parent = store.find_search(spec.name, outcome.search_id)
    points = sorted(store.points(exp, parent.run_id), key=lambda r: client.get_run(r.run_id).info.end_time or 0)
    rows = [row_of(r) for r in points]
    # hypervolume after each recorded point, against the epochs trained up to it (the start first)
    done: dict[str, int] = {}
    curve = []
    for i, row in enumerate(rows):
        done[row["trial_id"]] = max(done.get(row["trial_id"], 0), int(row.get("epoch", 0)))
        front = Frontier.of(rows[:i + 1], spec.objectives)
        curve.append({"epochs": start_epochs + sum(done.values()), "points": i + 1,
                      "hypervolume": front.hypervolume})
    pareto = [r for r, keep in zip(frontier.rows, frontier.mask) if keep]
    table = []
    for family in spec.families:
        mine = [t for t in trials if t["regularizer"] == family]
        table.append([family, len(mine), sum(r["regularizer"] == family for r in frontier.rows),
                      sum(r["regularizer"] == family for r in pareto), sum(t["epochs"] for t in mine)])
    print(markdown_table(["family", "trials", "points", "frontier points", "epochs trained"], table))
    print(f"\nepochs trained in all: {epochs} (start {start_epochs}; §7: 3,200); wall {wall / 60:.1f} min; "
          f"{len(frontier.rows)} candidate points ({100 * len(frontier.rows) / epochs:.1f} per 100 epochs), "
          f"frontier {len(pareto)} ({100 * len(pareto) / epochs:.2f} per 100 epochs), "
          f"hypervolume {frontier.hypervolume:.4f} (§7: 0.9298 at 3,200 epochs)")
    marks = [c for c in curve if c is curve[-1] or c["points"] % 10 == 0]
    print(markdown_table(["epochs trained", "points", "hypervolume"],
                         [[c["epochs"], c["points"], f"{c['hypervolume']:.4f}"] for c in marks]))

    def line(r: dict) -> list:
        return [r["regularizer"], r["candidate"], f"{r.get('target', float('nan')):.2f}", f"{r['val_accuracy']:.3f}",
                f"{r.get('test_accuracy', float('nan')):.3f}", f"{r['params_unique']:,.0f}",
                f"{r['flops_compact']:,.0f} ({r['flops_compact'] / r['flops_dense']:.1%})"]

    print("\nthe frontier:")
    print(markdown_table(["family", "point", "target", "val acc", "test acc", "unique params", "FLOPs (of dense)"],
                         [line(r) for r in sorted(pareto, key=lambda r: -r["val_accuracy"])]))
    fig_dir = ROOT / "bench/figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_figure:
        frontier_figure(frontier, "flops_compact", "val_accuracy",
                        title=f"MNIST-10k paths: {len(frontier.rows)} points of {len(trials)} trials, {epochs} epochs"
                        ).savefig(fig_dir / "mnist10k_paths_flops.png", dpi=130, bbox_inches="tight")
    payload.update(header=header, tell=args.tell, search_id=outcome.search_id, wall_s=wall, epochs_trained=epochs,
                   start_epochs=start_epochs, families=table, curve=curve, hypervolume=frontier.hypervolume,
                   candidates=len(frontier.rows), frontier=[dict(r) for r in pareto],
                   trials=[{k: v for k, v in t.items() if k != "epoch_ms"} for t in trials])
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
