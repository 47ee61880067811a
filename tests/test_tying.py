"""Affinity-propagation tying (GrOWL Eq. 10) on the hand-checked toy of algorithms.md §3.5."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from trainables.config import ConfigError, TyingConfig
from trainables.tying import LayerTying, cluster_rows, find_ties, scaled_convergence_iter, similarity, tie_

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
    """k unit rows at equal angles plus the same rows scaled by 0.9: symmetric, near-tied rows on
    which affinity propagation's messages oscillate at damping 0.5 (no convergence in 5000
    iterations) but settle once damped more."""
    a = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    W = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    return torch.cat([W, 0.9 * W])


def test_oscillating_case_fails_at_half_damping_and_converges_on_retry():
    W = _polygon(6)
    no_retry = cluster_rows(W, 0.8, 0.5, max_iter=200, retries=0)
    assert not no_retry.converged and no_retry.iterations == 200
    assert _partition(no_retry.labels) == {frozenset([i]) for i in range(12)}  # untied: one row each
    # retries: damping 0.5 -> 0.75 (still oscillates here) -> 0.875, which converges
    c = cluster_rows(W, 0.8, 0.5, max_iter=200, retries=2)
    assert c.converged and c.damping == 0.875 and 0 < c.iterations <= 800
    # clusters never mix directions, and most directions tie their row with its scaled copy
    clusters = _partition(c.labels)
    assert all(s <= {min(s) % 6, min(s) % 6 + 6} for s in clusters)
    assert sum(len(s) == 2 for s in clusters) >= 4
    again = cluster_rows(W, 0.8, 0.5, max_iter=200, retries=2)  # deterministic
    assert np.array_equal(again.labels, c.labels) and again.iterations == c.iterations


def test_convergence_iter_scales_with_damping():
    assert [scaled_convergence_iter(15, d) for d in (0.5, 0.75, 0.9, 0.95)] == [15, 30, 75, 150]
    # unscaled, damping 0.9 stops in a transient and merges every row of the toy
    from trainables.tying import _affinity_propagation
    labels, _ = _affinity_propagation(similarity(TOY), 0.8, 0.9, 1000, 15, 0)
    assert _partition(labels) == {frozenset(range(5))}


def test_default_damping_converges_at_first_try():
    c = cluster_rows(_polygon(4), 0.6)  # 0.5 does not converge on this one either
    assert not cluster_rows(_polygon(4), 0.6, 0.5, retries=0).converged
    assert c.converged and c.damping == TyingConfig().damping == 0.9


def test_find_ties_records_convergence_and_warns_naming_the_layer():
    lin = torch.nn.Linear(12, 2, dtype=torch.float64)  # exact symmetry: float32 rounding breaks it
    with torch.no_grad():
        lin.weight.copy_(_polygon(6).t())
    with pytest.warns(UserWarning, match="did not converge for layer 'fc9'"):
        [bad] = find_ties([("fc9", lin, "input")], preference=0.8, damping=0.5, max_cluster_ratio=0.95,
                          max_iter=200, retries=0)
    assert not bad.converged and not bad.enabled
    assert bad.summary()["converged"] is False and bad.summary()["damping"] == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [good] = find_ties([("fc9", lin, "input")], preference=0.8, damping=0.5, max_cluster_ratio=0.95,
                           max_iter=200, retries=2)
    assert good.converged and good.enabled and good.n_clusters < 12
    assert good.summary()["converged"] is True and good.summary()["damping"] == 0.875
    restored = LayerTying.from_state(good.to_state())
    assert restored.summary() == good.summary()


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
