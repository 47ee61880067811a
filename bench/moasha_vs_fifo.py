"""MO-ASHA vs FIFO at equal total epochs: hypervolume after the same training compute, several seeds.

For each seed, two searches with the same spec (l1, group lasso, CGES, magnitude and
channel_magnitude on digits, the 64-100-10 MLP, MO-TPE, round robin, concurrency 2): one FIFO (every
trial runs its full epochs) and one with ``scheduler: {type: moasha}``, which is given more trials
because the trials it stops cost fewer epochs.

Compute is counted in **epochs actually trained**, read back from MLflow: every (trial, epoch) the
search logged, with the time it was logged, pruned and failed trials included. FIFO's total is its
budget E. MO-ASHA's hypervolume is taken at the moment its own count of trained epochs reaches E,
over the trials that had completed by then (a trial still running at that moment contributes the
epochs it had trained so far to the count, and nothing to the frontier). If MO-ASHA ran out of
trials before reaching E, its final hypervolume is reported and the row says so.

The hypervolume is ``search.frontier.Frontier.of`` over the complete trials: the one definition
the search itself uses (objectives normalised by the dense network, accuracy reference 0.1).

    python bench/moasha_vs_fifo.py --out bench/results/moasha_vs_fifo.json    # 3 seeds x (16 FIFO + 48 MO-ASHA trials), ~10 min
    python bench/moasha_vs_fifo.py --seeds 0        # one seed (~3 min on 2 busy cores), to size it
    python bench/moasha_vs_fifo.py --data mnist10k --epochs 15 --grace-period 2 --fifo-trials 12 --moasha-trials 36 \
        --out bench/results/moasha_vs_fifo_mnist10k.json     # ~20 min on 2 cores

``--data mnist10k`` takes the families of ``bench/specs/mnist10k_baselines.yaml`` (RESULTS §7) on
MNIST-10k with tying off (its retraining epochs are not what the schedulers compare), the
baselines' pruning schedules ending at half the epochs.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

import ray  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from search.frontier import Frontier  # noqa: E402
from search.spec import SearchSpec  # noqa: E402
from search.tracking import TAG  # noqa: E402
from search.run import run_search  # noqa: E402
from trainables.yamlio import load_yaml  # noqa: E402

# l1 from the quickstart; the others as in examples/search/baselines_digits.yaml
L1 = {"lam": {"type": "loguniform", "low": 3e-4, "high": 1e-2}, "prox_every": "step"}


MNIST_SPEC = ROOT / "bench/specs/mnist10k_baselines.yaml"


def make_spec(tmp: Path, kind: str, seed: int, trials: int, epochs: int, grace: int, eta: float,
              data: str = "digits", data_dir: Path | None = None) -> dict:
    if data == "digits":
        spec = load_yaml(ROOT / "examples/search/baselines_digits.yaml")
        spec["regularizers"] = {"l1": copy.deepcopy(L1), **spec["regularizers"]}
    else:  # MNIST-10k: the families of RESULTS §7, without tying (its retraining epochs are not searched)
        spec = load_yaml(MNIST_SPEC)
        spec["base"]["data"]["path"] = str(data_dir)
        spec["base"]["tying"] = {"enabled": False}
        for name in ("magnitude", "channel_magnitude"):  # the schedules end half-way through the epochs
            spec["regularizers"][name]["end_epoch"] = max(1, epochs // 2)
        spec.pop("scheduler", None)
    spec["name"] = f"mvf-{kind}-{seed}"
    spec["base"]["optim"]["epochs"] = epochs
    spec.update(trials=trials, seed=seed, concurrency=2, resources={"cpu": 1},
                storage=str(tmp / "ray"), tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    if kind == "moasha":
        spec["scheduler"] = {"type": "moasha", "grace_period": grace, "reduction_factor": eta}
    return spec


def trial_log(uri: str, name: str) -> list[dict]:
    """Every trial of the search ``name``: state, end time, and the time each epoch was logged."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    [parent] = client.search_runs([exp.experiment_id], f"tags.`{TAG}.kind` = 'search'")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=1000)
    trials = []
    for run in children:
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        epochs = {}  # epoch -> first time it was logged (a retried epoch counts once)
        for m in history:
            if m.step >= 1:
                epochs[m.step] = min(epochs.get(m.step, m.timestamp), m.timestamp)
        trials.append({"run_id": run.info.run_id, "trial_id": run.data.tags.get(f"{TAG}.trial_id", ""),
                       "regularizer": run.data.tags.get(f"{TAG}.regularizer", ""),
                       "state": run.data.tags.get(f"{TAG}.state", "running"),
                       "end_ms": run.info.end_time, "epochs": len(epochs),
                       "epoch_ms": sorted(epochs.values()),
                       **{k: run.data.metrics.get(k) for k in
                          ("val_accuracy", "test_accuracy", "params_nonzero", "params_unique", "params_total",
                           "flops_compact", "flops_dense")}})
    return trials


