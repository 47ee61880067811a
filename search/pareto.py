"""Pareto dominance, non-dominated sorting and hypervolume on plain arrays.

Layout follows Optuna's ``_is_pareto_front``: the public functions validate their input and turn
every objective into "minimize" (``to_minimization`` negates the "max" columns); the kernels
(``_dominance_matrix``, ``_hv2d``, ``_hv3d``) only ever see minimised float arrays.

Conventions, on minimised rows ``a`` and ``b`` of length ``m``:

* ``a`` dominates ``b`` iff ``a_k <= b_k`` for every ``k`` and ``a_k < b_k`` for some ``k``.
  Equal rows therefore do not dominate each other, so every copy of an optimal row is optimal.
* ``+inf`` and ``-inf`` are ordered like numbers (``-inf`` is the best possible "min" value).
* A row containing NaN is never Pareto-optimal, never dominates anything and never counts towards
  the hypervolume (it gets rank ``-1``). Such rows are ignored, not treated as errors, so that a
  failed trial can sit in a results table without distorting the front.

:class:`ParetoFront` keeps the front (and its hypervolume) of rows inserted one at a time, equal
to what the functions give over all of them, at O(front) per insert instead of O(n^2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Literal

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike

__all__ = [
    "Direction",
    "ParetoFront",
    "dominates",
    "hypervolume",
    "nondominated_mask",
    "pareto_ranks",
    "to_minimization",
]

Direction = Literal["max", "min"]


def to_minimization(values: ArrayLike, directions: Sequence[Direction]) -> np.ndarray:
    """Return ``values`` as a new ``(n, m)`` float array with the "max" columns negated.

    ``values`` must be 2-D (one row per trial, one column per objective); an empty table must
    have shape ``(0, m)``. ``directions`` holds one ``"max"`` or ``"min"`` per column.
    """
    arr = np.array(values, dtype=float)  # always a copy: the caller's array is never modified
    if arr.ndim != 2:
        raise ValueError(f"`values` must be 2-D of shape (n, m), but got shape {arr.shape}.")
    if isinstance(directions, str):
        raise ValueError(f"`directions` must be a sequence of 'max'/'min', got {directions!r}.")
    dirs = list(directions)
    if len(dirs) != arr.shape[1]:
        raise ValueError(
            f"`len(directions) == m` must hold, but got {len(dirs)} directions {dirs!r} "
            f"for m={arr.shape[1]} objectives."
        )
    for d in dirs:
        if d not in ("max", "min"):
            raise ValueError(f"each direction must be 'max' or 'min', but got {d!r}.")
    arr[:, [d == "max" for d in dirs]] *= -1.0
    return arr


def dominates(a: ArrayLike, b: ArrayLike) -> bool:
    """Whether minimised row ``a`` dominates ``b``: ``a <= b`` everywhere and ``a < b`` somewhere.

    A NaN in either row makes the answer ``False``.
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.ndim != 1 or a_arr.shape != b_arr.shape:
        raise ValueError(
            f"`a` and `b` must be 1-D of equal length, but got {a_arr.shape=}, {b_arr.shape=}."
        )
    return bool(np.all(a_arr <= b_arr) and np.any(a_arr < b_arr))


def _dominance_matrix(loss: np.ndarray) -> np.ndarray:
    """``D[i, j]`` is True iff row ``i`` dominates row ``j`` (``loss`` already minimised).

    Built one objective at a time, so memory is O(n^2) booleans. NaN compares False, hence NaN
    rows neither dominate nor are dominated here; callers mask them out explicitly.
    """
    n = loss.shape[0]
    weakly_better = np.ones((n, n), dtype=bool)
    strictly_better = np.zeros((n, n), dtype=bool)
    for col in loss.T:
        weakly_better &= col[:, None] <= col[None, :]
        strictly_better |= col[:, None] < col[None, :]
    return weakly_better & strictly_better


def nondominated_mask(values: ArrayLike, directions: Sequence[Direction]) -> np.ndarray:
    """Boolean mask of the Pareto-optimal rows: NaN-free rows that no NaN-free row dominates."""
    loss = to_minimization(values, directions)
    valid = ~np.isnan(loss).any(axis=1)
    return valid & ~_dominance_matrix(loss).any(axis=0)


def pareto_ranks(values: ArrayLike, directions: Sequence[Direction]) -> np.ndarray:
    """Non-dominated sorting rank of each row (Deb et al., NSGA-II).

    Rank 0 is the Pareto front, rank ``k + 1`` the front of the rows left after removing ranks
    ``0..k``; equivalently, the largest ``k`` such that some chain ``p_1 > p_2 > ... > p_k > row``
    exists, where ``>`` means "dominates". NaN rows get -1.
    """
    loss = to_minimization(values, directions)
    dom = _dominance_matrix(loss)
    remaining = ~np.isnan(loss).any(axis=1)
    n_dominators = dom.sum(axis=0)  # NaN rows have no dominators and dominate nothing
    ranks = np.full(loss.shape[0], -1, dtype=np.int64)
    front = remaining & (n_dominators == 0)
    rank = 0
    while front.any():
        ranks[front] = rank
        remaining &= ~front
        # peel the front: rows it dominated lose those dominators
        n_dominators = n_dominators - dom[front].sum(axis=0)
        front = remaining & (n_dominators == 0)
        rank += 1
    return ranks


