"""The incremental frontier (search/pareto.py ``ParetoFront``, search/frontier.py ``LiveFrontier``)
equals the full recomputation after every insertion, and the tracker writes the pareto tags of the
trials whose membership changed, and of no other."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from search import pareto
from search.frontier import Frontier, LiveFrontier, Objective
from search.store import ClientReader, load_frontier
from search.tracking import Tracker

INF, NAN = math.inf, math.nan


def _same(a: float, b: float) -> bool:
    """Equal floats, bit for bit (the hypervolume of a row at -inf may be inf or NaN on both sides)."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def _table(rng: np.random.Generator, n: int, m: int, odd: bool) -> np.ndarray:
    """Values on a small grid (many ties and exact duplicates), some rows copied, and with ``odd``
    a few NaN and infinite entries."""
    values = rng.integers(0, 6, size=(n, m)).astype(float)
    copies = rng.random(n) < 0.15
    values[copies] = values[rng.integers(0, n, size=int(copies.sum()))]
    if odd:
        values[rng.random((n, m)) < 0.04] = NAN
        values[rng.random((n, m)) < 0.02] = INF
        values[rng.random((n, m)) < 0.01] = -INF
    return values


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_pareto_front_equals_the_full_computation_after_every_insert(m, seed):
    rng = np.random.default_rng(seed * 10 + m)
    dirs = list(rng.choice(["max", "min"], size=m))
    values = _table(rng, 40, m, odd=seed % 2 == 1)
    reference = [0.0 if d == "max" else 6.0 for d in dirs]
    order = rng.permutation(len(values))
    front = pareto.ParetoFront(dirs, reference)
    joined_once = False
    for i, row in enumerate(order):
        before = set(front.keys)
        joined, evicted = front.insert(int(row), values[row])
        seen = values[order[:i + 1]]
        mask = pareto.nondominated_mask(seen, dirs)
        assert sorted(front.keys) == sorted(int(k) for k in order[:i + 1][mask]), (i, seen)
        assert len(front) == int(mask.sum())
        assert joined == (int(row) in front.keys) and set(evicted) == before - set(front.keys)
        joined_once |= bool(evicted)
        if m <= 3:
            assert _same(front.hypervolume, pareto.hypervolume(seen, dirs, reference)), (i, seen)
        else:
            with pytest.raises(ValueError, match="1 to 3 objectives"):
                front.hypervolume  # noqa: B018  (as pareto.hypervolume: no 4-D hypervolume)
    assert joined_once or m == 1 or seed % 2  # the tables do exercise eviction


def test_pareto_front_on_continuous_values_matches_to_the_last_bit():
    rng = np.random.default_rng(7)
    dirs = ["max", "min", "min"]
    values = np.column_stack([rng.random(300), rng.random(300) ** 2, rng.random(300) ** 0.5])
    front = pareto.ParetoFront(dirs, [0.0, 1.0, 1.0])
    for i, row in enumerate(values):
        front.insert(i, row)
        if i % 25 == 0 or i == len(values) - 1:
            assert front.hypervolume == pareto.hypervolume(values[:i + 1], dirs, [0.0, 1.0, 1.0])
    assert sorted(front.keys) == list(np.flatnonzero(pareto.nondominated_mask(values, dirs)))


def test_pareto_front_duplicates_nan_and_infinities():
    front = pareto.ParetoFront(["max", "min"], [0.0, 10.0])
    assert front.insert("a", [0.5, 5.0]) == (True, [])
    assert front.insert("copy", [0.5, 5.0]) == (True, [])  # equal rows do not dominate each other
    assert front.insert("nan", [NAN, 0.0]) == (False, [])  # never optimal, dominates nothing
    assert front.insert("worse", [0.4, 5.0]) == (False, [])
    assert front.insert("better", [0.5, 4.0]) == (True, ["a", "copy"])
    assert front.insert("inf", [INF, 20.0]) == (True, [])  # beyond the reference: on the front, no volume
    assert front.keys == ["better", "inf"]
    assert front.hypervolume == pareto.hypervolume([[0.5, 4.0], [INF, 20.0]], ["max", "min"], [0.0, 10.0]) == 3.0
    with pytest.raises(ValueError, match="shape"):
        front.insert("short", [1.0])
    with pytest.raises(ValueError, match="without a hypervolume reference"):
        pareto.ParetoFront(["min"]).hypervolume  # noqa: B018


OBJECTIVES = [Objective(metric="val_accuracy", mode="max", reference=0.1),
              Objective(metric="params_nonzero", mode="min"), Objective(metric="flops_compact", mode="min")]


def _row(rng: np.random.Generator, trial_id: str) -> dict:
    """A complete trial's row as the store gives it: normalised "min" objectives (params_total of
    0 or missing: not normalised), sometimes a missing or non-finite objective."""
    row = {"run_id": f"run-{trial_id}", "trial_id": trial_id, "regularizer": "cges",
           "val_accuracy": float(rng.integers(0, 5)) / 4, "params_nonzero": float(rng.integers(0, 5) * 250),
           "params_total": 1000.0, "flops_compact": float(rng.integers(0, 4) * 500), "flops_dense": 2000.0}
    odd = rng.random()
    if odd < 0.05:
        del row["flops_compact"]
    elif odd < 0.1:
        row["val_accuracy"] = NAN
    elif odd < 0.13:
        row["params_total"] = 0.0
    elif odd < 0.16:
        del row["flops_dense"]
    return row


def _assert_frontier_equal(got: Frontier, want: Frontier) -> None:
    assert [r["trial_id"] for r in got.rows] == [r["trial_id"] for r in want.rows]
    assert all(a is b for a, b in zip(got.rows, want.rows))
    assert got.mask.dtype == want.mask.dtype and np.array_equal(got.mask, want.mask)
    assert _same(got.hypervolume, want.hypervolume)
    assert got.objectives == want.objectives and got.others == want.others == []