def hypervolume_at_epochs(trials: list[dict], objectives, budget: int | None) -> dict:
    """Hypervolume of the trials complete when the search had trained ``budget`` epochs in all
    (None: at the end)."""
    stamps = sorted(t for tr in trials for t in tr["epoch_ms"])
    total = len(stamps)
    if budget is None or budget >= total:
        cutoff, reached = float("inf"), budget is None or budget == total
    else:
        cutoff, reached = stamps[budget - 1], True
    # a trial whose last epoch was logged by the cutoff is counted complete by then (its end time is
    # a few ms later: the artifacts and the frontier update)
    done = [tr for tr in trials if tr["state"] == "complete" and tr["epoch_ms"] and tr["epoch_ms"][-1] <= cutoff]
    missing = {o.metric for o in objectives} - {k for tr in done for k, v in tr.items() if v is not None}
    if done and missing:  # a hypervolume of 0 from an unread metric would look like a result
        raise RuntimeError(f"trial_log did not read the objectives {sorted(missing)}")
    frontier = Frontier.of(done, objectives)
    return {"hypervolume": frontier.hypervolume, "complete_trials": len(done),
            "started_trials": sum(bool(tr["epoch_ms"]) and tr["epoch_ms"][0] <= cutoff for tr in trials),
            "epochs": min(budget, total) if budget is not None else total, "reached_budget": reached,
            "pareto": int(frontier.mask.sum())}