def _hv2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by ``points`` (all strictly better than ``ref``) inside the box of ``ref``.

    Sort by the first objective (ties by the second), keep the staircase of rows whose second
    objective beats every earlier row, then sum the rectangles ``(x_next - x_i) * (ref_y - y_i)``.
    """
    pts = points[np.lexsort((points[:, 1], points[:, 0]))]
    y = pts[:, 1]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(y)[:-1]))
    pts = pts[y < best_before]  # drops duplicates and weakly dominated rows: x strictly increases
    x_next = np.append(pts[1:, 0], ref[0])
    return float(np.sum((x_next - pts[:, 0]) * (ref[1] - pts[:, 1])))


def _hv3d(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume by sweeping the third objective.

    Between consecutive distinct levels ``z_k`` and ``z_{k+1}`` (the last one is ``ref_z``) every
    slice is the 2-D area of the rows with ``z <= z_k``; O(n^2 log n) in total.
    """
    pts = points[np.argsort(points[:, 2], kind="stable")]
    levels, first = np.unique(pts[:, 2], return_index=True)
    ends = np.append(first[1:], len(pts))  # rows [0, ends[k]) have z <= levels[k]
    thickness = np.append(levels[1:], ref[2]) - levels
    return float(sum(_hv2d(pts[:end, :2], ref[:2]) * t for end, t in zip(ends, thickness)))


def hypervolume(values: ArrayLike, directions: Sequence[Direction], reference: ArrayLike) -> float:
    """Exact hypervolume (Lebesgue measure) of the region dominated by the rows, for m = 1, 2, 3.

    In minimised form this is the measure of ``{y : y <= ref and p <= y for some row p}``.
    ``reference`` has one entry per objective, in the original units and directions (e.g. 0 for a
    "max" accuracy, the dense parameter count for a "min" parameter count). Rows that are not
    strictly better than the reference in every objective add nothing, NaN rows are ignored and
    an empty table gives 0.0. A row at -inf (minimised) gives ``inf``.
    """
    loss = to_minimization(values, directions)
    m = loss.shape[1]
    if not 1 <= m <= 3:
        raise ValueError(f"hypervolume supports 1 to 3 objectives, but got m={m}.")
    ref_arr = np.asarray(reference, dtype=float)
    if ref_arr.shape != (m,) or np.isnan(ref_arr).any():
        raise ValueError(f"`reference` must be {m} non-NaN numbers, but got {reference!r}.")
    ref = to_minimization(ref_arr[None, :], directions)[0]
    return _hypervolume(loss, ref)


def _hypervolume(loss: np.ndarray, ref: np.ndarray) -> float:
    """The kernel of :func:`hypervolume` on minimised rows and reference (m = 1, 2, 3).

    Depends only on the multiset of non-dominated rows strictly better than ``ref``, not on their
    order: the sweeps sort first, and rows that tie in every sorted column are equal. So the rows
    of the Pareto front alone give the same float as every row (what :class:`ParetoFront` uses).
    """
    loss = loss[np.all(loss < ref, axis=1)]  # NaN rows fail the comparison and drop out here
    if len(loss) == 0:
        return 0.0
    loss = loss[~_dominance_matrix(loss).any(axis=0)]
    if loss.shape[1] == 1:
        return float(ref[0] - loss[:, 0].min())
    return _hv2d(loss, ref) if loss.shape[1] == 2 else _hv3d(loss, ref)


class ParetoFront:
    """The Pareto front of rows inserted one at a time, with the conventions of this module.

    ``insert`` compares the new row with the current front only: a row that a front row
    dominates is rejected in O(front); otherwise it joins and evicts the front rows it dominates
    (a row dominated by a non-front row is dominated by a front row too: dominance is
    transitive). Equal rows do not dominate each other, so every copy of an optimal row stays on
    the front, and NaN rows never join, as in :func:`nondominated_mask`. After any sequence of
    inserts, :attr:`keys` are exactly the rows ``nondominated_mask`` marks over all of them.

    :attr:`hypervolume` is recomputed from the front alone, lazily, when the front has changed
    since it was last read: the same float :func:`hypervolume` gives over every row inserted (see
    ``_hypervolume``). The reference is fixed at construction.
    """

    def __init__(self, directions: Sequence[Direction], reference: ArrayLike | None = None):
        self._sign = to_minimization(np.ones((1, len(directions))), directions)[0]  # -1 on "max" columns
        m = len(self._sign)
        self._directions = list(directions)
        self._reference = None if reference is None else np.asarray(reference, dtype=float)
        self._loss = np.zeros((0, m))  # the front, minimised, one row per key
        self._keys: list = []
        self._hv: float | None = None

    @property
    def keys(self) -> list:
        """The keys of the rows on the front, in the order they joined."""
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def insert(self, key, values: ArrayLike) -> tuple[bool, list]:
        """Insert one row (original directions) under ``key``: whether it joined the front, and
        the keys of the front rows it evicted."""
        p = np.asarray(values, dtype=float)
        if p.shape != self._sign.shape:
            raise ValueError(f"a row must have {len(self._sign)} values, but got shape {p.shape}.")
        p = p * self._sign
        if np.isnan(p).any():
            return False, []
        front = self._loss
        if ((front <= p).all(axis=1) & (front < p).any(axis=1)).any():
            return False, []
        evicted = (p <= front).all(axis=1) & (p < front).any(axis=1)
        gone = [k for k, e in zip(self._keys, evicted) if e]
        self._keys = [k for k, e in zip(self._keys, evicted) if not e] + [key]
        self._loss = np.vstack([front[~evicted], p[None, :]])
        self._hv = None
        return True, gone

    @property
    def hypervolume(self) -> float:
        """:func:`hypervolume` of every row inserted so far, in the reference given."""
        if self._hv is None:
            if self._reference is None:
                raise ValueError("this front was built without a hypervolume reference.")
            # validates like hypervolume (objective count, reference) on an empty table first
            hypervolume(np.zeros((0, len(self._sign))), self._directions, self._reference)
            self._hv = _hypervolume(self._loss, self._reference * self._sign)
        return self._hv
