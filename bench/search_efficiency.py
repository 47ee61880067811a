"""Search efficiency: hypervolume after 16 / 32 / 48 trials for MO-TPE, NSGA-II and random sampling.

Each sampler runs the quickstart search (l1, group lasso, CGES and GrOWL on digits) with several
seeds. The hypervolume is sparsetune's (objectives normalised by the dense network: accuracy 0 /
dense parameters / dense FLOPs as the reference, so it lies in [0, 1]), read from the parent run's
``hypervolume`` metric after each finished trial. The hand-tuned reference is the set of the
digits examples' regularizer settings (examples/train/*_digits.yaml) trained on the same base as
the search; "trials to match" is the first trial count at which a search's frontier dominates as
much volume as that hand-tuned set.

    python bench/search_efficiency.py                    # 3 samplers x 3 seeds x 48 trials, 8 epochs
    python bench/search_efficiency.py --full             # the quickstart's 12 epochs
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import add_common_args, base_payload, markdown_table, print_header, write_json

import ray  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

import search  # noqa: E402,F401
from search.spec import SearchSpec, validate_spec  # noqa: E402
from search.tracking import Frontier  # noqa: E402
from search.run import run_search  # noqa: E402
from trainables import TrialConfig, fit  # noqa: E402
from trainables.yamlio import load_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAND_TUNED = ("l1", "group_lasso", "cges", "growl")


def make_spec(tmp: Path, sampler: str, seed: int, trials: int, epochs: int) -> dict:
    spec = load_yaml(ROOT / "examples/quickstart.yaml")
    spec["name"] = f"eff-{sampler}-{seed}"
    spec["base"]["optim"]["epochs"] = epochs
    spec.update(trials=trials, sampler=sampler, seed=seed, storage=str(tmp / "ray"),
                tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    return spec


def hand_tuned_hypervolume(spec: SearchSpec) -> tuple[float, list[dict]]:
    """Train the examples' hand-tuned regularizer settings on the search's base config."""
    rows = []
    for family in HAND_TUNED:
        example = TrialConfig.from_yaml(ROOT / f"examples/train/{family}_digits.yaml")
        data = dict(spec.base)
        data["regularizer"] = example.to_dict()["regularizer"]
        m = fit(TrialConfig.from_dict(data)).metrics
        rows.append({"trial_id": family, "regularizer": family, **{k: m[k] for k in (
            "val_accuracy", "params_nonzero", "flops_compact", "params_total", "flops_dense", "test_accuracy")}})
    frontier = Frontier.of(rows, list(spec.objectives))
    return frontier.hypervolume, rows


def hand_tuned_as_written() -> tuple[float, list[dict]]:
    """The examples exactly as written (their own base: mlp 64-300-10, 20 epochs); objectives are
    normalised by each run's dense network, so the volume is comparable in kind, not in network."""
    rows = []
    for family in HAND_TUNED:
        m = fit(TrialConfig.from_yaml(ROOT / f"examples/train/{family}_digits.yaml")).metrics
        rows.append({"trial_id": family, "regularizer": family, **{k: m[k] for k in (
            "val_accuracy", "params_nonzero", "flops_compact", "params_total", "flops_dense", "test_accuracy")}})
    objectives = list(SearchSpec.model_validate(load_yaml(ROOT / "examples/quickstart.yaml")).objectives)
    return Frontier.of(rows, objectives).hypervolume, rows


def hypervolume_history(tmp: Path, name: str) -> dict[int, float]:
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    [parent] = client.search_runs([exp.experiment_id], "tags.`sparsetune.kind` = 'search'")
    return {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "hypervolume")}


