"""Parameter tying, GrOWL's second stage (Zhang et al. 2018, §3.3, Eq. 10-11, App. B).

After training with GrOWL, correlated rows of a layer have (nearly) equal norms and directions.
The non-zero rows of each regularized layer are clustered by affinity propagation (scikit-learn,
``affinity="precomputed"``) on the similarity

    S(i, j) = <w_i, w_j> / max(||w_i||^2, ||w_j||^2)        (Eq. 10, in [-1, 1])

with the AP ``preference`` on the diagonal (higher -> more clusters -> less tying). Retraining
then keeps each cluster's rows equal to their mean after every optimizer step (or every epoch),
which is the same as training one shared row per cluster (Eq. 11). A layer where clustering did
not converge, or where clusters/rows exceeds ``max_cluster_ratio``, is left untied (the official
VGG code's ``set_param_share`` rule), and that is recorded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import AffinityPropagation
from sklearn.exceptions import ConvergenceWarning

from .groups import conv_groups, from_groups, to_groups

__all__ = ["similarity", "cluster_rows", "LayerTying", "find_ties", "tie_", "ZERO_ROW_NORM"]

# Rows with a norm at or below float32's epsilon count as pruned (the GrOWL MNIST code's rule).
ZERO_ROW_NORM = float(np.finfo(np.float32).eps)


def similarity(G: torch.Tensor) -> np.ndarray:
    """GrOWL Eq. 10 between all pairs of rows of ``G`` (rows must be non-zero), float64."""
    X = G.detach().to(torch.float64).cpu().numpy()
    sq = np.einsum("ij,ij->i", X, X)
    return (X @ X.T) / np.maximum.outer(sq, sq)


def cluster_rows(G: torch.Tensor, preference: float, damping: float = 0.5,
                 random_state: int = 0) -> tuple[np.ndarray, bool]:
    """Cluster labels per row (``-1`` for zero rows) and whether affinity propagation converged."""
    norms = torch.linalg.vector_norm(G.detach(), dim=1).cpu().numpy()
    alive = np.flatnonzero(norms > ZERO_ROW_NORM)
    labels = np.full(G.shape[0], -1, dtype=np.int64)
    if alive.size <= 1:
        labels[alive] = 0
        return labels, True
    ap = AffinityPropagation(affinity="precomputed", preference=preference, damping=damping,
                             random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            ap.fit(similarity(G[torch.as_tensor(alive, device=G.device)]))
            converged = bool((ap.labels_ >= 0).all())
        except ConvergenceWarning:
            converged = False
    # without convergence every live row is its own cluster (no tying)
    labels[alive] = ap.labels_ if converged else np.arange(alive.size)
    return labels, converged


@dataclass
class LayerTying:
    """The tying found for one layer; ``labels[i]`` is row i's cluster (``-1``: pruned row)."""

    name: str
    grouping: str
    labels: np.ndarray
    converged: bool
    enabled: bool

    @property
    def n_rows(self) -> int:
        return int(self.labels.size)

    @property
    def n_nonzero(self) -> int:
        return int((self.labels >= 0).sum())

    @property
    def n_clusters(self) -> int:
        return int(np.unique(self.labels[self.labels >= 0]).size)

    def summary(self) -> dict:
        return {"name": self.name, "rows": self.n_rows, "nonzero_rows": self.n_nonzero,
                "clusters": self.n_clusters, "converged": self.converged, "tied": self.enabled}

    def to_state(self) -> dict:
        return {"name": self.name, "grouping": self.grouping, "labels": self.labels.tolist(),
                "converged": self.converged, "enabled": self.enabled}

    @classmethod
    def from_state(cls, state: dict) -> LayerTying:
        return cls(state["name"], state["grouping"], np.asarray(state["labels"], dtype=np.int64),
                   bool(state["converged"]), bool(state["enabled"]))


def find_ties(layers: list[tuple[str, torch.nn.Module, str]], *, preference: float, damping: float,
              max_cluster_ratio: float) -> list[LayerTying]:
    """Cluster the rows of each ``(name, module, grouping)`` layer."""
    found = []
    for name, module, grouping in layers:
        labels, converged = cluster_rows(to_groups(module.weight.detach(), grouping, conv_groups(module)), preference, damping)
        tying = LayerTying(name, grouping, labels, converged, enabled=False)
        ratio = tying.n_clusters / max(tying.n_nonzero, 1)
        tying.enabled = converged and tying.n_nonzero > 0 and ratio <= max_cluster_ratio
        found.append(tying)
    return found


@torch.no_grad()
def tie_(module: torch.nn.Module, tying: LayerTying) -> None:
    """Set every row of each cluster to the cluster's mean row, in place (pruned rows stay)."""
    if not tying.enabled:
        return
    W = module.weight
    G = to_groups(W.detach(), tying.grouping, conv_groups(module))
    labels = torch.as_tensor(tying.labels, device=W.device)
    rows = torch.nonzero(labels >= 0).squeeze(1)
    lab = labels[rows]
    k = int(lab.max()) + 1
    sums = torch.zeros(k, G.shape[1], dtype=G.dtype, device=G.device).index_add_(0, lab, G[rows])
    counts = torch.bincount(lab, minlength=k).to(G.dtype).unsqueeze(1)
    new = G.clone()
    new[rows] = (sums / counts)[lab]
    W.copy_(from_groups(new, W.shape, tying.grouping, conv_groups(module)))
