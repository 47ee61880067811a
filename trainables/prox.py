"""Proximal operators of the structured-sparsity penalties.

Every function here is pure: tensors in, a new tensor out, the input never modified. A 2-D
tensor is read as a matrix of groups, one group per row (``trainables.groups`` turns a layer's
weight into such a matrix and back). All functions work for float32 and float64 on any device;
every division by a norm is guarded, so an all-zero group stays exactly zero and never turns NaN
(the failure of the official CGES code, ``../shared/reference/algorithms.md`` §2.2).

The proximal operator of a penalty ``Omega`` with step ``t`` is

    prox_{t Omega}(v) = argmin_x  1/2 ||x - v||^2 + t Omega(x).

References: Bogdan et al. 2015 (SLOPE, Alg. 4); Zeng & Figueiredo 2014 (OWL); Zhang et al. ICLR
2018 (GrOWL, Eq. 8-9); Yoon & Hwang ICML 2017 (CGES) and its official code; Lin et al. 2024
(exact exclusive-lasso prox, ``prox_l12norm.m``).

**Exact zeros.** Every operator ends with a flush (``flush_subnormals_``) that sets to exactly 0.0

- every entry with ``|x| < FLUSH_BELOW`` = float32's smallest *normal* number (1.2e-38), and
- every row (group) whose l2 norm is ``<= ZERO_ROW_NORM`` = float32's epsilon (1.2e-7)
  (the group operators only; the element-wise ``prox_l1`` and ``prox_owl`` have no groups).

Why: a weight that gets no gradient but is multiplied by a factor below 1 every step (the entries
of a dead unit inside a live group under a group prox, a lone survivor under the exclusive
threshold, anything under the l2 prox) decays geometrically and never reaches zero on its own.
It ends as a float32 subnormal (stuck at +-1.4e-45, where rounding returns the same number), is
counted as non-zero and unique, and makes CPU arithmetic several times slower. Both thresholds are
absolute and float32-based because the networks train and are stored in float32 (float64 inputs
are flushed at the same points, so both dtypes give the same zeros):

- the entry threshold removes exactly the subnormals, so on every normal float32 the operators
  stay the exact prox;
- the row threshold is the project's one definition of a pruned group, shared by
  ``regularizer.mask_pruned`` and tying: a group whose norm is below float32's epsilon changes
  no float32 output at the scale of the inputs, and the masks would zero it anyway.

The flush moves a point by at most ``ZERO_ROW_NORM`` per row, so non-expansiveness holds up to
that much.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from scipy.optimize import isotonic_regression

__all__ = [
    "prox_l1",
    "prox_group_lasso",
    "prox_exclusive_lasso",
    "prox_owl",
    "prox_growl",
    "growl_weights",
    "cges_step",
    "FLUSH_BELOW",
    "ZERO_ROW_NORM",
]

# Entries below float32's smallest normal number are flushed to 0 (no subnormals; see above).
FLUSH_BELOW = float(torch.finfo(torch.float32).tiny)
# Groups with an l2 norm at or below float32's epsilon are zero: pruned (the GrOWL MNIST code's
# rule, also used by ``regularizer.mask_pruned`` and by tying).
ZERO_ROW_NORM = float(torch.finfo(torch.float32).eps)

Threshold = float | torch.Tensor


def _check_float(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype={x.dtype}")


def _check_matrix(W: torch.Tensor, name: str = "W") -> None:
    _check_float(W, name)
    if W.ndim != 2:
        raise ValueError(f"{name} must be 2-D (groups x members), got shape={tuple(W.shape)}")


def _check_threshold(t: Threshold, name: str = "t") -> None:
    # Python numbers are checked here; tensors are the caller's business (a check on a CUDA
    # tensor would force a device synchronisation in the training loop).
    if isinstance(t, numbers.Real) and not (t >= 0 and np.isfinite(t)):
        raise ValueError(f"`{name} >= 0` (finite) must hold, but got {name}={t!r}")


def _row_norms(W: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(W, dim=1, keepdim=True)


def flush_subnormals_(x: torch.Tensor) -> torch.Tensor:
    """Set entries below ``FLUSH_BELOW`` to exactly 0, in place on a tensor this module made."""
    return x.masked_fill_(x.abs() < FLUSH_BELOW, 0.0)


def _flush_rows_(X: torch.Tensor) -> torch.Tensor:
    """``flush_subnormals_`` plus: rows whose norm is ``<= ZERO_ROW_NORM`` become 0 (in place, ours only)."""
    return flush_subnormals_(X.masked_fill_(_row_norms(X) <= ZERO_ROW_NORM, 0.0))


def _soft_threshold(w: torch.Tensor, t: Threshold) -> torch.Tensor:
    # sign(w) (|w| - t)_+, written as w - clamp(w, -t, t): the same values with two temporaries
    # instead of five (bench/prox_bench.py)
    if isinstance(t, torch.Tensor):
        return w - torch.minimum(torch.maximum(w, -t), t)
    return w - w.clamp(-t, t)


def prox_l1(w: torch.Tensor, t: Threshold) -> torch.Tensor:
    """Soft-thresholding: ``argmin_x 1/2||x - w||^2 + t ||x||_1`` (any shape)."""
    _check_float(w, "w")
    _check_threshold(t)
    return flush_subnormals_(_soft_threshold(w, t))


def prox_group_lasso(W: torch.Tensor, t: Threshold) -> torch.Tensor:
    """Block soft-thresholding: ``argmin_X 1/2||X - W||^2 + t sum_i ||X_i||_2``.

    Each row is scaled by ``(1 - t / ||W_i||)_+``; a row with norm <= t becomes exactly zero
    (and so does one left with a norm <= ``ZERO_ROW_NORM``).
    """
    _check_matrix(W)
    _check_threshold(t)
    return flush_subnormals_(_group_shrink(W, t))


def _group_shrink(W: torch.Tensor, t: Threshold) -> torch.Tensor:
    """Block soft-thresholding with the row flush folded into the scale (no entry flush)."""
    tiny = torch.finfo(W.dtype).tiny
    norms = _row_norms(W)
    # norm 0 and t > 0 gives 1 - huge -> clamped to 0; norm 0 and t = 0 gives scale 1 (0 * 1 = 0)
    scale = torch.clamp(1 - t / norms.clamp_min(tiny), min=0)
    return W * scale.masked_fill_(norms * scale <= ZERO_ROW_NORM, 0.0)


def prox_exclusive_lasso(W: torch.Tensor, t: Threshold) -> torch.Tensor:
    """Exact prox of the exclusive lasso: ``argmin_X 1/2||X - W||^2 + (t/2) sum_i ||X_i||_1^2``.

    Per row (Lin et al. 2024, ``prox_l12norm.m``): with ``a`` the magnitudes sorted in decreasing
    order and ``S_k = a_1 + ... + a_k``, the solution is ``sign(w)(|w| - alpha)_+`` with
    ``alpha = max_k t S_k / (1 + t k)``, the fixed point of ``alpha = t ||x||_1``. Unlike the
    one-shot CGES threshold it never zeroes a whole row (its largest entry survives), except by
    the flush of a row left with a norm <= ``ZERO_ROW_NORM``.
    """
    _check_matrix(W)
    _check_threshold(t)
    a = W.abs()
    S = torch.cumsum(_sort_rows_descending(a), dim=1)
    k = torch.arange(1, W.shape[1] + 1, dtype=W.dtype, device=W.device)
    # t S_k / (1 + t k) == S_k / (1/t + k), written so that t = 0 gives alpha = 0
    alpha = (t * S / (1 + t * k)).amax(dim=1, keepdim=True)
    return _flush_rows_(_soft_threshold(W, alpha))


def _sort_rows_descending(a: torch.Tensor) -> torch.Tensor:
    if a.device.type == "cpu":  # numpy's row sort is ~10x torch's on the CPU (bench/prox_bench.py)
        return torch.from_numpy(np.sort(a.detach().numpy(), axis=1)[:, ::-1].copy())
    return torch.sort(a, dim=1, descending=True).values


def _check_owl_weights(lam: torch.Tensor, n: int) -> None:
    _check_float(lam, "lam")
    if lam.shape != (n,):
        raise ValueError(f"lam must have shape ({n},), got shape={tuple(lam.shape)}")
    lam_cpu = lam.detach().cpu()
    if n and (not torch.isfinite(lam_cpu).all() or lam_cpu.min() < 0):
        raise ValueError(f"lam must be finite and >= 0, got min(lam)={lam_cpu.min().item()!r}")
    if n > 1 and (lam_cpu[1:] > lam_cpu[:-1]).any():
        i = int(torch.nonzero(lam_cpu[1:] > lam_cpu[:-1])[0]) + 1
        raise ValueError(
            f"lam must be non-increasing, but lam[{i}]={lam_cpu[i].item()!r} > "
            f"lam[{i - 1}]={lam_cpu[i - 1].item()!r}"
        )


def _owl_magnitudes(a: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The OWL prox of non-negative ``a`` (float64 numpy): sort decreasingly, project
    ``a_sorted - lam`` onto the monotone non-negative cone {x_1 >= ... >= x_n >= 0} by pool
    adjacent violators (SciPy's compiled PAVA), clip at 0, unsort. The sort need not be stable:
    equal magnitudes are always pooled, so their order cannot change the result."""
    if not a.size:
        return a
    order = np.argsort(-a)
    x_sorted = np.maximum(isotonic_regression(a[order] - lam, increasing=False).x, 0.0)
    out = np.empty_like(x_sorted)
    out[order] = x_sorted  # a fresh buffer: in-place un-permutation is skglm#178's aliasing bug
    return out


