"""Start-up of ``sparsetune frontier`` and ``export``: wall time of the whole command.

The store is built like the quickstart's (one search, 12 trials of 12 epochs each with their
``config.yaml``), without Ray, in a temporary folder. Each command then runs as a fresh process
(``python -m search.cli ...``, what the ``sparsetune`` script runs), ``--repeats`` times after one
untimed run (the file cache), and the median wall time is reported, beside two floors measured in
the same run: a bare ``python -c pass`` and ``python -c "import mlflow"``.

``--before DIR`` also times another checkout's code on the same store, alternating with the
current code's runs so that both see the same load.

    python bench/cli_startup.py
    mkdir /tmp/before && git archive 779a17a | tar -x -C /tmp/before
    python bench/cli_startup.py --before /tmp/before --out bench/results/cli_startup.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

from search.frontier import Objective  # noqa: E402
from search.tracking import Tracker  # noqa: E402

OBJECTIVES = [Objective(metric="val_accuracy", mode="max"), Objective(metric="params_nonzero", mode="min"),
              Objective(metric="flops_compact", mode="min")]
FAMILIES = ("l1", "group_lasso", "cges", "growl")


def build_store(folder: Path, trials: int = 12, epochs: int = 12) -> str:
    import random

    uri = f"sqlite:///{folder}/mlflow.db"
    tracker = Tracker(uri, "quickstart", "quickstart-1", OBJECTIVES, "name: quickstart\n", {"trials": trials})
    rng = random.Random(0)
    for i in range(trials):
        family, trial = FAMILIES[i % len(FAMILIES)], f"t{i:04d}"
        run = tracker.run_for(trial, f"{family}_{trial}", family, {"regularizer": {"name": family}})
        for epoch in range(1, epochs + 1):
            final = epoch == epochs
            tracker.log_result(run, {"epoch": epoch, "final": float(final), "train_loss": 1 / epoch,
                                     "val_loss": 1 / epoch, "val_accuracy": rng.uniform(0.8, 0.98),
                                     **({"params_nonzero": float(rng.randint(1000, 7000)), "params_total": 7510.0,
                                         "flops_compact": float(rng.randint(2000, 14000)), "flops_dense": 15000.0,
                                         "test_accuracy": 0.9} if final else {})})
        art = folder / "art" / trial
        art.mkdir(parents=True)
        (art / "config.yaml").write_text(f"seed: {i}\nregularizer: {{name: {family}}}\n")
        tracker.complete(run, trial, art)
    tracker.finish("FINISHED", "complete")
    return uri


def wall(argv: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="DIR", help="also time this checkout's code (e.g. a `git archive` "
                        "of the commit before a change), alternating with the current code's runs")
    parser.add_argument("--trials", type=int, default=12, help="trials in the store (default 12, the quickstart)")
    add_common_args(parser, repeats=5)
    args = parser.parse_args()
    repeats = args.repeats or 5
    codes = {"after": str(ROOT), **({"before": args.before} if args.before else {})}
    print_header("Frontier/export start-up", None, [f"Median of {repeats} fresh processes; code: "
                                                   + ", ".join(f"{k} = {v}" for k, v in codes.items()) + "."])
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        uri = build_store(tmp, args.trials)
        cli = [sys.executable, "-m", "search.cli"]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            'python -c "import mlflow"': [sys.executable, "-c", "import mlflow"],
            "sparsetune frontier": [*cli, "frontier", "--experiment", "quickstart", "--tracking-uri", uri],
            "sparsetune export": [*cli, "export", "--experiment", "quickstart", "--tracking-uri", uri,
                                  "--out", str(tmp / "exported")],
        }
        for name, argv in commands.items():
            per_code = results.setdefault(name, {code: [] for code in codes})
            for i in range(repeats + 1):  # the first run of each is untimed (file cache)
                for code, path in codes.items():  # alternating: both see the same load
                    seconds = wall(argv, {**os.environ, "PYTHONPATH": path}, tmp)
                    if i:
                        per_code[code].append(seconds)
    medians = {name: {code: statistics.median(t) for code, t in r.items()} for name, r in results.items()}
    headers = ["command", *[f"{code} (median)" for code in codes], *(["after / before"] if args.before else [])]
    rows = []
    for name, m in medians.items():
        row = [name, *[f"{m[code]:.2f} s" for code in codes]]
        if args.before:
            row.append("–" if name.startswith("python") else f"{m['after'] / m['before']:.2f}×")
        rows.append(row)
    print(markdown_table(headers, rows))
    print(f"\nload average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min)")
    write_json(args.out, {**base_payload("cli_startup", args, None), "times_s": results, "medians_s": medians})


if __name__ == "__main__":
    main()
