"""Driver scale: the Ray driver's work per finished trial when a search holds N trials.

**Simulated in process, without Ray** (a 10,000-trial Ray search is far too slow on a 2-core
machine). What is real and what is not:

- real: a ``search.tracking.Tracker`` on a SQLite MLflow store in a temporary folder, driven as
  ``TrackingCallback`` drives it per trial (``run_for``, ``log_result`` every epoch, ``complete``
  with the trial's three artifact files), with the frontier code it runs; an Optuna study in
  SQLite RDB storage with the quickstart spec's space (``search.space.SpaceDefinition``) and
  sampler (``search.samplers.make_sampler``: multivariate MO-TPE, 3 objectives), ``ask`` + the
  define-by-run space + ``tell`` per trial;
- simulated: the trials themselves (objective values drawn from a synthetic trade-off, no
  training), and the first N - K trials of the store and the study, which are written in bulk
  (MLflow: SQL copies of one real complete run, with their own ids and values; Optuna:
  ``add_trials`` of random-sampler trials) so that only the last K trials (``--last``) go through
  the driver's path and are timed. The tracker loads the bulk-written runs from the store (as
  after a restore); their pareto tags are written in bulk too.

Per timed trial, split by part: ``frontier`` (the frontier computation inside the tracker, MLflow
calls excluded), ``mlflow`` (every MLflow client call of the tracker), ``tracker other`` (the rest
of the tracker's Python: config flattening, row building), ``optuna`` (ask + space + tell).
``--frontier full`` gives the tracker the frontier as it was before the incremental front
(``Frontier.of`` over every complete trial after each one, and every trial's pareto tag checked),
behind the same interface; ``incremental`` is today's ``LiveFrontier``.

    python bench/driver_scale.py                               # N = 300, ~1 min
    python bench/driver_scale.py --trials 4000 --frontier full
    python bench/driver_scale.py --trials 10000 --no-optuna    # the tracker only

The last line reads ``driver work per trial: X ms at N trials``: X is the median over the last K
trials of the per-trial sum of the parts.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import statistics
import tempfile
import time
import uuid
import warnings
from collections import defaultdict
from pathlib import Path

from common import add_common_args, base_payload, markdown_table, print_header, write_json

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from search.frontier import Frontier, LiveFrontier  # noqa: E402
from search.samplers import make_sampler  # noqa: E402
from search.space import SpaceDefinition  # noqa: E402
from search.spec import SearchSpec  # noqa: E402
from search.store import TAG  # noqa: E402
from search.tracking import Tracker  # noqa: E402
from trainables.schema import ARTIFACTS, RESULT_FILE  # noqa: E402
from trainables.yamlio import load_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAMS_TOTAL, FLOPS_DENSE = 89_610.0, 178_200.0  # the quickstart MLP's dense counts (digits, 64-100-10)
PARTS = ("frontier", "mlflow", "tracker other", "optuna")


class Clock:
    """Seconds per part, accumulated while one trial is handled."""

    def __init__(self):
        self.s: dict[str, float] = defaultdict(float)


class TimedClient:
    """An ``MlflowClient`` whose every call adds its time to ``clock.s["mlflow"]``."""

    def __init__(self, client, clock: Clock):
        self._client, self._clock = client, clock

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self._clock.s["mlflow"] += dt
                self._clock.s[f"mlflow {name}"] += dt
                self._clock.s[f"calls {name}"] += 1
        return timed


class TimedLive:
    """The tracker's ``LiveFrontier``, its every use timed as ``frontier`` (pure computation)."""

    def __init__(self, live, clock: Clock):
        self._live, self._clock = live, clock

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._clock.s["frontier"] += time.perf_counter() - t0

    def add(self, row):
        return self._timed(self._live.add, row)

    def member(self, tid):
        return self._timed(self._live.member, tid)

    def frontier(self):
        return self._timed(self._live.frontier)

    def __len__(self):
        return self._timed(len, self._live)

    @property
    def size(self):
        return self._timed(lambda: self._live.size)

    @property
    def hypervolume(self):
        return self._timed(lambda: self._live.hypervolume)