@pytest.mark.parametrize("objectives", [OBJECTIVES, OBJECTIVES[:2], OBJECTIVES[1:2],
                                        [Objective(metric="val_accuracy", mode="max"),
                                         Objective(metric="val_loss", mode="min", reference=3.0)]])
@pytest.mark.parametrize("seed", range(3))
def test_live_frontier_equals_frontier_of_after_every_trial(objectives, seed):
    rng = np.random.default_rng(seed)
    ids = [f"t{i:03d}" for i in rng.permutation(60)]  # completion order is not trial-id order
    rows: dict[str, dict] = {}
    live = LiveFrontier(objectives)
    snapshots = []
    for i, tid in enumerate(ids):
        row = _row(rng, tid)
        row["val_loss"] = float(rng.integers(0, 4))
        if i % 17 == 16:  # a trial recorded again: its row replaced
            tid = ids[int(rng.integers(0, i))]
            row = {**row, "trial_id": tid, "run_id": f"run-{tid}"}
        before = {t: live.member(t) for t in rows}
        rows[tid] = row
        changed = set(live.add(row))
        want = Frontier.of([rows[t] for t in sorted(rows)], objectives)
        got = live.frontier()
        _assert_frontier_equal(got, want)
        assert live.size == int(want.mask.sum()) and _same(live.hypervolume, want.hypervolume)
        assert tid in changed and {t for t in before if before[t] != live.member(t)} <= changed
        snapshots.append((got, want))
    for got, want in snapshots:  # later trials never change an earlier snapshot
        _assert_frontier_equal(got, want)
    rebuilt = LiveFrontier(objectives, list(rows.values()))
    _assert_frontier_equal(rebuilt.frontier(), Frontier.of([rows[t] for t in sorted(rows)], objectives))
    assert LiveFrontier(objectives).frontier().hypervolume == Frontier.of([], objectives).hypervolume == 0.0


# ---------------------------------------------------------------------------------------------
# the tracker, on a real SQLite MLflow store


class _CountingClient:
    """An MlflowClient that records every ``sparsetune.pareto`` tag written (alone or in a batch)."""

    def __init__(self, client: MlflowClient):
        self._client, self.pareto_writes = client, []

    def set_tag(self, run_id, key, value):
        if key == "sparsetune.pareto":
            self.pareto_writes.append(run_id)
        return self._client.set_tag(run_id, key, value)

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        self.pareto_writes += [run_id for t in tags if t.key == "sparsetune.pareto"]
        return self._client.log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def _complete(tracker: Tracker, trial: str, acc: float, params: float, flops: float) -> tuple[str, Frontier]:
    run = tracker.run_for(trial, f"cges_{trial}", "cges", {"regularizer": {"name": "cges"}})
    tracker.log_result(run, {"epoch": 1, "final": 1.0, "val_accuracy": acc, "params_nonzero": params,
                             "params_total": 1000.0, "flops_compact": flops, "flops_dense": 2000.0})
    return run, tracker.complete(run, trial, None)


def test_tracker_pareto_tags_follow_the_full_recomputation_with_one_write_per_change(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri, "exp", "exp-1", OBJECTIVES, "name: exp\n", {"trials": 14})
    counting = _CountingClient(MlflowClient(uri))
    tracker._client = counting
    rng = np.random.default_rng(3)
    trials = [(f"t{i:02d}", float(rng.integers(1, 5)) / 4, float(rng.integers(1, 5) * 200),
               float(rng.integers(1, 4) * 500)) for i in rng.permutation(14)]
    trials.insert(5, (trials[2][0] + "dup", *trials[2][1:]))  # an exact duplicate of an earlier trial
    runs, membership = {}, {}
    for trial, acc, params, flops in trials:
        counting.pareto_writes.clear()
        runs[trial], got = _complete(tracker, trial, acc, params, flops)
        stored = load_frontier(ClientReader(MlflowClient(uri)), tracker.experiment_id, tracker.parent_id, OBJECTIVES)
        want = Frontier.of(stored.rows, OBJECTIVES)
        assert [r["trial_id"] for r in got.rows] == [r["trial_id"] for r in want.rows]
        assert np.array_equal(got.mask, want.mask) and got.hypervolume == want.hypervolume
        now = {r["trial_id"]: bool(k) for r, k in zip(want.rows, want.mask)}
        tags = {r["trial_id"]: MlflowClient(uri).get_run(r["run_id"]).data.tags["sparsetune.pareto"]
                for r in want.rows}
        assert tags == {t: "true" if k else "false" for t, k in now.items()}
        changed = sorted(runs[t] for t in now if membership.get(t) != now[t])  # the new trial, evictions
        assert sorted(counting.pareto_writes) == changed
        membership = now
    assert not all(membership.values()) and sum(membership.values()) > 1  # evictions and a trade-off
    hv = MlflowClient(uri).get_metric_history(tracker.parent_id, "hypervolume")
    assert [m.step for m in hv] == list(range(1, len(trials) + 1)) and hv[-1].value == want.hypervolume

    # a restored tracker keeps no cache: its first update checks every trial's tag once, as before
    restored = pickle.loads(pickle.dumps(tracker))
    assert "_live" not in pickle.loads(pickle.dumps(tracker)).__getstate__()
    restored._client = counting
    counting.pareto_writes.clear()
    _, got = _complete(restored, "zz", 1.0, 100.0, 100.0)  # dominates every other trial
    assert sorted(counting.pareto_writes) == sorted([*runs.values(), got.rows[-1]["run_id"]])
    assert got.mask.tolist() == [r["trial_id"] == "zz" for r in got.rows]