def at(history: dict[int, float], k: int) -> float:
    """Hypervolume once k trials have finished (pruned or failed trials do not count)."""
    steps = [s for s in history if s <= k]
    return history[max(steps)] if steps else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=1)
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 8, --full 12)")
    parser.add_argument("--hand-tuned-only", action="store_true", help="only the hand-tuned references")
    args = parser.parse_args()
    epochs = args.epochs or (12 if args.full else 8)
    checkpoints = [k for k in (16, 32, 48) if k <= args.trials] or [args.trials]
    payload = base_payload("search_efficiency", args, None)
    print_header("Search efficiency: hypervolume after 16/32/48 trials", None,
                 [f"quickstart spec (4 families, digits, mlp 64-100-10, {epochs} epochs), concurrency 2, "
                  f"seeds {args.seeds}."])
    if args.hand_tuned_only:
        with tempfile.TemporaryDirectory() as d:
            base = SearchSpec.model_validate(make_spec(Path(d), "tpe", 0, args.trials, epochs))
            same_hv, same_rows = hand_tuned_hypervolume(base)
        own_hv, own_rows = hand_tuned_as_written()
        rows = [["settings of examples/train/*_digits.yaml on the search's base (64-100-10, "
                 f"{epochs} epochs)", f"{same_hv:.4f}"],
                ["examples/train/*_digits.yaml as written (64-300-10, 20 epochs)", f"{own_hv:.4f}"]]
        print(markdown_table(["hand-tuned set (l1, group lasso, CGES, GrOWL)", "hypervolume"], rows))
        for label, pts in (("same base", same_rows), ("as written", own_rows)):
            print(f"\n{label}: " + "; ".join(
                f"{p['regularizer']}: val {p['val_accuracy']:.3f}, params {p['params_nonzero'] / p['params_total']:.2f}, "
                f"FLOPs {p['flops_compact'] / p['flops_dense']:.2f}" for p in pts))
        payload["hand_tuned"] = {"same_base": {"hypervolume": same_hv, "points": same_rows},
                                 "as_written": {"hypervolume": own_hv, "points": own_rows}}
        write_json(args.out, payload)
        return
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    results: dict = {"hand_tuned": None, "runs": {}}
    try:
        with tempfile.TemporaryDirectory() as d:
            base = SearchSpec.model_validate(make_spec(Path(d), "tpe", 0, args.trials, epochs))
            hand_hv, hand_rows = hand_tuned_hypervolume(base)
            results["hand_tuned"] = {"hypervolume": hand_hv, "points": hand_rows}
        for sampler in args.samplers:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as d:
                    tmp = Path(d)
                    spec_dict = make_spec(tmp, sampler, seed, args.trials, epochs)
                    spec = SearchSpec.model_validate(spec_dict)
                    validate_spec(spec)
                    t0 = time.perf_counter()
                    run_search(spec, yaml.safe_dump(spec_dict), quiet=True)
                    history = hypervolume_history(tmp, spec.name)
                match = next((k for k in sorted(history) if history[k] >= hand_hv), None)
                results["runs"][f"{sampler}/{seed}"] = {"history": history, "trials_to_match": match,
                                                        "seconds": time.perf_counter() - t0}
                print(f"  {sampler} seed {seed}: " + ", ".join(f"HV@{k} {at(history, k):.4f}" for k in checkpoints)
                      + f", matches hand-tuned at {match}", flush=True)
    finally:
        ray.shutdown()

    rows = []
    for sampler in args.samplers:
        runs = [results["runs"][f"{sampler}/{s}"] for s in args.seeds]
        cells = []
        for k in checkpoints:
            vals = [at(r["history"], k) for r in runs]
            cells.append(f"{statistics.mean(vals):.4f} ± {statistics.pstdev(vals):.4f}")
        matches = [r["trials_to_match"] for r in runs]
        hit = [m for m in matches if m is not None]
        cells.append(f"{statistics.median(hit):.0f} ({len(hit)}/{len(runs)} seeds)" if hit else f"never (0/{len(runs)})")
        rows.append([sampler, *cells])
    print()
    print(markdown_table(["sampler", *[f"HV after {k}" for k in checkpoints],
                         "trials to match hand-tuned (median)"], rows))
    print(f"\nHand-tuned set (examples/train/{{{','.join(HAND_TUNED)}}}_digits.yaml settings on the same base): "
          f"HV {hand_hv:.4f}")
    payload["results"] = results
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
