"""Affinity-propagation tying (GrOWL Eq. 10) on the hand-checked toy of algorithms.md §3.5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.tying import LayerTying, cluster_rows, find_ties, similarity, tie_

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
    labels, converged = cluster_rows(TOY, preference)
    assert converged
    assert _partition(labels) == {frozenset(s) for s in expected}


def test_zero_rows_are_not_clustered():
    W = torch.cat([TOY, torch.zeros(2, 3, dtype=torch.float64)])
    labels, _ = cluster_rows(W, 0.6)
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
