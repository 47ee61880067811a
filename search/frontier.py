"""The frontier of a search: objectives matrix, Pareto mask and hypervolume, in one place.

The search's progress lines, the parent run's ``hypervolume`` metric and description,
``sparsetune frontier`` and the plots all go through :meth:`Frontier.of`, so a search has one
hypervolume, whoever prints it. The objectives (with their hypervolume references) are stored on
the parent run as JSON (:func:`objectives_to_json`) and read back from there, never rebuilt from
defaults.

Pure: numpy, pydantic and the standard library only (no torch, ray or mlflow), so the
``frontier`` and ``export`` commands start fast.
"""

from __future__ import annotations

import csv
import io
import json
import math
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from trainables.schema import DENSE_REFERENCE

from . import pareto

__all__ = ["Objective", "Frontier", "LiveFrontier", "CHANCE_CAUSES", "at_chance", "finite", "objective_matrix", "objectives_to_json",
           "objectives_from_json", "better"]

class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    metric: str
    mode: Literal["max", "min"]
    reference: float | None = None  # hypervolume reference; default: 0 for "max", the dense value

    @field_validator("reference")
    @classmethod
    def check_finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("the hypervolume reference must be finite")
        return v


def better(o: Objective) -> str:
    """Which way is better, in words (axis titles, tables)."""
    return "higher is better" if o.mode == "max" else "lower is better"


def objectives_to_json(objectives: list[Objective]) -> str:
    return json.dumps([o.model_dump() for o in objectives])


def objectives_from_json(text: str) -> list[Objective]:
    """Objectives as stored on a parent run: JSON, or the older ``metric:mode,...`` form (which
    had no references: searches recorded before references were stored)."""
    if text.lstrip().startswith("["):
        return [Objective(**o) for o in json.loads(text)]
    return [Objective(metric=m, mode=d) for m, d in (item.split(":") for item in text.split(","))]


def objective_matrix(rows: list[dict], objectives: list[Objective]) -> tuple[np.ndarray, np.ndarray]:
    """Objective values and hypervolume reference, normalised so searches compare.

    A "min" objective with a dense counterpart (``params_nonzero`` -> ``params_total``,
    ``flops_compact`` -> ``flops_dense``) and no explicit reference is divided by it: 1.0 is the
    dense network, the reference. Other objectives keep their units; the reference is the
    objective's ``reference`` or 0 for a "max" objective (accuracy). The hypervolume of the
    default objectives is then in [0, 1].
    """
    values = np.full((len(rows), len(objectives)), np.nan)
    reference = np.zeros(len(objectives))
    for j, o in enumerate(objectives):
        dense = DENSE_REFERENCE.get(o.metric) if o.mode == "min" and o.reference is None else None
        reference[j] = 1.0 if dense else (o.reference if o.reference is not None else 0.0)
        for i, row in enumerate(rows):
            v = row.get(o.metric)
            if v is None:
                continue
            values[i, j] = v / row[dense] if dense and row.get(dense) else v
    return values, reference


CHANCE_CAUSES = ("no better than always answering the most frequent class; likely causes: a learning "
                 "rate too small or too large (optim.lr), too few epochs, a regularizer strength that "
                 "zeroes the network, or BatchNorm on tiny inputs or batches")


def at_chance(row: dict) -> bool:
    """A trial whose validation accuracy (test accuracy without a validation split) is at chance
    level, as the trainer judged it (``val_at_chance`` / ``test_at_chance``)."""
    return row.get("val_at_chance", row.get("test_at_chance", 0)) == 1


