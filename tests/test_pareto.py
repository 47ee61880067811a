"""Tests for search/pareto.py against brute-force references written out below."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from search.pareto import dominates
from search.pareto import hypervolume
from search.pareto import nondominated_mask
from search.pareto import pareto_ranks
from search.pareto import to_minimization

INF = math.inf
NAN = math.nan

# ---------------------------------------------------------------------------------------------
# brute-force references: pure Python loops in the ORIGINAL directions (no negation involved)


def _better_eq(x: float, y: float, d: str) -> bool:
    return x >= y if d == "max" else x <= y


def _better(x: float, y: float, d: str) -> bool:
    return x > y if d == "max" else x < y


def _ref_dominates(a, b, dirs) -> bool:
    if any(math.isnan(v) for v in (*a, *b)):
        return False
    weak = all(_better_eq(x, y, d) for x, y, d in zip(a, b, dirs))
    return weak and any(_better(x, y, d) for x, y, d in zip(a, b, dirs))


def _ref_mask(rows, dirs) -> list[bool]:
    return [
        not any(math.isnan(v) for v in r) and not any(_ref_dominates(o, r, dirs) for o in rows)
        for r in rows
    ]


def _ref_ranks(rows, dirs) -> list[int]:
    """Repeated peeling: the front of the rows not ranked yet gets the next rank."""
    ranks = [-1] * len(rows)
    left = [i for i, r in enumerate(rows) if not any(math.isnan(v) for v in r)]
    rank = 0
    while left:
        front = [i for i in left if not any(_ref_dominates(rows[j], rows[i], dirs) for j in left)]
        for i in front:
            ranks[i] = rank
        left = [i for i in left if i not in front]
        rank += 1
    return ranks


def _ref_hypervolume(rows, dirs, ref) -> int:
    """Count unit cells [c, c + 1)^m inside the reference box and dominated by some row.

    Exact for integer coordinates. A cell is covered by row p iff, per objective, it lies between
    the reference and p: ``ref <= c and c + 1 <= p`` for "max",
    ``p <= c and c + 1 <= ref`` for "min".
    """
    rows = [r for r in rows if not any(math.isnan(v) for v in r)]
    if not rows:
        return 0
    axes = [
        range(int(min(ref[k], *(r[k] for r in rows))), int(max(ref[k], *(r[k] for r in rows))))
        for k in range(len(dirs))
    ]

    def covers(p, cell) -> bool:
        return all(
            (ref[k] <= c and c + 1 <= p[k]) if d == "max" else (p[k] <= c and c + 1 <= ref[k])
            for k, (c, d) in enumerate(zip(cell, dirs))
        )

    return sum(any(covers(p, cell) for p in rows) for cell in itertools.product(*axes))


# ---------------------------------------------------------------------------------------------
# strategies

directions_st = st.lists(st.sampled_from(["max", "min"]), min_size=1, max_size=3)


@st.composite
def int_problem(draw, max_rows: int = 9):
    """Small integer point sets: many duplicates, ties and points on/outside the reference."""
    dirs = draw(directions_st)
    m = len(dirs)
    coord = st.integers(-2, 4)
    rows = draw(st.lists(st.lists(coord, min_size=m, max_size=m), max_size=max_rows))
    ref = draw(st.lists(coord, min_size=m, max_size=m))
    return rows, dirs, ref


@st.composite
def float_table(draw, min_rows: int = 0, allow_nan: bool = False):
    dirs = draw(directions_st)
    m = len(dirs)
    coord = st.one_of(
        st.integers(-3, 3).map(float),  # ties and duplicates are likely
        st.floats(-1e6, 1e6),
        st.sampled_from([INF, -INF] + ([NAN] if allow_nan else [])),
    )
    rows = draw(st.lists(st.lists(coord, min_size=m, max_size=m), min_size=min_rows, max_size=12))
    return np.array(rows, dtype=float).reshape(len(rows), m), dirs


def _table(rows, m: int) -> np.ndarray:
    return np.array(rows, dtype=float).reshape(len(rows), m)


# ---------------------------------------------------------------------------------------------
# to_minimization and dominates


def test_to_minimization_negates_max_columns_and_copies():
    values = np.array([[0.9, 100.0, 5.0]])
    out = to_minimization(values, ["max", "min", "max"])
    np.testing.assert_array_equal(out, [[-0.9, 100.0, -5.0]])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(values, [[0.9, 100.0, 5.0]])  # input untouched
    assert to_minimization(np.empty((0, 2)), ["max", "min"]).shape == (0, 2)


def test_dominates_grid_with_infinities():
    """Every pair of a 4x4 grid over {-inf, 0, 1, +inf}, compared with the definition."""
    grid = [(x, y) for x in (-INF, 0.0, 1.0, INF) for y in (-INF, 0.0, 1.0, INF)]
    for a, b in itertools.product(grid, grid):
        expected = a[0] <= b[0] and a[1] <= b[1] and a != b
        assert dominates(a, b) is expected, (a, b)


def test_dominates_nan_and_equal_rows():
    assert not dominates([1.0, 1.0], [1.0, 1.0])
    assert not dominates([NAN, 0.0], [1.0, 1.0])
    assert not dominates([0.0, 0.0], [NAN, 1.0])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        dominates([0.0, 1.0], [0.0, 1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# mask and ranks against the brute force


@settings(max_examples=300, deadline=None)
@given(float_table(allow_nan=True))
def test_mask_and_ranks_match_brute_force(table):
    values, dirs = table
    rows = values.tolist()
    assert nondominated_mask(values, dirs).tolist() == _ref_mask(rows, dirs)
    ranks = pareto_ranks(values, dirs)
    assert ranks.dtype.kind == "i"
    assert ranks.tolist() == _ref_ranks(rows, dirs)


@pytest.mark.parametrize("seed", range(20))
def test_mask_and_ranks_match_brute_force_seeded(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 5))
    dirs = list(rng.choice(["max", "min"], size=m))
    values = rng.integers(0, 4, size=(int(rng.integers(0, 40)), m)).astype(float)
    assert nondominated_mask(values, dirs).tolist() == _ref_mask(values.tolist(), dirs)
    assert pareto_ranks(values, dirs).tolist() == _ref_ranks(values.tolist(), dirs)


def test_ranks_hand_example():
    values = [[1, 1], [2, 2], [3, 3], [1, 3], [2, 2], [NAN, 0]]
    assert pareto_ranks(values, ["min", "min"]).tolist() == [0, 1, 2, 1, 1, -1]


def test_nan_rows_are_never_optimal_and_dominate_nothing():
    # the NaN row would dominate [1, 1] if its NaN were ignored
    values = [[NAN, 0.0], [1.0, 1.0], [NAN, NAN]]
    assert nondominated_mask(values, ["min", "min"]).tolist() == [False, True, False]
    assert pareto_ranks(values, ["min", "min"]).tolist() == [-1, 0, -1]
    all_nan = [[NAN, NAN], [NAN, 1.0]]
    assert not nondominated_mask(all_nan, ["min", "max"]).any()
    assert pareto_ranks(all_nan, ["min", "max"]).tolist() == [-1, -1]


def test_duplicates_of_an_optimal_row_are_all_optimal():
    values = [[0.9, 100], [0.9, 100], [0.8, 200], [0.9, 100], [0.95, 300]]
    mask = nondominated_mask(values, ["max", "min"])
    assert mask.tolist() == [True, True, False, True, True]


def test_infinities_are_ordered_like_numbers():
    values = [[-INF, 5.0], [0.0, 0.0], [INF, INF], [INF, -INF], [-INF, 5.0]]
    assert nondominated_mask(values, ["min", "min"]).tolist() == [True, True, False, True, True]
    assert pareto_ranks(values, ["min", "min"]).tolist() == [0, 0, 1, 0, 0]
    # a "max" objective at +inf is the best possible value
    assert nondominated_mask([[INF, 9.0], [1.0, 9.0]], ["max", "min"]).tolist() == [True, False]


def test_empty_input():
    assert nondominated_mask(np.empty((0, 2)), ["max", "min"]).shape == (0,)
    assert pareto_ranks(np.empty((0, 3)), ["max", "min", "min"]).shape == (0,)
    assert hypervolume(np.empty((0, 2)), ["max", "min"], [0, 1]) == 0.0


# ---------------------------------------------------------------------------------------------
# hypervolume against exact grid counting


@settings(max_examples=300, deadline=None)
@given(int_problem())
def test_hypervolume_matches_grid_count(problem):
    rows, dirs, ref = problem
    assert hypervolume(_table(rows, len(dirs)), dirs, ref) == _ref_hypervolume(rows, dirs, ref)


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("seed", range(10))
def test_hypervolume_matches_grid_count_seeded(m, seed):
    rng = np.random.default_rng(seed)
    dirs = list(rng.choice(["max", "min"], size=m))
    values = rng.integers(-1, 6, size=(int(rng.integers(1, 25)), m))
    values = np.concatenate([values, values[:3]])  # force duplicates
    ref = rng.integers(0, 5, size=m)
    expected = _ref_hypervolume(values.tolist(), dirs, ref.tolist())
    assert hypervolume(values, dirs, ref) == expected


def test_hypervolume_2d_staircase():
    points = [[1, 3], [2, 2], [3, 1]]
    # (2-1)*(4-3) + (3-2)*(4-2) + (4-3)*(4-1)
    assert hypervolume(points, ["min", "min"], [4, 4]) == 6.0
    # same staircase seen as two "max" objectives with the reference at 0
    flipped = [[4 - x, 4 - y] for x, y in points]
    assert hypervolume(flipped, ["max", "max"], [0, 0]) == 6.0


def test_hypervolume_3d_inclusion_exclusion():
    # boxes up to ref (4, 4, 4): |A| = 32, |B| = 16, |C| = 12, |AB| = 8, |AC| = 8, |BC| = 6,
    # |ABC| = 4, so the union is 32 + 16 + 12 - 8 - 8 - 6 + 4 = 42
    points = [[0, 0, 2], [2, 2, 0], [0, 3, 1]]
    assert hypervolume(points, ["min"] * 3, [4, 4, 4]) == 42.0
    assert hypervolume([[1, 1, 1]], ["min"] * 3, [3, 3, 3]) == 8.0


def test_hypervolume_accuracy_vs_params():
    dense = 1000
    values = [
        [0.9, 100],
        [0.8, 50],
        [0.95, 400],
        [0.7, 1200],  # more parameters than the dense net: outside the box
        [0.0, 10],  # accuracy equal to the reference: contributes nothing
        [0.85, 100],  # dominated
        [NAN, 5],  # failed trial
    ]
    # params in [50, 100): 0.8; [100, 400): 0.9; [400, 1000]: 0.95
    expected = 50 * 0.8 + 300 * 0.9 + 600 * 0.95
    assert hypervolume(values, ["max", "min"], [0, dense]) == pytest.approx(expected)
    assert hypervolume(values, ["max", "min"], [0, dense]) == pytest.approx(880.0)


def test_hypervolume_ignores_nan_rows():
    values = [[1.0, 3.0, 0.0], [2.0, 1.0, 1.0]]
    with_nan = values + [[NAN, 0.0, 0.0], [-5.0, NAN, -5.0]]
    ref = [4, 4, 4]
    assert hypervolume(with_nan, ["min"] * 3, ref) == hypervolume(values, ["min"] * 3, ref)
    assert hypervolume([[NAN, NAN]], ["min", "max"], [0, 0]) == 0.0


def test_hypervolume_points_on_or_beyond_the_reference():
    assert hypervolume([[4, 1], [1, 4], [5, 0]], ["min", "min"], [4, 4]) == 0.0
    assert hypervolume([[0.0], [3.0]], ["max"], [0.0]) == 3.0
    assert hypervolume([[0.0]], ["max"], [0.0]) == 0.0


def test_hypervolume_with_infinities():
    assert hypervolume([[-INF, 1.0], [0.0, 0.0]], ["min", "min"], [2, 2]) == INF
    assert hypervolume([[-INF, 1.0], [-INF, 1.0]], ["min", "min"], [2, 2]) == INF  # no NaN
    assert hypervolume([[INF, 1.0, 1.0]], ["max", "min", "min"], [0, 2, 2]) == INF
    assert hypervolume([[-INF, 0, 0], [-INF, 0, 0]], ["min"] * 3, [1, 1, 1]) == INF
    # +inf in a "min" objective never beats a finite reference
    assert hypervolume([[INF, 0.0], [1.0, 1.0]], ["min", "min"], [2, 2]) == 1.0


# ---------------------------------------------------------------------------------------------
# properties


@settings(max_examples=200, deadline=None)
@given(int_problem(), st.data())
def test_adding_a_dominated_point_keeps_the_hypervolume(problem, data):
    rows, dirs, ref = problem
    if not rows:
        rows = [ref]
    base = rows[data.draw(st.integers(0, len(rows) - 1))]
    shift = data.draw(st.lists(st.integers(0, 3), min_size=len(dirs), max_size=len(dirs)))
    worse = [x - s if d == "max" else x + s for x, s, d in zip(base, shift, dirs)]
    m = len(dirs)
    assert hypervolume(_table(rows + [worse], m), dirs, ref) == hypervolume(
        _table(rows, m), dirs, ref
    )


@settings(max_examples=200, deadline=None)
@given(float_table(allow_nan=True), st.data())
def test_hypervolume_is_monotone(table, data):
    values, dirs = table
    m = len(dirs)
    finite = st.floats(-1e3, 1e3)
    ref = data.draw(st.lists(finite, min_size=m, max_size=m))
    extra = data.draw(st.lists(finite, min_size=m, max_size=m))
    before = hypervolume(values, dirs, ref)
    after = hypervolume(np.vstack([values, [extra]]), dirs, ref)
    assert not math.isnan(before)
    assert after >= before * (1 - 1e-12)


@settings(max_examples=200, deadline=None)
@given(float_table(min_rows=1))
def test_front_is_nonempty_and_covers_every_other_row(table):
    values, dirs = table
    mask = nondominated_mask(values, dirs)
    assert mask.any()
    loss = to_minimization(values, dirs)
    for row in loss[~mask]:
        assert any(dominates(front_row, row) for front_row in loss[mask])
    np.testing.assert_array_equal(pareto_ranks(values, dirs) == 0, mask)


@settings(max_examples=200, deadline=None)
@given(float_table(allow_nan=True), st.randoms(use_true_random=False))
def test_mask_and_hypervolume_are_permutation_invariant(table, rnd):
    values, dirs = table
    perm = list(range(len(values)))
    rnd.shuffle(perm)
    np.testing.assert_array_equal(
        nondominated_mask(values[perm], dirs), nondominated_mask(values, dirs)[perm]
    )
    np.testing.assert_array_equal(
        pareto_ranks(values[perm], dirs), pareto_ranks(values, dirs)[perm]
    )
    ref = [0.0] * len(dirs)
    assert hypervolume(values[perm], dirs, ref) == pytest.approx(hypervolume(values, dirs, ref))


def test_3d_with_constant_third_objective_is_area_times_thickness():
    rng = np.random.default_rng(0)
    pts = rng.random((300, 2))
    pts3 = np.column_stack([pts, np.full(300, 0.25)])
    area = hypervolume(pts, ["min", "min"], [1, 1])
    assert hypervolume(pts3, ["min"] * 3, [1, 1, 1]) == pytest.approx(0.75 * area)


def test_large_front_is_fast_enough():
    # 1500 mutually non-dominated points on the unit sphere: the O(n^2 log n) worst case
    rng = np.random.default_rng(1)
    pts = np.abs(rng.normal(size=(1500, 3)))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    assert nondominated_mask(pts, ["max"] * 3).all()
    volume = hypervolume(pts, ["max"] * 3, [0, 0, 0])
    assert 0.9 * math.pi / 6 < volume < math.pi / 6  # an eighth of the unit ball, from below


# ---------------------------------------------------------------------------------------------
# validation


def test_bad_direction_string_is_named():
    with pytest.raises(ValueError, match="maximize"):
        nondominated_mask([[1.0, 2.0]], ["maximize", "min"])
    with pytest.raises(ValueError, match="'MIN'"):
        to_minimization([[1.0]], ["MIN"])
    with pytest.raises(ValueError, match="'max'"):
        to_minimization([[1.0, 2.0, 3.0]], "max")  # a bare string is not a sequence of directions


def test_wrong_number_of_directions():
    with pytest.raises(ValueError, match=r"1 directions.*m=2"):
        pareto_ranks([[1.0, 2.0]], ["min"])
    with pytest.raises(ValueError, match=r"3 directions.*m=0"):
        to_minimization(np.empty((0, 0)), ["min", "min", "min"])


@pytest.mark.parametrize("bad", [[1.0, 2.0], 3.0, [[[1.0]]], []])
def test_values_must_be_2d(bad):
    shape = np.asarray(bad).shape
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        nondominated_mask(bad, ["min", "min"])


def test_hypervolume_objective_count_and_reference():
    with pytest.raises(ValueError, match="m=4"):
        hypervolume([[1, 2, 3, 4]], ["min"] * 4, [5] * 4)
    with pytest.raises(ValueError, match="m=0"):
        hypervolume(np.empty((2, 0)), [], [])
    with pytest.raises(ValueError, match=r"\[1, 2, 3\]"):
        hypervolume([[0, 0]], ["min", "min"], [1, 2, 3])
    with pytest.raises(ValueError, match="nan"):
        hypervolume([[0, 0]], ["min", "min"], [1, NAN])