class FullFrontier:
    """``--frontier full``: the tracker's frontier as it was before the incremental front,
    behind ``LiveFrontier``'s interface: ``Frontier.of`` over every complete trial after each one,
    and every trial's pareto tag checked (``add`` names them all)."""

    def __init__(self, objectives, rows: list[dict]):
        self.objectives, self._rows = objectives, {r["trial_id"]: r for r in rows}
        self._of()

    def _of(self) -> None:
        self._frontier = Frontier.of([self._rows[t] for t in sorted(self._rows)], self.objectives)
        self._member = {r["trial_id"]: bool(k) for r, k in zip(self._frontier.rows, self._frontier.mask)}

    def add(self, row):
        self._rows[row["trial_id"]] = row
        self._of()
        return list(self._member)

    def member(self, tid):
        return self._member.get(tid, False)

    def frontier(self):
        return self._frontier

    def __len__(self):
        return len(self._rows)

    @property
    def size(self):
        return int(self._frontier.mask.sum())

    @property
    def hypervolume(self):
        return self._frontier.hypervolume


def objectives_of(rng: np.random.Generator) -> dict[str, float]:
    """A synthetic trial's final metrics: accuracy falls with sparsity, FLOPs roughly follow the
    parameters (a 3-objective front of a few dozen to a few hundred trials)."""
    s = rng.random()
    acc = 0.97 - 0.3 * s ** 4 - 0.05 * rng.random()
    nonzero = PARAMS_TOTAL * (1 - s) * (0.6 + 0.4 * rng.random())
    flops = FLOPS_DENSE * min(1.0, (1 - s) * (0.5 + rng.random()))
    return {"val_accuracy": acc, "params_nonzero": nonzero, "flops_compact": flops, "test_accuracy": acc - 0.01}


def epoch_results(final: dict[str, float], epochs: int) -> list[dict]:
    """What a trial reports per epoch (the last one carries the final metrics)."""
    out = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": final["val_accuracy"] * e / epochs,
            "train_accuracy": final["val_accuracy"], "penalty": 0.1 / e, "epoch_time_s": 0.2,
            "sparsity": 0.5, "training_iteration": e} for e in range(1, epochs + 1)]
    out[-1].update(final, final=1.0, params_total=PARAMS_TOTAL, flops_dense=FLOPS_DENSE, sparsity=0.5)
    return out


def clone_runs(db: Path, template: str, trials: list[tuple[str, dict]]) -> None:
    """Write ``trials`` (trial id, final metrics) into the store as copies of the complete run
    ``template``: every row of it in runs / tags / params / metrics / latest_metrics, with a new run
    id, name, trial id and objective values. Bulk SQL: seconds for 10,000 runs."""
    con = sqlite3.connect(db)
    tables = ("runs", "tags", "params", "metrics", "latest_metrics")
    rows = {t: [dict(zip([c[0] for c in cur.description], r)) for r in cur.fetchall()]
            for t in tables for cur in [con.execute(f"select * from {t} where run_uuid = ?", (template,))]}
    ids = [uuid.uuid4().hex for _ in trials]
    for t in tables:
        cols = list(rows[t][0])
        batch = []
        for rid, (tid, final) in zip(ids, trials):
            new_name = f"cges_{tid}"
            for r in rows[t]:
                r = {**r, "run_uuid": rid}
                if t == "runs":
                    r.update(name=new_name, artifact_uri=r["artifact_uri"].replace(template, rid))
                elif t == "tags" and r["key"] == f"{TAG}.trial_id":
                    r["value"] = tid
                elif t == "tags" and r["key"] == "mlflow.runName":
                    r["value"] = new_name
                elif t in ("metrics", "latest_metrics") and r["key"] in final:
                    r["value"] = final[r["key"]]
                batch.append(tuple(r[c] for c in cols))
        con.executemany(f"insert into {t} ({', '.join(cols)}) values ({', '.join('?' * len(cols))})", batch)
    con.commit()
    con.close()


