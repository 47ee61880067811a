"""Affinity-propagation tying (GrOWL Eq. 10) on the hand-checked toy of algorithms.md §3.5."""

from __future__ import annotations

import itertools
import math
import typing
import warnings

import numpy as np
import pytest
import torch

from trainables.config import ConfigError, TyingConfig
from trainables.tying import (FALLBACKS, LayerTying, cluster_rows, complete_linkage, components, find_ties,
                              scaled_convergence_iter, similarity, tie_)

TOY = torch.tensor([[1, 0, 0], [0.9, 0.3, 0], [0.75, 0, 0.5], [0, 1, 0], [0.2, 0.9, 0.1]],
                   dtype=torch.float64)


def _partition(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == k).tolist()) for k in np.unique(labels[labels >= 0])}


def test_similarity_matches_eq10_by_hand():
    S = similarity(TOY)
    assert S[0, 1] == pytest.approx(0.9 / max(1.0, 0.9**2 + 0.3**2))
    assert S[0, 2] == pytest.approx(0.75 / max(1.0, 0.75**2 + 0.5**2))
    assert S[3, 4] == pytest.approx(0.9 / max(1.0, 0.2**2 + 0.9**2 + 0.1**2))
    np.testing.assert_allclose(S, S.T)
    np.testing.assert_allclose(np.diag(S), 1.0)


@pytest.mark.parametrize("preference, expected", [
    (0.6, [{0, 1, 2}, {3, 4}]),
    (0.8, [{0, 1}, {2}, {3, 4}]),
    (0.9, [{0}, {1}, {2}, {3}, {4}]),
])
def test_affinity_propagation_on_the_toy(preference, expected):
    for damping in (0.5, 0.9):  # the toy converges at either damping, to the same clusters
        c = cluster_rows(TOY, preference, damping)
        assert c.converged and c.damping == damping
        assert _partition(c.labels) == {frozenset(s) for s in expected}


def test_zero_rows_are_not_clustered():
    W = torch.cat([TOY, torch.zeros(2, 3, dtype=torch.float64)])
    labels = cluster_rows(W, 0.6).labels
    assert (labels[5:] == -1).all() and (labels[:5] >= 0).all()


def test_tie_sets_cluster_rows_to_their_mean():
    lin = torch.nn.Linear(5, 3)  # input grouping: rows of W.t()
    with torch.no_grad():
        lin.weight.copy_(TOY.t().float())
    tying = LayerTying("x", "input", np.array([0, 0, 1, -1, 1]), converged=True, enabled=True)
    tie_(lin, tying)
    G = lin.weight.detach().t()
    mean01 = TOY[[0, 1]].mean(0).float()
    torch.testing.assert_close(G[0], mean01)
    torch.testing.assert_close(G[1], mean01)
    torch.testing.assert_close(G[2], G[4])
    torch.testing.assert_close(G[3], TOY[3].float())  # a row outside any cluster is untouched


def test_find_ties_disables_layers_with_too_many_clusters():
    lin = torch.nn.Linear(5, 3)
    with torch.no_grad():
        lin.weight.copy_(TOY.t().float())
    [few] = find_ties([("a", lin, "input")], preference=0.6, damping=0.5, max_cluster_ratio=0.95)
    [many] = find_ties([("a", lin, "input")], preference=0.9, damping=0.5, max_cluster_ratio=0.95)
    assert few.enabled and few.n_clusters == 2
    assert not many.enabled and many.n_clusters == 5  # 5/5 > 0.95: nothing to tie
    assert LayerTying.from_state(few.to_state()).summary() == few.summary()


def _polygon(k: int) -> torch.Tensor:
    """k unit rows at equal angles plus the same rows scaled by 0.9: symmetric, near-tied rows. At a
    preference below cos(2 pi / k) the rows form one connected component, on which affinity
    propagation's messages oscillate at damping 0.5 but settle once damped more."""
    a = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    W = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    return torch.cat([W, 0.9 * W])


def test_oscillating_case_fails_at_half_damping_and_converges_on_retry():
    W = _polygon(6)  # preference 0.3 < cos(60 deg): one component of 12 rows
    assert [len(c) for c in components(similarity(W), 0.3)] == [12]
    no_retry = cluster_rows(W, 0.3, 0.5, max_iter=200, retries=0, fallback="none")
    assert not no_retry.converged and no_retry.iterations == 200
    assert _partition(no_retry.labels) == {frozenset([i]) for i in range(12)}  # untied: one row each
    # retries: damping 0.5 -> 0.75, which converges: each direction tied with its scaled copy
    c = cluster_rows(W, 0.3, 0.5, max_iter=200, retries=2, fallback="none")
    assert c.converged and c.damping == 0.75 and 0 < c.iterations <= 400 and c.fallback_rows == 0
    assert _partition(c.labels) == {frozenset([i, i + 6]) for i in range(6)}
    again = cluster_rows(W, 0.3, 0.5, max_iter=200, retries=2, fallback="none")  # deterministic
    assert np.array_equal(again.labels, c.labels) and again.iterations == c.iterations


