"""Ray overhead: N short trials through the search service vs the same N ``fit`` calls in one process.

The search runs the quickstart's families on digits with a random sampler; every trial's exact
config is then read back from MLflow and the same configs are trained one after another with
``trainables.fit`` in this process. Reported per concurrency (1 and 2 on this 2-core machine):

- search wall time (Ray already running; ``ray.init`` is timed separately) / in-process wall time;
- inside the trials: the sum of Ray's ``time_total_s`` (training + reporting + checkpointing in the
  worker) / the in-process time of the same configs: the per-epoch reporting/checkpoint cost;
- the rest (scheduling, actor start, driver-side MLflow logging) per trial.

    python bench/ray_overhead.py                 # 8 trials x 5 epochs (a few minutes)
    python bench/ray_overhead.py --full          # 24 trials x 10 epochs
    python bench/ray_overhead.py --concurrency 1 --profile   # where the driver's time goes
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from common import add_common_args, base_payload, fmt_ratio, markdown_table, print_header, write_json

import ray  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

import search  # noqa: E402,F401  (driver environment)
from search.spec import SearchSpec, validate_spec  # noqa: E402
from search.run import run_search  # noqa: E402
from trainables import TrialConfig, fit  # noqa: E402
from trainables.yamlio import load_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_spec(tmp: Path, trials: int, epochs: int, concurrency: int) -> dict:
    spec = load_yaml(ROOT / "examples/quickstart.yaml")
    spec["name"] = f"overhead-c{concurrency}"
    spec["base"]["optim"]["epochs"] = epochs
    spec.update(trials=trials, concurrency=concurrency, sampler="random", seed=0,
                storage=str(tmp / "ray"), tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    return spec


def trial_configs(tmp: Path, name: str) -> tuple[list[TrialConfig], float]:
    """The configs the search's trials ran (from MLflow) and the sum of Ray's time_total_s."""
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    configs, inside = [], 0.0
    for run in client.search_runs([exp.experiment_id], "tags.`sparsetune.state` = 'complete'"):
        path = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp / run.info.run_id))
        configs.append(TrialConfig.from_yaml(path))
        history = client.get_metric_history(run.info.run_id, "epoch_time_s")
        inside += sum(m.value for m in history)
    return configs, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=1)
    parser.add_argument("--trials", type=int, default=None, help="trials per search (default 8, --full 24)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 5, --full 10)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the driver during each search and print where its time went")
    args = parser.parse_args()
    trials = args.trials or (24 if args.full else 8)
    epochs = args.epochs or (10 if args.full else 5)
    payload = base_payload("ray_overhead", args, None)
    print_header("Ray overhead: a search of N trials vs the same N fit() calls in one process", None,
                 [f"{trials} trials x {epochs} epochs on digits (mlp 64-100-10), quickstart families, random sampler."])

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    rows, results = [], {"ray_init_s": init_s, "concurrency": {}}
    try:
        for c in args.concurrency:
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d)
                spec_dict = make_spec(tmp, trials, epochs, c)
                spec = SearchSpec.model_validate(spec_dict)
                validate_spec(spec)
                profiler = cProfile.Profile() if args.profile else None
                t0 = time.perf_counter()
                if profiler:
                    profiler.enable()
                outcome = run_search(spec, yaml.safe_dump(spec_dict), quiet=True)
                search_s = time.perf_counter() - t0
                if profiler:
                    profiler.disable()
                    print(f"\n-- driver profile, concurrency {c} (cumulative seconds)")
                    stats = pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative")
                    stats.print_stats(r"tracking.py|callbacks.py:\d+\((on_|_settle)|worker.py:\d+\(wait\)|"
                                      r"sqlalchemy_store.py:\d+\(__init__\)|actor_manager.py:\d+\(_actor_start", 25)
                assert outcome.complete, "the search did not finish"
                configs, inside_epochs = trial_configs(tmp, spec.name)
            t0 = time.perf_counter()
            fit_epochs = 0.0
            for cfg in configs:
                fit_epochs += sum(h["epoch_time_s"] for h in fit(cfg).history)
            fit_s = time.perf_counter() - t0
            per_trial = (search_s * c - fit_s) / len(configs)
            results["concurrency"][c] = {"search_s": search_s, "fit_s": fit_s, "trials": len(configs),
                                         "epoch_time_in_trials_s": inside_epochs, "epoch_time_in_process_s": fit_epochs}
            rows.append([c, len(configs), f"{search_s:.1f} s", f"{fit_s:.1f} s", fmt_ratio(search_s / fit_s),
                         fmt_ratio(inside_epochs / fit_epochs), f"{per_trial:.2f} s"])
    finally:
        ray.shutdown()
    print(markdown_table(["concurrency", "trials", "search wall", "same fit() calls in-process",
                          "search / in-process", "epoch time in trial / in-process",
                          "overhead per trial (wall x concurrency - fit) / N"], rows))
    print(f"\nray.init (local, 2 CPUs): {init_s:.1f} s, not included above.")
    payload["results"] = results
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