def run_one(tmp: Path, kind: str, seed: int, trials: int, args) -> tuple[SearchSpec, list[dict], float]:
    spec_dict = make_spec(tmp, kind, seed, trials, args.epochs, args.grace_period, args.reduction_factor,
                          args.data, args.data_dir)
    spec = SearchSpec.model_validate(spec_dict)
    t0 = time.perf_counter()
    run_search(spec, yaml.safe_dump(spec_dict), quiet=True)
    wall = time.perf_counter() - t0
    return spec, trial_log(spec_dict["tracking_uri"], spec_dict["name"]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fifo-trials", type=int, default=16)
    parser.add_argument("--moasha-trials", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=12, help="epochs per full trial")
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--data", choices=["digits", "mnist10k"], default="digits",
                        help="digits: examples/search/baselines_digits.yaml plus l1; mnist10k: the families of "
                             "bench/specs/mnist10k_baselines.yaml (tying off, baselines' schedules ending at "
                             "half the epochs)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist",
                        help="the MNIST IDX files, for --data mnist10k")
    args = parser.parse_args()
    if args.data == "digits" and args.epochs < 10:  # the baselines' end_epoch reaches 10 (baselines_digits.yaml)
        parser.error(f"--epochs must be at least 10 (the baselines' end_epoch range), got {args.epochs}")
    if args.data == "mnist10k" and not args.data_dir.is_dir():
        parser.error(f"--data-dir: no such directory: {args.data_dir}")
    payload = base_payload("moasha_vs_fifo", args, None)
    families = ("l1, group_lasso, cges, magnitude, channel_magnitude (round robin, MO-TPE); digits, mlp 64-100-10"
                if args.data == "digits" else "group_lasso, growl, cges, magnitude, channel_magnitude (round robin, "
                "MO-TPE); MNIST-10k, mlp 784-300-10 with BatchNorm, first layer, tying off")
    print_header(f"MO-ASHA vs FIFO at equal total epochs ({args.data})", None, [
        f"{families}, "
        f"{args.epochs} epochs per full trial; concurrency 2, 1 CPU per trial; FIFO {args.fifo_trials} trials, "
        f"MO-ASHA up to {args.moasha_trials} trials (grace {args.grace_period}, eta {args.reduction_factor:g}); "
        f"seeds {args.seeds}."])
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    results = []
    try:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d)
                spec, fifo, fifo_wall = run_one(tmp, "fifo", seed, args.fifo_trials, args)
                objectives = list(spec.objectives)
                fifo_hv = hypervolume_at_epochs(fifo, objectives, None)
                budget = fifo_hv["epochs"]
                _, mo, mo_wall = run_one(tmp, "moasha", seed, args.moasha_trials, args)
                mo_at = hypervolume_at_epochs(mo, objectives, budget)
                mo_end = hypervolume_at_epochs(mo, objectives, None)
            strip = lambda ts: [{k: v for k, v in t.items() if k != "run_id"} for t in ts]  # noqa: E731
            row = {"seed": seed, "fifo": {**fifo_hv, "wall_s": fifo_wall, "trials": strip(fifo)},
                   "moasha_at_fifo_epochs": mo_at,
                   "moasha_end": {**mo_end, "wall_s": mo_wall, "trials": strip(mo)}}
            results.append(row)
            print(f"seed {seed}: FIFO HV {fifo_hv['hypervolume']:.4f} ({fifo_hv['complete_trials']} trials, "
                  f"{budget} epochs, {fifo_wall:.0f} s) | MO-ASHA at {budget} epochs HV {mo_at['hypervolume']:.4f} "
                  f"({mo_at['complete_trials']} complete of {mo_at['started_trials']} started"
                  f"{'' if mo_at['reached_budget'] else ', budget NOT reached'}) | MO-ASHA end HV "
                  f"{mo_end['hypervolume']:.4f} ({mo_end['complete_trials']} complete of "
                  f"{len(mo)} trials, {mo_end['epochs']} epochs, {mo_wall:.0f} s)", flush=True)
    finally:
        ray.shutdown()

    def ms(vals):
        return f"{statistics.mean(vals):.4f} ± {statistics.pstdev(vals):.4f}"

    def mean(vals, fmt="{:.1f}"):
        return fmt.format(statistics.mean(vals))

    rows = [
        ["FIFO", ms([r["fifo"]["hypervolume"] for r in results]),
         mean([r["fifo"]["complete_trials"] for r in results]), mean([len(r["fifo"]["trials"]) for r in results]),
         mean([r["fifo"]["epochs"] for r in results], "{:.0f}"), mean([r["fifo"]["wall_s"] for r in results], "{:.0f}")],
        ["MO-ASHA at FIFO's epochs", ms([r["moasha_at_fifo_epochs"]["hypervolume"] for r in results]),
         mean([r["moasha_at_fifo_epochs"]["complete_trials"] for r in results]),
         mean([r["moasha_at_fifo_epochs"]["started_trials"] for r in results]),
         mean([r["moasha_at_fifo_epochs"]["epochs"] for r in results], "{:.0f}"), ""],
        [f"MO-ASHA, all {args.moasha_trials} trials", ms([r["moasha_end"]["hypervolume"] for r in results]),
         mean([r["moasha_end"]["complete_trials"] for r in results]),
         mean([len(r["moasha_end"]["trials"]) for r in results]),
         mean([r["moasha_end"]["epochs"] for r in results], "{:.0f}"),
         mean([r["moasha_end"]["wall_s"] for r in results], "{:.0f}")],
    ]
    print()
    print(markdown_table(["search", f"hypervolume (mean ± std, {len(results)} seeds)", "complete trials",
                          "trials started", "epochs trained", "wall s"], rows))
    wins = sum(r["moasha_at_fifo_epochs"]["hypervolume"] > r["fifo"]["hypervolume"] for r in results)
    short = sum(not r["moasha_at_fifo_epochs"]["reached_budget"] for r in results)
    print(f"\nMO-ASHA ahead at equal epochs in {wins}/{len(results)} seeds"
          + (f"; {short} seed(s) never reached FIFO's epochs (raise --moasha-trials)" if short else ""))
    payload["results"] = results
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