def test_rows_with_no_neighbour_above_the_preference_need_no_affinity_propagation():
    """At preference 0.8 the hexagon's components are its 6 (row, scaled copy) pairs: solved without
    affinity propagation, which oscillates on the whole layer at damping 0.5."""
    from trainables.tying import _affinity_propagation
    W = _polygon(6)
    assert _affinity_propagation(similarity(W), 0.8, 0.5, 200, 15, 0) is None
    c = cluster_rows(W, 0.8, 0.5, max_iter=200, retries=0, fallback="none")
    assert c.converged and c.iterations == 0
    assert _partition(c.labels) == {frozenset([i, i + 6]) for i in range(6)}


def _net_similarity(S: np.ndarray, exemplars: tuple[int, ...], preference: float) -> float:
    """Affinity propagation's objective for one exemplar set: every other row joins its most
    similar exemplar."""
    others = [i for i in range(len(S)) if i not in exemplars]
    return preference * len(exemplars) + sum(S[i, list(exemplars)].max() for i in others)


def _best(S: np.ndarray, preference: float) -> float:
    n = len(S)
    return max(_net_similarity(S, e, preference) for k in range(1, n + 1)
               for e in itertools.combinations(range(n), k))


@pytest.mark.parametrize("seed", range(12))
def test_the_objective_decomposes_over_components_by_brute_force(seed):
    """The optimum of affinity propagation's objective over all rows equals the sum of the optima
    of the components (the module docstring's argument), on random similarities of 7 rows."""
    g = np.random.default_rng(seed)
    A = g.uniform(-1, 1, (7, 7))
    S = (A + A.T) / 2
    np.fill_diagonal(S, 1.0)
    preference = float(g.uniform(0.0, 0.6))
    parts = components(S, preference)
    assert sorted(np.concatenate(parts).tolist()) == list(range(7))
    for a, b in itertools.combinations(parts, 2):  # no pair across components is above the preference
        assert (S[np.ix_(a, b)] <= preference).all()
    whole = _best(S, preference)
    assert whole == pytest.approx(sum(_best(S[np.ix_(p, p)], preference) for p in parts))


def test_default_damping_converges_at_first_try():
    c = cluster_rows(_polygon(5), 0.0)  # 0.5 does not converge on this one
    assert not cluster_rows(_polygon(5), 0.0, 0.5, retries=0, fallback="none").converged
    assert c.converged and c.damping == TyingConfig().damping == 0.9 and c.fallback_rows == 0


def test_complete_linkage_fallback_where_affinity_propagation_does_not_converge():
    W = _polygon(6)
    c = cluster_rows(W, 0.3, 0.5, max_iter=200, retries=0)  # the default fallback
    assert c.converged and c.fallback_rows == 12
    S = similarity(W)
    clusters = _partition(c.labels)
    assert len(clusters) < 12
    for members in clusters:  # every pair inside a cluster is above the preference
        idx = sorted(members)
        assert (S[np.ix_(idx, idx)] > 0.3).all()
    g = np.random.default_rng(0)  # the same guarantee on random similarities
    A = g.uniform(-1, 1, (30, 30))
    R = (A + A.T) / 2
    np.fill_diagonal(R, 1.0)
    labels = complete_linkage(R, 0.2)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        assert (R[np.ix_(idx, idx)] > 0.2).all()
    assert len(np.unique(labels)) < 30
    with pytest.raises(ValueError, match="fallback"):
        cluster_rows(W, 0.3, fallback="kmeans")
    assert typing.get_args(TyingConfig.model_fields["fallback"].annotation) == FALLBACKS  # one list of names


def test_find_ties_records_convergence_and_warns_naming_the_layer():
    lin = torch.nn.Linear(12, 2, dtype=torch.float64)  # exact symmetry: float32 rounding breaks it
    with torch.no_grad():
        lin.weight.copy_(_polygon(6).t())
    with pytest.warns(UserWarning, match="did not converge for layer 'fc9'"):
        [bad] = find_ties([("fc9", lin, "input")], preference=0.3, damping=0.5, max_cluster_ratio=0.95,
                          max_iter=200, retries=0, fallback="none")
    assert not bad.converged and not bad.enabled
    assert bad.summary()["converged"] is False and bad.summary()["damping"] == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [good] = find_ties([("fc9", lin, "input")], preference=0.3, damping=0.5, max_cluster_ratio=0.95,
                           max_iter=200, retries=2, fallback="none")
        [fell_back] = find_ties([("fc9", lin, "input")], preference=0.3, damping=0.5, max_cluster_ratio=0.95,
                                max_iter=200, retries=0)
    assert good.converged and good.enabled and good.n_clusters < 12
    assert good.summary()["converged"] is True and good.summary()["damping"] == 0.75
    assert fell_back.enabled and fell_back.summary()["fallback_rows"] == 12 and good.summary()["fallback_rows"] == 0
    for t in (good, fell_back):
        assert LayerTying.from_state(t.to_state()).summary() == t.summary()


@pytest.mark.parametrize("tying, field", [
    ({"max_iter": 0}, "max_iter"),
    ({"convergence_iter": 0}, "convergence_iter"),
    ({"max_iter": 10, "convergence_iter": 20}, "convergence_iter"),
    ({"max_iter": 75, "convergence_iter": 15, "damping": 0.9}, "convergence_iter"),  # 75 at damping 0.9
    ({"retries": -1}, "retries"),
    ({"damping": 1.0}, "damping"),
])
def test_tying_config_rejects_bad_convergence_settings(tying, field):
    with pytest.raises((ConfigError, ValueError), match=field):
        TyingConfig.model_validate(tying)
