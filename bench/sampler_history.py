"""What a bounded history does to MO-TPE: hypervolume and ask + tell time, full vs bounded.

``search.history.BoundedTPESampler`` (the default of ``sampler: tpe``) shows TPE the trials that
can be among its best (exactly those it would pick from the whole history) and the
``sampler_history`` most recent ones. This runs the same search with TPE seeing every trial
(``history: none``) and with bounded histories, on a synthetic 3-objective problem that costs
nothing to evaluate, so that thousands of trials fit on a CPU:

- DTLZ2 (Deb et al. 2002; 3 objectives, minimised, front on the unit sphere) over 6 parameters in
  [0, 1], behind a define-by-run space shaped like sparsetune's: a categorical ``family`` picks one
  of two conditional sub-spaces of 4 parameters (family ``b``'s distance term is shifted by 0.15,
  so ``a`` is the better family), and 2 parameters are shared;
- the sampler exactly as ``search.samplers.make_sampler`` builds it for ``sampler: tpe``
  (multivariate, group, constant liar, 10 startup trials), one trial at a time, in-memory storage
  (the RDB storage's cost is measured in ``bench/driver_scale.py``);
- the hypervolume of all trials so far, reference point (1.1, 1.1, 1.1), at every ``--every``
  trials; ask + tell time per trial, median over each block of ``--every`` trials.

    python bench/sampler_history.py                                  # 600 trials, ~2 min
    python bench/sampler_history.py --trials 2000 --seeds 0 1 2 --histories none 500 1000
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from common import add_common_args, base_payload, markdown_table, print_header, write_json

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from search import pareto  # noqa: E402
from search.history import BoundedTPESampler  # noqa: E402

REFERENCE = (1.1, 1.1, 1.1)


def objective(trial: optuna.Trial) -> list[float]:
    family = trial.suggest_categorical("family", ["a", "b"])
    own = [trial.suggest_float(f"{family}{i}", 0.0, 1.0) for i in range(4)]
    shared = [trial.suggest_float(f"s{i}", 0.0, 1.0) for i in range(2)]
    x = np.array(own[:2] + shared + own[2:])
    g = float(np.sum((x[2:] - 0.5) ** 2)) + (0.15 if family == "b" else 0.0)
    t = x[:2] * np.pi / 2
    return [(1 + g) * np.cos(t[0]) * np.cos(t[1]), (1 + g) * np.cos(t[0]) * np.sin(t[1]), (1 + g) * np.sin(t[0])]


def run(history: int | None, trials: int, every: int, seed: int) -> dict:
    sampler = BoundedTPESampler(history=history, seed=seed, multivariate=True, group=True, constant_liar=True,
                                n_startup_trials=10)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)
    values, hv, ms = [], [], []
    block: list[float] = []
    for i in range(1, trials + 1):
        t0 = time.perf_counter()
        trial = study.ask()
        v = objective(trial)
        study.tell(trial, v)
        block.append(time.perf_counter() - t0)
        values.append(v)
        if i % every == 0:
            hv.append(pareto.hypervolume(np.array(values), ["min"] * 3, REFERENCE))
            ms.append(1000 * statistics.median(block))
            block = []
    return {"history": history, "seed": seed, "hypervolume": hv, "ask_tell_ms": ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats="--seeds")
    parser.add_argument("--trials", type=int, default=600)
    parser.add_argument("--every", type=int, default=200, help="measure every this many trials")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--histories", nargs="+", default=["none", "250"],
                        help="sampler_history values to compare; none = every trial")
    args = parser.parse_args()
    if args.trials < args.every or args.every < 1:
        raise SystemExit(f"need 1 <= --every <= --trials, got {args.every} and {args.trials}")
    histories = [None if h == "none" else int(h) for h in args.histories]
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    payload = base_payload("sampler_history", args, None)
    print_header(f"MO-TPE with a bounded history: {args.trials} trials of synthetic DTLZ2 (3 objectives)", None, [
        "sampler as make_sampler builds it for `sampler: tpe`; in-memory storage; one trial at a time",
        f"hypervolume of all trials so far (reference {REFERENCE}); ask + tell median per block of {args.every}"])
    runs = []
    for seed in args.seeds:
        for history in histories:
            r = run(history, args.trials, args.every, seed)
            runs.append(r)
            print(f"seed {seed} history {history}: hv {r['hypervolume'][-1]:.4f}, "
                  f"last block {r['ask_tell_ms'][-1]:.0f} ms per trial", flush=True)
    marks = [args.every * (j + 1) for j in range(args.trials // args.every)]
    rows = []
    for history in histories:
        mine = [r for r in runs if r["history"] == history]
        hv = np.array([r["hypervolume"] for r in mine])
        ms = np.array([r["ask_tell_ms"] for r in mine])
        rows.append([str(history)] + [f"{hv[:, j].mean():.4f} ± {hv[:, j].std():.4f}" for j in range(len(marks))]
                    + [f"{ms[:, j].mean():.0f}" for j in range(len(marks))])
    print()
    print(markdown_table(["history"] + [f"HV at {m}" for m in marks] + [f"ms/trial at {m}" for m in marks], rows))
    payload.update(runs=runs, marks=marks, reference=REFERENCE)
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