@dataclass
class Frontier:
    """The complete trials of one search, and which are Pareto-optimal."""

    rows: list[dict]  # one per complete trial: run_id, trial_id, regularizer, metrics, param:...
    objectives: list[Objective]
    mask: np.ndarray
    hypervolume: float
    others: list[dict] = field(default_factory=list)  # pruned / failed trials (trials.csv only)

    @classmethod
    def of(cls, rows: list[dict], objectives: list[Objective], others: list[dict] | None = None) -> Frontier:
        if not rows:
            return cls(rows, objectives, np.zeros(0, bool), 0.0, list(others or []))
        values, reference = objective_matrix(rows, objectives)
        modes = [o.mode for o in objectives]
        return cls(rows, objectives, pareto.nondominated_mask(values, modes),
                   pareto.hypervolume(values, modes, reference), list(others or []))

    @property
    def at_chance(self) -> bool:
        """Every complete trial is at chance level: the frontier is no result."""
        return bool(self.rows) and all(at_chance(r) for r in self.rows)

    @property
    def points(self) -> list[dict]:
        """Pareto-optimal rows, best first objective first."""
        first = self.objectives[0]
        chosen = [r for r, keep in zip(self.rows, self.mask) if keep]
        return sorted(chosen, key=lambda r: r.get(first.metric, 0), reverse=first.mode == "max")

    @property
    def ranked(self) -> list[dict]:
        """Every complete row with its ``pareto`` flag: the frontier first, then the others,
        each by the first objective."""
        first = self.objectives[0]
        flagged = [{**r, "pareto": bool(k)} for r, k in zip(self.rows, self.mask)]
        sign = -1.0 if first.mode == "max" else 1.0
        return sorted(flagged, key=lambda r: (not r["pareto"], _num(r.get(first.metric), sign)))

    def columns(self) -> list[str]:
        metrics = [o.metric for o in self.objectives]
        extra = ["test_accuracy", "params_total", "params_compact", "params_unique", "sparsity", "flops_dense"]
        rows = self.rows + self.others
        keys = sorted({k for r in rows for k in r if k.startswith("param:")})
        params = [k for k in keys if len({str(r.get(k)) for r in rows}) > 1]  # what the search varied
        path = ["point", "target"] if any("point" in r for r in rows) else []
        return ["trial_id", *path, "regularizer", "state", "pareto", *metrics,
                *[e for e in extra if e not in metrics], "run_id", "cause", *params]

    def to_csv(self, only_pareto: bool = False) -> str:
        """``trials.csv`` (every trial: the frontier first, then the other complete ones, then
        pruned and failed ones) or, with ``only_pareto``, ``frontier.csv``."""
        rows = [{"state": "complete", **r} for r in self.ranked if r["pareto"] or not only_pareto]
        if not only_pareto:
            rows += [{**r, "pareto": False} for r in self.others]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


def _key(row: dict) -> str:
    """A row's candidate id (``search.store.candidate_of``): the trial's id, or ``<trial>/p<k>``."""
    return row.get("candidate", row["trial_id"])


def finite(value: Any) -> bool:
    """A real, finite number (not a bool, not None, not NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any, sign: float) -> float:
    """A sort key: ``sign * value``, missing values last."""
    ok = finite(value)
    return sign * float(value) if ok else math.inf


class LiveFrontier:
    """:meth:`Frontier.of` over complete trials that arrive one at a time (the search's driver).

    Keeps the rows sorted by ``trial_id`` (the order the tracker has always passed to
    :meth:`Frontier.of`), their Pareto mask and a :class:`pareto.ParetoFront`. Adding a trial
    costs O(front) comparisons plus an O(n) copy of pointers and booleans, not the O(n^2)
    dominance matrix; :meth:`frontier` is a snapshot equal to ``Frontier.of(rows, objectives)``
    (rows, mask and hypervolume, bit for bit) that later additions do not change.

    A trial added again (its row replaced) may free rows it dominated, so that rebuilds the front
    from every row: rare, and then O(n * front).
    """

    def __init__(self, objectives: list[Objective], rows: list[dict] = ()):
        self.objectives = objectives
        self._modes = [o.mode for o in objectives]
        self._reference = objective_matrix([], objectives)[1]  # depends on the objectives only
        self._rebuild(list(rows))

    def _rebuild(self, rows: list[dict]) -> None:
        self._front = pareto.ParetoFront(self._modes, self._reference)
        self._ids: list[str] = []  # trial ids, sorted
        self._rows: list[dict] = []  # aligned with _ids
        self._mask = np.zeros(0, bool)  # aligned with _ids; replaced, never changed once handed out
        for row in sorted(rows, key=_key):
            self.add(row)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, row: dict) -> list[str]:
        """Add (or replace) one complete trial's row; the trial ids whose membership may have
        changed: the new trial and those it evicted (every trial after a replacement)."""
        tid = _key(row)
        at = bisect_left(self._ids, tid)
        if at < len(self._ids) and self._ids[at] == tid:
            self._rebuild([*self._rows[:at], row, *self._rows[at + 1:]])
            return list(self._ids)
        values = objective_matrix([row], self.objectives)[0][0]
        joined, evicted = self._front.insert(tid, values)
        self._ids.insert(at, tid)
        self._rows.insert(at, row)
        mask = np.insert(self._mask, at, joined)  # a new array: earlier snapshots keep theirs
        for gone in evicted:
            mask[bisect_left(self._ids, gone)] = False
        self._mask = mask
        return [tid, *evicted]

    @property
    def size(self) -> int:
        """Pareto-optimal trials (``frontier().mask.sum()``), in O(1)."""
        return len(self._front)

    @property
    def hypervolume(self) -> float:
        """``frontier().hypervolume``: recomputed from the front alone when it changed."""
        return self._front.hypervolume if self._ids else 0.0

    def member(self, trial_id: str) -> bool:
        at = bisect_left(self._ids, trial_id)
        return at < len(self._ids) and self._ids[at] == trial_id and bool(self._mask[at])

    def frontier(self) -> Frontier:
        """A snapshot: equal to ``Frontier.of`` over the rows so far, sorted by ``trial_id``."""
        if not self._ids:
            return Frontier([], self.objectives, np.zeros(0, bool), 0.0)
        return Frontier(list(self._rows), self.objectives, self._mask, self.hypervolume)