def _owl_prox_unchecked(v: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    # The whole O(n log n) part runs in numpy on the n magnitudes (for GrOWL: the row norms), one
    # transfer each way; numpy's sort and SciPy's PAVA are far cheaper per call than torch's CPU
    # sort and scikit-learn's wrapper (bench/prox_bench.py).
    a = v.detach().abs().cpu().numpy().astype(np.float64)
    lam64 = lam.detach().cpu().numpy().astype(np.float64)
    x = torch.from_numpy(_owl_magnitudes(a, lam64)).to(v.device, v.dtype)
    return flush_subnormals_(torch.sign(v) * x)


def prox_owl(v: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Prox of the ordered weighted l1 (OWL / SLOPE) norm.

    ``argmin_x 1/2||x - v||^2 + sum_i lam_i |x|_[i]`` where ``|x|_[1] >= |x|_[2] >= ...`` and
    ``lam`` is non-increasing and >= 0 (already multiplied by the step). Sort ``|v|`` decreasingly,
    project ``|v|_sorted - lam`` onto the monotone non-negative cone (PAVA), unsort, restore signs.
    O(n log n). Equal magnitudes are always pooled together, which is what ties weights.
    """
    _check_float(v, "v")
    if v.ndim != 1:
        raise ValueError(f"v must be 1-D, got shape={tuple(v.shape)}")
    _check_owl_weights(lam, v.shape[0])
    return _owl_prox_unchecked(v, lam)


def prox_growl(W: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Prox of group OWL: ``argmin_X 1/2||X - W||^2 + sum_i lam_i ||X_[i]||_2``.

    ``X_[i]`` is the row with the i-th largest l2 norm. The OWL prox is applied to the vector of
    row norms and each row is rescaled to its new norm (GrOWL paper Eq. 8, App. A Alg. 2).
    Constant ``lam`` gives the group lasso; ``lam = [a, 0, ..., 0]`` gives ``a max_i ||X_i||``.
    """
    _check_matrix(W)
    _check_owl_weights(lam, W.shape[0])
    return growl_prox_unchecked(W, lam)


def growl_prox_unchecked(W: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    norms = _row_norms(W).squeeze(1)
    new = _owl_prox_unchecked(norms, lam)
    tiny = torch.finfo(W.dtype).tiny
    # rows left with a norm <= ZERO_ROW_NORM are pruned (module docstring)
    scale = torch.where((norms > 0) & (new > ZERO_ROW_NORM), new / norms.clamp_min(tiny), torch.zeros_like(norms))
    return flush_subnormals_(W * scale.unsqueeze(1))


def growl_weights(
    n: int,
    p: int,
    lambda1: float,
    lambda2: float,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """GrOWL weights, paper Eq. 9: ``lam_i = lambda1 + (p - i + 1) lambda2`` for ``i <= p``,
    ``lambda1`` for ``i > p`` (1-based ``i``). ``p = n`` gives OSCAR; ``lambda2 = 0`` gives the
    group lasso. Returns a non-increasing tensor of length ``n``.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"`n >= 1` (an int) must hold, but got n={n!r}")
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or not 1 <= p <= n:
        raise ValueError(f"`1 <= p <= n` (an int) must hold, but got p={p!r}, n={n!r}")
    for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
        if not (isinstance(value, numbers.Real) and np.isfinite(value) and value >= 0):
            raise ValueError(f"`{name} >= 0` (finite) must hold, but got {name}={value!r}")
    i = torch.arange(1, n + 1, dtype=dtype, device=device)
    return lambda1 + lambda2 * torch.clamp(p - i + 1, min=0)


def cges_step(W: torch.Tensor, group_t: Threshold, excl_t: Threshold) -> torch.Tensor:
    """The CGES proximal step as the official code computes it (algorithms.md §2.2, §4.8).

    First the group-lasso prox with threshold ``group_t``; then, on the group-shrunk rows ``G``,
    the one-shot exclusive threshold ``sign(G)(|G| - excl_t ||G_i||_1)_+``. The one-shot step
    over-shrinks compared with the exact exclusive prox (``prox_exclusive_lasso``) by O(excl_t k),
    negligible at the thresholds used in practice, and unlike it can remove a whole row.
    """
    _check_matrix(W)
    _check_threshold(group_t, "group_t")
    _check_threshold(excl_t, "excl_t")
    G = _group_shrink(W, group_t)
    return _flush_rows_(_soft_threshold(G, excl_t * G.abs().sum(dim=1, keepdim=True)))
