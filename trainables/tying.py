"""Parameter tying, GrOWL's second stage (Zhang et al. 2018, §3.3, Eq. 10-11, App. B).

After training with GrOWL, correlated rows of a layer have (nearly) equal norms and directions.
The non-zero rows of each regularized layer are clustered by affinity propagation (scikit-learn,
``affinity="precomputed"``) on the similarity

    S(i, j) = <w_i, w_j> / max(||w_i||^2, ||w_j||^2)        (Eq. 10, in [-1, 1])

with the AP ``preference`` on the diagonal (higher -> more clusters -> less tying). Retraining
then keeps each cluster's rows equal to their mean after every optimizer step (or every epoch),
which is the same as training one shared row per cluster (Eq. 11). A layer where clusters/rows
exceeds ``max_cluster_ratio`` is left untied (the official VGG code's ``set_param_share`` rule), as is
one whose clustering did not converge (only possible with ``fallback="none"``); both are recorded.

**Components.** Affinity propagation maximises the net similarity sum_i S(i, c_i), where c_i is
row i's exemplar and S(k, k) = ``preference``. In an optimum, every row that is not an exemplar has
S(i, c_i) >= preference, else making it its own exemplar would do better (no row has chosen it).
So the objective decomposes over the connected components of the graph joining rows whose
similarity exceeds the preference: no row joins an exemplar outside its component. Each component
is clustered on its own: one row stays alone, two rows form one cluster (p + S > 2p), larger
components go to affinity propagation. On trained MNIST layers most rows have no neighbour above
0.6 (the rows are nearly orthogonal), and the components are far easier than the whole layer.

**Convergence.** GrOWL makes rows (nearly) equal, and on such degenerate similarities affinity
propagation's messages oscillate at scikit-learn's default damping 0.5: it then warns
``ConvergenceWarning`` and returns no exemplars (labels -1, ``n_iter_ == max_iter``), so nothing
is tied. This happened in 12 of 19 GrOWL / group-lasso runs of the MNIST search. Hence the
default damping 0.9 and a retry: when an attempt does not converge, the next one halves
``1 - damping`` (0.9 -> 0.95 -> 0.975) and doubles ``max_iter`` (smaller steps need more of them),
``retries`` times. Each layer records whether it converged, the damping that did it and the
iterations.

**Fallback.** On some trained layers, affinity propagation oscillates on one large component at
every damping (``bench/tying_probe.py``: components of 95 and 283 rows). With ``fallback=
"complete_linkage"`` (the default) such a component is clustered by complete-linkage agglomerative
clustering at distance 1 - preference, so every pair of rows in a cluster has similarity above the
preference. This is a stricter grouping than affinity propagation's, which only asks each row to
be that similar to its exemplar. Each layer records how many rows the fallback clustered
(``fallback_rows``). With ``fallback="none"`` the layer is left untied with a warning naming it.

Damping also slows the messages down: each update moves ``1 - damping`` of the way, so at 0.9 the
exemplar set can sit still for scikit-learn's 15 iterations in the middle of a transient and be
taken for converged (on the toy of algorithms.md §3.5 that merges all five rows at preference
0.8). ``convergence_iter`` is therefore given at damping 0.5 and scaled by the messages' time
constant, ``ceil(convergence_iter * 0.5 / (1 - damping))``: 15 -> 75 at 0.9, which gives the
clusters of damping 0.5 wherever 0.5 converges.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import AffinityPropagation, AgglomerativeClustering
from sklearn.exceptions import ConvergenceWarning

from .groups import conv_groups, from_groups, to_groups
from .prox import ZERO_ROW_NORM  # rows at or below it are pruned: one definition, in prox

__all__ = ["similarity", "cluster_rows", "components", "complete_linkage", "FALLBACKS", "Clustering", "LayerTying",
           "find_ties", "tie_", "scaled_convergence_iter", "ZERO_ROW_NORM"]

FALLBACKS = ("complete_linkage", "none")  # tying.fallback (trainables.config.TyingConfig; a test checks)



def similarity(G: torch.Tensor) -> np.ndarray:
    """GrOWL Eq. 10 between all pairs of rows of ``G`` (rows must be non-zero), float64."""
    X = G.detach().to(torch.float64).cpu().numpy()
    sq = np.einsum("ij,ij->i", X, X)
    return (X @ X.T) / np.maximum.outer(sq, sq)


@dataclass(frozen=True)
class Clustering:
    """Affinity propagation's answer for one layer."""

    labels: np.ndarray  # cluster per row, -1 for zero rows
    converged: bool
    damping: float  # the highest damping any component needed (its last attempt)
    iterations: int  # the most iterations any component's last attempt took
    fallback_rows: int = 0  # rows of components clustered by complete linkage (AP did not converge)