def run_tracker(tmp: Path, spec_dict: dict, n: int, last: int, epochs: int, mode: str, seed: int) -> dict:
    """The tracker's part: N - K trials written in bulk, then K through the driver's path, timed."""
    spec = SearchSpec.model_validate(spec_dict)
    uri = f"sqlite:///{tmp}/mlflow.db"
    rng = np.random.default_rng(seed)
    art = tmp / "artifacts"
    art.mkdir()
    for name in ARTIFACTS:  # a trial's config.yaml, result.json, compact_model.pt (small here)
        (art / name).write_bytes(b"x" * 2000)
    (art / RESULT_FILE).write_text(json.dumps({"history": [], "pad": "x" * 2000}))  # read back by complete
    config = {**spec_dict["base"], "regularizer": {"name": "cges"}}

    def trial(tracker: Tracker, tid: str) -> None:
        run = tracker.run_for(tid, f"cges_{tid}", "cges", config)
        for result in epoch_results(objectives_of(rng), epochs):
            tracker.log_result(run, result)
        tracker.complete(run, tid, art)

    ids = [f"{i:06d}_{i:05d}" for i in range(n)]  # Ray's trial ids grow with the trial number
    t0 = time.perf_counter()
    tracker = Tracker(uri, spec.name, "scale-1", spec.objectives, "name: scale\n", {"trials": n})
    trial(tracker, ids[0])  # the one real run the bulk-written ones copy
    clone_runs(tmp / "mlflow.db", tracker._runs[ids[0]], [(tid, objectives_of(rng)) for tid in ids[1:n - last]])
    prefill_s = time.perf_counter() - t0

    # The tracker that created the parent (a fresh search: run_for looks for no existing run)
    # loads the bulk-written trials as on a restore; their pareto tags are written in bulk and the
    # tracker's record of them seeded, as if each had gone through complete() (a restored tracker
    # would rewrite every tag on its first completion: N set_tag calls, untimed and slow here).
    t0 = time.perf_counter()
    tracker._rows = None
    rows = tracker._complete_rows()
    live = LiveFrontier(spec.objectives, list(rows.values()))
    load_s = time.perf_counter() - t0
    with sqlite3.connect(tmp / "mlflow.db") as con:
        con.executemany(f"update tags set value = ? where run_uuid = ? and key = '{TAG}.pareto'",
                        [("true" if live.member(t) else "false", r["run_id"]) for t, r in rows.items()])
    tracker._pareto = {t: live.member(t) for t in rows}
    tracker._logged_at = len(rows)
    clock = Clock()
    tracker._client = TimedClient(tracker.client, clock)
    tracker._live = TimedLive(FullFrontier(spec.objectives, list(rows.values())) if mode == "full" else live, clock)
    tracker._dirty = set()
    tracker._published = math.inf  # the frontier's artifacts: timed once below, not inside a trial
    per_trial = []
    for tid in ids[n - last:]:
        clock.s.clear()
        t0 = time.perf_counter()
        trial(tracker, tid)
        total = time.perf_counter() - t0
        per_trial.append({**clock.s, "tracker other": total - clock.s["frontier"] - clock.s["mlflow"]})
    final = tracker._update_frontier()
    t0 = time.perf_counter()
    tracker._publish(final, "running")
    publish_s = time.perf_counter() - t0
    assert final.rows == [rows[t] for t in sorted(rows)] and final.mask.tolist() == [
        tracker._pareto[t] for t in sorted(rows)], "the tags the tracker wrote are not the frontier"
    return {"per_trial": per_trial, "prefill_s": prefill_s, "load_s": load_s, "publish_s": publish_s,
            "complete_trials": len(final.rows), "frontier_size": int(final.mask.sum())}


