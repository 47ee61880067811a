"""Ray efficiency on real trials: a search at concurrency 2 vs the same configs trained one after
another by ``fit`` in one process, for conv trials and for small MLP trials, in one run.

- **LeNet** (``lenet_cges``, CGES, MNIST-10k from the IDX files, 3 epochs, batch 100): the search
  at concurrency 2 with ``resources.cpu: 1`` (one torch thread per trial) against the same configs
  by ``fit`` in this process with every core's threads. Both use the two cores fully, so the ratio
  shows Ray's overhead (target <= 1.1).
- **Small MLP** (784-64-10 on MNIST-10k, batch 32): trials too small to use two threads well; the
  same comparison shows whether concurrency pays (target <= 0.75).

Each search uses a random sampler with a fixed seed over ``regularizer.lam`` (so the configs are
real, different trials), a fresh MLflow store and a fresh Ray storage folder; Ray is started once
before the first search and its start-up is reported apart. Every trial's exact config is read back
from MLflow, then trained again by ``fit`` sequentially. Reported: search wall time (from
``run_search`` to its return: scheduling, worker start-up, per-epoch reports, checkpoints, MLflow
logging, the end-of-search plots) over the sequential in-process time, and the mean epoch time
inside the trials over the same epochs in-process.

    python bench/ray_efficiency.py                    # about 4 minutes on 2 cores
    python bench/ray_efficiency.py --only lenet --out ray_eff.json
    python bench/ray_efficiency.py --only mlp --epochs 30          # MLP trials of ~13 s, like the LeNet ones
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import base_payload, fmt_ratio, markdown_table, print_header, write_json

DATA_DIR = "/work/shared/data/mnist"

KINDS: dict[str, dict[str, Any]] = {
    "lenet": {"model": {"name": "lenet_cges"}, "optim": {"name": "sgd", "lr": 0.05, "batch_size": 100, "epochs": 3},
              "trials": 4, "lam": (1e-3, 1e-2)},
    "mlp": {"model": {"name": "mlp", "hidden": [64]}, "optim": {"name": "sgd", "lr": 0.1, "batch_size": 32, "epochs": 6},
            "trials": 8, "lam": (1e-3, 1e-2)},
}


def make_spec(kind: str, tmp: Path, data_dir: str, trials: int, concurrency: int) -> dict:
    k = KINDS[kind]
    return {
        "name": f"ray-efficiency-{kind}",
        "base": {"device": "cpu", "seed": 0,
                 "data": {"name": "idx", "path": data_dir, "test_fraction": 0.2, "test_split": "last"},
                 "model": k["model"], "optim": k["optim"], "regularizer": {"name": "cges"}},
        "space": {"regularizer/lam": {"type": "loguniform", "low": k["lam"][0], "high": k["lam"][1]}},
        "objectives": [{"metric": "val_accuracy", "mode": "max"}, {"metric": "params_nonzero", "mode": "min"}],
        "sampler": "random", "seed": 0, "trials": trials, "concurrency": concurrency,
        "resources": {"cpu": 1, "gpu": 0},
        "storage": str(tmp / "ray"), "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
    }


def trial_configs(tmp: Path, name: str):
    """The configs the trials ran (from MLflow) and each trial's per-epoch times."""
    from mlflow.tracking import MlflowClient

    from trainables import TrialConfig

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    out = []
    for run in client.search_runs([exp.experiment_id], "tags.`sparsetune.state` = 'complete'"):
        path = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp / run.info.run_id))
        epochs = [m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")]
        out.append((TrialConfig.from_yaml(path), epochs))
    return out


def sequential(configs, threads: int) -> tuple[float, list[float]]:
    """The configs by ``fit`` one after another with ``threads`` torch threads; wall and epochs."""
    from trainables import fit

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # not fit(threads=): this script also times older code
    try:
        t0 = time.perf_counter()
        epochs = [h["epoch_time_s"] for cfg in configs for h in fit(cfg).history]
        return time.perf_counter() - t0, epochs
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, metavar="results.json", help="also write the results as JSON")
    parser.add_argument("--data-dir", default=DATA_DIR, help=f"MNIST IDX folder (default {DATA_DIR})")
    parser.add_argument("--only", choices=list(KINDS), nargs="+", default=list(KINDS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per trial for the kinds run (default: LeNet 3, MLP 6); longer trials "
                             "spread the search's fixed cost (MLflow store, first worker, plots) thinner")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--fit-threads", type=int, default=None,
                        help="torch threads of the sequential fits (default: every core)")
    args = parser.parse_args(argv)
    if args.epochs is not None:
        if args.epochs < 1:
            raise SystemExit(f"--epochs must be >= 1, got {args.epochs}")
        for kind in args.only:
            KINDS[kind]["optim"] = {**KINDS[kind]["optim"], "epochs": args.epochs}
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"--data-dir: {args.data_dir} is not a folder of MNIST IDX files")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fit_threads = args.fit_threads or cores

    import ray
    import yaml

    from search.spec import SearchSpec, validate_spec
    from search.run import run_search
    from trainables import TrialConfig, fit

    payload = base_payload("bench/ray_efficiency.py", args, torch.device("cpu"))
    print_header("Ray efficiency on real trials (bench/ray_efficiency.py)", torch.device("cpu"), [
        f"Search at concurrency {args.concurrency}, resources.cpu 1 per trial, vs the same configs by "
        f"`fit` sequentially in this process with {fit_threads} torch threads. Load average at start: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}."])
    # warm this process's imports and caches as a fresh worker would not be, so the sequential
    # side is not charged for them either way: one untimed short fit per kind
    for kind in args.only:
        base = make_spec(kind, Path("/tmp"), args.data_dir, 1, 1)["base"]
        fit(TrialConfig.from_dict({**base, "data": {**base["data"], "train_subset": 200},
                                   "optim": {**KINDS[kind]["optim"], "epochs": 1}}))
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    rows, results = [], {"ray_init_s": init_s, "cores": cores, "fit_threads": fit_threads}
    try:
        for kind in args.only:
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d)
                spec_dict = make_spec(kind, tmp, args.data_dir, KINDS[kind]["trials"], args.concurrency)
                spec = SearchSpec.model_validate(spec_dict)
                validate_spec(spec)
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                outcome = run_search(spec, yaml.safe_dump(spec_dict), quiet=True)
                search_s = time.perf_counter() - t0
                assert outcome.complete, "the search did not finish"
                trials = trial_configs(tmp, spec.name)
            configs = [c for c, _ in trials]
            fit_s, fit_epochs = sequential(configs, fit_threads)
            trial_epochs = [e for _, epochs in trials for e in epochs]
            r = {"search_s": search_s, "fit_s": fit_s, "trials": len(configs), "load_avg_1min": load,
                 "ratio": search_s / fit_s,
                 "epoch_in_trials_median_s": statistics.median(trial_epochs),
                 "epoch_in_process_median_s": statistics.median(fit_epochs)}
            results[kind] = r
            rows.append([kind, len(configs), f"{search_s:.1f} s", f"{fit_s:.1f} s", fmt_ratio(r["ratio"]),
                         f"{r['epoch_in_trials_median_s']:.2f} s", f"{r['epoch_in_process_median_s']:.2f} s",
                         f"{load:.2f}"])
            print(f"  {kind}: search {search_s:.1f} s, sequential {fit_s:.1f} s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    print(markdown_table(["trials", "n", f"search wall (concurrency {args.concurrency})",
                          f"sequential fit ({fit_threads} threads)", "search / sequential",
                          "epoch in a trial (median)", "epoch in-process (median)", "load (1 min)"], rows))
    print(f"\nray.init (local): {init_s:.1f} s, not included above.")
    payload["results"] = results
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
