"""Kill a search's driver with ``kill -9`` at random moments and check that ``--resume`` loses and
duplicates nothing (docs/RESULTS.md, Reliability: "Killed driver, by hand").

Each round starts issue 20's search (digits, ``l1`` and ``group_lasso``, MLP 64-16-10, 3 epochs,
10 trials, concurrency 2, ``checkpoint_every_s: 0``) in a fresh folder, kills the driver's process
group (Ray's local processes with it) 0-2 s after a random progress line, resumes and kills it the
same way, then resumes to the end, and checks the stores: one parent FINISHED, 10 children
FINISHED/``complete`` with distinct trial ids, 10 COMPLETE Optuna trials whose ``ray_trial_id`` is
a child with the same ``val_accuracy``. ``--after N`` instead kills once, after N finished trials.

    python bench/driver_kills.py --rounds 6 --seed 5 --dir /tmp/kills
    python bench/driver_kills.py --after 5 --dir /tmp/kills

Its last line reads ``k of n rounds: nothing lost or duplicated``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SPEC = """name: kill
base:
  device: cpu
  data: {name: digits}
  model: {name: mlp, hidden: [64, 16]}
  optim: {epochs: 3, lr: 0.1}
regularizers:
  l1: {lam: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}
  group_lasso: {lam: {type: loguniform, low: 1.0e-3, high: 5.0e-2}}
trials: 10
concurrency: 2
seed: 0
storage: DIR/ray
tracking_uri: sqlite:///DIR/mlflow.db
checkpoint_every_s: 0
"""
LINE = re.compile(r"^(  start|\[)")
ENDED = re.compile(r"^\[")


def _search(folder: Path, resume: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "search.cli", "search", str(folder / "spec.yaml")] + (["--resume"] if resume else [])
    return subprocess.Popen(args, cwd=folder, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _kill_after(proc: subprocess.Popen, lines: int, pattern: re.Pattern, rng: random.Random) -> int:
    """Read the search's lines; ``kill -9`` its process group 0-2 s after the ``lines``-th match."""
    seen = ended = 0
    for line in proc.stdout:
        ended += bool(ENDED.match(line))
        seen += bool(pattern.match(line))
        if seen >= lines:
            break
    time.sleep(rng.uniform(0, 2))
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return ended


def _check(folder: Path) -> str:
    import optuna
    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("kill").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sparsetune.kind") == "search"]
    kids = {r.data.tags["sparsetune.trial_id"]: r for r in runs if "sparsetune.trial_id" in r.data.tags}
    study = optuna.load_study(study_name=parents[0].info.run_name, storage=f"sqlite:///{folder}/optuna.db")
    problems = []
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"parents {[p.info.status for p in parents]}")
    if len(kids) != 10 or len([r for r in runs if "sparsetune.trial_id" in r.data.tags]) != 10:
        problems.append(f"{len(kids)} children")
    if {(r.info.status, r.data.tags.get("sparsetune.state")) for r in kids.values()} != {("FINISHED", "complete")}:
        problems.append("a child not FINISHED/complete")
    if [t.state.name for t in study.trials] != ["COMPLETE"] * 10:
        problems.append(f"optuna {[t.state.name for t in study.trials]}")
    for t in study.trials:
        run = kids.get(t.user_attrs.get("ray_trial_id"))
        if run is None or run.data.metrics.get("val_accuracy") != t.values[0]:
            problems.append(f"optuna trial {t.number} has no matching run")
    return "; ".join(problems) or "ok"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="a scratch folder (emptied first; one sub-folder per round)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--after", type=int, help="one kill, after this many finished trials")
    args = p.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.dir).absolute()
    good = 0
    rounds = 1 if args.after else args.rounds
    shutil.rmtree(root, ignore_errors=True)
    for r in range(1, rounds + 1):
        folder = root / f"round{r}"  # a fresh one: the stores' connection pools outlive a deleted file
        folder.mkdir(parents=True)
        (folder / "spec.yaml").write_text(SPEC.replace("DIR", str(folder)))
        if args.after:
            kills = [(args.after, ENDED)]
        else:
            kills = [(rng.randint(1, 14), LINE), (rng.randint(1, 8), LINE)]
        ended = [_kill_after(_search(folder, i > 0), n, pattern, rng) for i, (n, pattern) in enumerate(kills)]
        final = _search(folder, True)
        out, _ = final.communicate(timeout=900)
        reconciled = [line.strip() for line in out.splitlines() if "reconciled:" in line]
        verdict = _check(folder) if final.returncode == 0 else f"exit {final.returncode}: {out[-500:]}"
        good += verdict == "ok"
        print(f"round {r}: killed after {[n for n, _ in kills]} lines ({ended} trials ended then), "
              f"final exit {final.returncode}; {' '.join(reconciled) or 'nothing to reconcile'}: {verdict}",
              flush=True)
    print(f"{good} of {rounds} rounds: nothing lost or duplicated")
    return 0 if good == rounds else 1


if __name__ == "__main__":
    sys.exit(main())