def run_optuna(tmp: Path, spec_dict: dict, n: int, last: int, seed: int) -> dict:
    """The sampler's part: a study of N - K random trials (bulk), then K MO-TPE ask + tell, timed."""
    spec = SearchSpec.model_validate({**spec_dict, "trials": n})
    space = SpaceDefinition(spec)
    rng = np.random.default_rng(seed + 1)
    directions = ["maximize" if m == "max" else "minimize" for m in spec.objective_modes()]

    def values() -> list[float]:
        o = objectives_of(rng)
        return [o[m] for m in spec.objective_names()]

    t0 = time.perf_counter()
    scratch = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n - last):
        t = scratch.ask()
        space(t)
        scratch.tell(t, values())
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}/optuna.db")
    study = optuna.create_study(storage=storage, study_name="scale", directions=directions,
                                sampler=make_sampler(spec))
    study.add_trials(scratch.trials)
    prefill_s = time.perf_counter() - t0
    per_trial = []
    for _ in range(last):
        t0 = time.perf_counter()
        t = study.ask()
        space(t)
        study.tell(t, values())
        per_trial.append(time.perf_counter() - t0)
    return {"per_trial": per_trial, "prefill_s": prefill_s, "trials": len(study.trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats="--last")
    parser.add_argument("--trials", type=int, default=None,
                        help="N: trials in the search when measured (default 300, --full 4000)")
    parser.add_argument("--last", type=int, default=None, help="K: trials timed at the end (default 20, at most N/2)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs each trial reports (default 10)")
    parser.add_argument("--frontier", choices=["incremental", "full"], default="incremental",
                        help="the tracker's frontier update: today's, or the full recomputation before it")
    parser.add_argument("--no-optuna", action="store_true", help="skip the sampler's part")
    parser.add_argument("--sampler-history", default=None, metavar="H|none",
                        help="the spec's sampler_history (default: the spec's default; none = plain MO-TPE)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.trials or (4000 if args.full else 300)
    last = args.last or args.repeats or min(20, max(1, n // 2))
    if n < 4 or not 1 <= last <= n - 2:
        raise SystemExit(f"need --trials >= 4 and 1 <= --last <= trials - 2, got {n} and {last}")
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    payload = base_payload("driver_scale", args, None)
    spec_dict = load_yaml(ROOT / "examples/quickstart.yaml")
    spec_dict.update(name="scale", trials=n)
    if args.sampler_history is not None:
        spec_dict["sampler_history"] = None if args.sampler_history == "none" else int(args.sampler_history)
    print_header(f"Driver scale: the driver's work per finished trial at {n:,} trials", None, [
        f"SIMULATED IN PROCESS (no Ray): the last {last} of {n:,} trials through a real Tracker on a SQLite "
        f"MLflow store ({args.epochs} epochs reported each, frontier: {args.frontier}) and"
        + (" a real Optuna study (SQLite RDB, the quickstart's MO-TPE sampler and space, 3 objectives);"
           if not args.no_optuna else " no Optuna part (--no-optuna);")
        + f" the first {n - last:,} written in bulk; objective values synthetic, no training."])
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "t").mkdir()
        tracking = run_tracker(Path(d) / "t", spec_dict, n, last, args.epochs, args.frontier, args.seed)
        if not args.no_optuna:
            (Path(d) / "o").mkdir()
            sampler = run_optuna(Path(d) / "o", spec_dict, n, last, args.seed)
    per_trial = [dict(p, optuna=(sampler["per_trial"][i] if not args.no_optuna else 0.0))
                 for i, p in enumerate(tracking["per_trial"])]
    parts = [p for p in PARTS if p != "optuna" or not args.no_optuna]
    totals = [sum(p[k] for k in parts) for p in per_trial]
    rows = [[k, f"{statistics.median(p[k] for p in per_trial) * 1e3:.2f}",
             f"{statistics.mean(p[k] for p in per_trial) * 1e3:.2f}"] for k in parts]
    rows.append(["**total**", f"{statistics.median(totals) * 1e3:.2f}", f"{statistics.mean(totals) * 1e3:.2f}"])
    print(markdown_table([f"part (last {last} trials)", "median ms / trial", "mean ms / trial"], rows))
    calls = sorted({k[len("calls "):] for p in per_trial for k in p if k.startswith("calls ")})
    print("\nThe MLflow part by client call:\n")
    print(markdown_table(["MlflowClient call", "calls / trial", "median ms / trial", "mean ms / trial"], [
        [f"`{c}`", f"{statistics.mean(p.get(f'calls {c}', 0) for p in per_trial):g}",
         f"{statistics.median(p.get(f'mlflow {c}', 0.0) for p in per_trial) * 1e3:.2f}",
         f"{statistics.mean(p.get(f'mlflow {c}', 0.0) for p in per_trial) * 1e3:.2f}"] for c in calls]))
    print(f"\n{tracking['complete_trials']:,} complete trials, {tracking['frontier_size']} on the frontier. "
          f"Not per-trial work, not in the table: creating the store and the bulk writes "
          f"{tracking['prefill_s']:.1f} s (MLflow)"
          + (f", {sampler['prefill_s']:.1f} s (Optuna)" if not args.no_optuna else "")
          + f"; loading the {n - last:,} bulk-written runs into the tracker: {tracking['load_s']:.1f} s; "
            f"publishing the frontier's artifacts and description (at most every live_s = 30 s while trials "
            f"complete): {tracking['publish_s']:.1f} s.")
    payload["results"] = {"per_trial_s": per_trial, "tracking": {k: v for k, v in tracking.items() if k != "per_trial"},
                          "optuna_prefill_s": None if args.no_optuna else sampler["prefill_s"]}
    write_json(args.out, payload)
    print(f"median over the last {last} trials of the per-trial sum of the parts; simulated in process")
    print(f"driver work per trial: {statistics.median(totals) * 1e3:.1f} ms at {n} trials")


if __name__ == "__main__":
    main()