def cluster_rows(G: torch.Tensor, preference: float, damping: float = 0.9, *, max_iter: int = 1000,
                 convergence_iter: int = 15, retries: int = 2, fallback: str = "complete_linkage",
                 random_state: int = 0) -> Clustering:
    """Cluster the non-zero rows of ``G`` (module docstring: components, damping, retries, fallback).

    With ``fallback="none"``, a component where affinity propagation does not converge leaves the
    layer unconverged and every live row its own cluster (no tying)."""
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    norms = torch.linalg.vector_norm(G.detach(), dim=1).cpu().numpy()
    alive = np.flatnonzero(norms > ZERO_ROW_NORM)
    labels = np.full(G.shape[0], -1, dtype=np.int64)
    if alive.size <= 1:
        labels[alive] = 0
        return Clustering(labels, True, damping, 0)
    S = similarity(G[torch.as_tensor(alive, device=G.device)])
    found = np.empty(alive.size, dtype=np.int64)
    converged, top_damping, iterations, fallback_rows, next_label = True, damping, 0, 0, 0
    for members in components(S, preference):
        if members.size <= 2:  # one row, or two rows above the preference: AP's answer is known
            local = np.zeros(members.size, dtype=np.int64)
        else:
            sub = S[np.ix_(members, members)]
            for attempt in range(retries + 1):
                d, n_iter = 1 - (1 - damping) / 2**attempt, max_iter * 2**attempt
                ap = _affinity_propagation(sub, preference, d, n_iter,
                                           scaled_convergence_iter(convergence_iter, d), random_state)
                if ap is not None:
                    break
            top_damping, iterations = max(top_damping, d), max(iterations, ap[1] if ap is not None else n_iter)
            if ap is not None:
                local = np.unique(ap[0], return_inverse=True)[1]
            elif fallback == "complete_linkage":
                local, fallback_rows = complete_linkage(sub, preference), fallback_rows + members.size
            else:
                converged, local = False, np.arange(members.size)
        found[members] = next_label + local
        next_label += int(local.max()) + 1
    labels[alive] = found if converged else np.arange(alive.size)
    return Clustering(labels, converged, top_damping, iterations, fallback_rows)


def complete_linkage(S: np.ndarray, preference: float) -> np.ndarray:
    """Clusters in which every pair of rows has similarity above ``preference`` (scikit-learn's
    complete-linkage agglomerative clustering on ``1 - S``, merging below ``1 - preference``)."""
    model = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="complete",
                                    distance_threshold=1.0 - preference)
    return np.unique(model.fit_predict(np.clip(1.0 - S, 0.0, None)), return_inverse=True)[1]


def components(S: np.ndarray, preference: float) -> list[np.ndarray]:
    """The connected components of the graph joining rows i != j with ``S[i, j] > preference``
    (module docstring: affinity propagation's objective decomposes over them)."""
    adjacency = S > preference
    np.fill_diagonal(adjacency, False)
    _, label = connected_components(csr_matrix(adjacency), directed=False)
    order = np.argsort(label, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(label[order])) + 1)


def scaled_convergence_iter(convergence_iter: int, damping: float) -> int:
    """``convergence_iter`` (given at damping 0.5) at ``damping`` (module docstring)."""
    return math.ceil(convergence_iter * 0.5 / (1 - damping) - 1e-9)


def _affinity_propagation(S: np.ndarray, preference: float, damping: float, max_iter: int,
                          convergence_iter: int, random_state: int) -> tuple[np.ndarray, int] | None:
    """(labels, iterations), or None when scikit-learn reports no convergence: it warns
    ``ConvergenceWarning`` (labels -1, or degenerate ones when some exemplars exist)."""
    ap = AffinityPropagation(affinity="precomputed", preference=preference, damping=damping,
                             max_iter=max_iter, convergence_iter=convergence_iter, random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            ap.fit(S)
        except ConvergenceWarning:
            return None
    return (ap.labels_, int(ap.n_iter_)) if (ap.labels_ >= 0).all() else None


@dataclass
class LayerTying:
    """The tying found for one layer; ``labels[i]`` is row i's cluster (``-1``: pruned row)."""

    name: str
    grouping: str
    labels: np.ndarray
    converged: bool
    enabled: bool
    damping: float | None = None  # the damping that converged (or the last one tried)
    iterations: int = 0
    fallback_rows: int = 0  # rows clustered by complete linkage where affinity propagation did not converge

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
                "clusters": self.n_clusters, "converged": self.converged, "tied": self.enabled,
                "damping": self.damping, "iterations": self.iterations, "fallback_rows": self.fallback_rows}

    def to_state(self) -> dict:
        return {"name": self.name, "grouping": self.grouping, "labels": self.labels.tolist(),
                "converged": self.converged, "enabled": self.enabled, "damping": self.damping,
                "iterations": self.iterations, "fallback_rows": self.fallback_rows}

    @classmethod
    def from_state(cls, state: dict) -> LayerTying:
        return cls(state["name"], state["grouping"], np.asarray(state["labels"], dtype=np.int64),
                   bool(state["converged"]), bool(state["enabled"]), state.get("damping"),
                   int(state.get("iterations", 0)), int(state.get("fallback_rows", 0)))


def find_ties(layers: list[tuple[str, torch.nn.Module, str]], *, preference: float, damping: float,
              max_cluster_ratio: float, max_iter: int = 1000, convergence_iter: int = 15,
              retries: int = 2, fallback: str = "complete_linkage") -> list[LayerTying]:
    """Cluster the rows of each ``(name, module, grouping)`` layer; warn for each layer whose
    clustering did not converge (it is left untied: only with ``fallback="none"``)."""
    found = []
    for name, module, grouping in layers:
        c = cluster_rows(to_groups(module.weight.detach(), grouping, conv_groups(module)), preference, damping,
                         max_iter=max_iter, convergence_iter=convergence_iter, retries=retries, fallback=fallback)
        if not c.converged:
            warnings.warn(f"tying: affinity propagation did not converge for layer {name!r} (last try: "
                          f"damping={c.damping:g}, max_iter={c.iterations}); the layer is left untied. "
                          "Set tying.fallback: complete_linkage, or raise tying.damping, tying.max_iter or "
                          "tying.retries.", stacklevel=2)
        tying = LayerTying(name, grouping, c.labels, c.converged, enabled=False, damping=c.damping,
                           iterations=c.iterations, fallback_rows=c.fallback_rows)
        ratio = tying.n_clusters / max(tying.n_nonzero, 1)
        tying.enabled = c.converged and tying.n_nonzero > 0 and ratio <= max_cluster_ratio
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
