"""The proximal operators against independent references.

References used here, none of which shares code with ``trainables.prox``:
- the worked examples of algorithms.md §4.4-4.8 (checked there across four implementations);
- a stack-based PAVA written out in numpy (algorithms.md §4.9), for OWL and GrOWL;
- the OWL optimality certificate (algorithms.md §4.2);
- L-BFGS-B on a smooth split reformulation, for the exact exclusive-lasso prox;
- a per-group numpy transcription of the official CGES TF update;
- brute-force minimisation (SLSQP on the epigraph form) on tiny inputs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from trainables.prox import (
    FLUSH_BELOW,
    ZERO_ROW_NORM,
    cges_step,
    growl_weights,
    prox_exclusive_lasso,
    prox_group_lasso,
    prox_growl,
    prox_l1,
    prox_owl,
)

F64 = torch.float64


def t(x):
    return torch.tensor(x, dtype=F64)


# ----------------------------------------------------------------------------- references


def ref_prox_owl(v: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Stack PAVA (Bogdan et al. 2015, Alg. 4), transcribed from algorithms.md §4.9."""
    sgn, a = np.sign(v), np.abs(v)
    order = np.argsort(-a, kind="stable")
    d = a[order] - lam
    st, en, sm = [], [], []
    for i, di in enumerate(d):
        st.append(i), en.append(i), sm.append(di)
        while len(sm) > 1 and sm[-2] / (en[-2] - st[-2] + 1) <= sm[-1] / (en[-1] - st[-1] + 1):
            s, e = sm.pop(), en.pop()
            st.pop()
            sm[-1] += s
            en[-1] = e
    xs = np.empty_like(d)
    for s0, e0, m in zip(st, en, sm):
        xs[s0 : e0 + 1] = max(m / (e0 - s0 + 1), 0.0)
    out = np.empty_like(xs)
    out[order] = xs
    return sgn * out


def ref_prox_growl(W: np.ndarray, lam: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(W, axis=1)
    new = ref_prox_owl(n, lam)
    return W * np.where(n > 0, new / np.where(n > 0, n, 1), 0)[:, None]


def owl_norm(x: np.ndarray, lam: np.ndarray) -> float:
    return float(np.sort(np.abs(x))[::-1] @ lam)


def owl_dual_norm(u: np.ndarray, lam: np.ndarray) -> float:
    """max_k (sum of the k largest |u|) / (sum of the k largest lam) — Zeng & Figueiredo."""
    cu, cl = np.cumsum(np.sort(np.abs(u))[::-1]), np.cumsum(lam)
    ok = cl > 0
    if not ok.all() and np.any(cu[~ok] > 1e-12):
        return np.inf
    return float(np.max(cu[ok] / cl[ok])) if ok.any() else 0.0


def ref_prox_exclusive(v: np.ndarray, rho: float) -> np.ndarray:
    """argmin 1/2||x-v||^2 + rho/2 ||x||_1^2 by L-BFGS-B on x = p - q, p, q >= 0."""
    n = v.size

    def f(z):
        p, q = z[:n], z[n:]
        r = p - q - v
        s = p.sum() + q.sum()
        val = 0.5 * r @ r + 0.5 * rho * s * s
        return val, np.concatenate([r + rho * s, -r + rho * s])

    z0 = np.concatenate([np.maximum(v, 0), np.maximum(-v, 0)])
    res = minimize(f, z0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * n),
                   options={"ftol": 1e-16, "gtol": 1e-13, "maxiter": 10_000})
    return res.x[:n] - res.x[n:]


def ref_cges_official(W: np.ndarray, g_thr: float, e_thr: float) -> np.ndarray:
    """The official TF update (main.py:69-85) for groups = rows, one row at a time."""
    out = np.zeros_like(W)
    for i, w in enumerate(W):
        norm = np.sqrt((w**2).sum())
        if norm == 0:  # the official code yields NaN here (rsqrt(0)); the intended value is 0
            continue
        comp = 1 - g_thr / norm
        gl = (comp > 0) * comp * w
        out[i] = np.sign(gl) * np.maximum(np.abs(gl) - e_thr * np.abs(gl).sum(), 0)
    return out


def brute_owl(v: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """argmin 1/2||x-v||^2 + s, s >= sum_i lam_i u_perm(i) for every permutation, u >= |x|.

    OWL(x) = max over permutations of sum_i lam_i |x|_perm(i) (rearrangement inequality), so this
    QP in (x, u, s) is the prox problem; SLSQP solves it to ~1e-9 for n <= 4.
    """
    n = v.size
    perms = list(itertools.permutations(range(n)))

    def obj(z):
        return 0.5 * np.sum((z[:n] - v) ** 2) + z[-1]

    cons = [{"type": "ineq", "fun": lambda z, p=p: z[-1] - sum(lam[i] * z[n + p[i]] for i in range(n))}
            for p in perms]
    cons += [{"type": "ineq", "fun": lambda z: z[n:2 * n] - z[:n]},
             {"type": "ineq", "fun": lambda z: z[n:2 * n] + z[:n]}]
    z0 = np.concatenate([v, np.abs(v), [owl_norm(v, lam)]])
    res = minimize(obj, z0, constraints=cons, method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    return res.x[:n]


def random_vector(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random values with ties, exact zeros and a random scale."""
    v = rng.normal(size=n) * 10 ** rng.uniform(-2, 1)
    if n > 2 and rng.random() < 0.5:
        v[rng.integers(n)] = v[rng.integers(n)]  # a tie in value
    if n > 2 and rng.random() < 0.5:
        v[rng.integers(n)] = -v[rng.integers(n)]  # a tie in magnitude
    if rng.random() < 0.3:
        v[rng.integers(n)] = 0.0
    return v


def random_owl_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.integers(4)
    if kind == 0:  # constant
        return np.full(n, rng.uniform(0, 2))
    if kind == 1:  # GrOWL Eq. 9
        return growl_weights(n, int(rng.integers(1, n + 1)), rng.uniform(0, 1), rng.uniform(0, 1)).numpy()
    lam = np.sort(rng.uniform(0, 2, size=n))[::-1].copy()
    if kind == 2 and n > 1:
        lam[rng.integers(1, n):] = 0.0  # trailing zeros
    return lam


# ----------------------------------------------------------------------------- worked examples

OWL_EXAMPLES = [  # algorithms.md §4.4
    ([3, -1, 2, 0.5], [2, 1.5, 1, 0.5], [1, 0, 0.5, 0]),
    ([1, 1.2, -0.9, 0.3], [1, 0.8, 0.2, 0.1], [0.366667, 0.366667, -0.366667, 0.2]),
    ([0.9, -0.85, 0.5, 0.2, -0.05], [0.7, 0.5, 0.3, 0.1, 0.1], [0.275, -0.275, 0.2, 0.1, 0]),
    ([1.764, 0.4, 0.979, 2.241, 1.868, -0.977, 0.95, -0.151, -0.103, 0.411], [1] * 10,
     [0.764, 0, 0, 1.241, 0.868, 0, 0, 0, 0, 0]),
    ([1, -3, 2, 0.5], [2.5, 0, 0, 0], [1, -1.25, 1.25, 0.5]),
    ([2, 2, -2, 1], [1.5, 1, 0.5, 0], [1, 1, -1, 1]),
]


@pytest.mark.parametrize("v, lam, expected", OWL_EXAMPLES)
def test_owl_worked_examples(v, lam, expected):
    torch.testing.assert_close(prox_owl(t(v), t(lam)), t(expected), atol=1e-6, rtol=0)


def test_growl_weights_eq9():
    torch.testing.assert_close(growl_weights(5, 3, 0.1, 0.2), t([0.7, 0.5, 0.3, 0.1, 0.1]))
    # algorithms.md §3.3: n=10, L1=1, L2=0.5, p=3 -> [2.5, 2, 1.5, 1, ...]
    torch.testing.assert_close(growl_weights(10, 3, 1.0, 0.5), t([2.5, 2, 1.5] + [1] * 7))
    # p = n is OSCAR: strictly decreasing by lambda2 down to lambda1 + lambda2
    torch.testing.assert_close(growl_weights(4, 4, 0.0, 1.0), t([4, 3, 2, 1]))


def test_growl_worked_examples():
    W = t([[0.6, 0.8, 0], [0.3, 0.4, 0], [0, 0, 0.9], [0.1, 0, 0]])
    out = prox_growl(W, growl_weights(4, 2, 0.05, 0.1))
    torch.testing.assert_close(out, t([[0.45, 0.6, 0], [0.27, 0.36, 0], [0, 0, 0.75], [0.05, 0, 0]]))
    W2 = t([[1, 0], [0, 0.95], [0.7, 0.7], [0.02, 0]])
    out2 = prox_growl(W2, t([0.45, 0.35, 0.25, 0.15]))
    expected = t([[0.629983, 0], [0, 0.629983], [0.445465, 0.445465], [0, 0]])
    torch.testing.assert_close(out2, expected, atol=1e-6, rtol=0)
    norms = torch.linalg.vector_norm(out2, dim=1)
    assert torch.allclose(norms[:3], norms[0].expand(3))  # three rows tied


def test_group_lasso_worked_examples():
    torch.testing.assert_close(prox_group_lasso(t([[3, 4]]), 1.0), t([[2.4, 3.2]]))
    torch.testing.assert_close(prox_group_lasso(t([[3, 4]]), 6.0), t([[0, 0]]))
    torch.testing.assert_close(prox_group_lasso(t([[1, -2, 2]]), 1.5), t([[0.5, -1, 1]]))


EXCLUSIVE_EXAMPLES = [  # algorithms.md §4.7 (exact column)
    ([3, -1, 2, 0.5], 0.25, [2.142857, -0.142857, 1.142857, 0]),
    ([3, -1, 2, 0.5], 0.05, [2.729167, -0.729167, 1.729167, 0.229167]),
    ([1, 0.9, 0.8, -0.1, 0.05], 0.5, [0.46, 0.36, 0.26, 0, 0]),
    ([0.5, -0.4, 0.3, 0.2, 0.1, -0.05], 1e-3,
     [0.498459, -0.398459, 0.298459, 0.198459, 0.098459, -0.048459]),
]


@pytest.mark.parametrize("v, rho, expected", EXCLUSIVE_EXAMPLES)
def test_exclusive_lasso_worked_examples(v, rho, expected):
    torch.testing.assert_close(prox_exclusive_lasso(t([v]), rho), t([expected]), atol=1e-6, rtol=0)


def test_cges_worked_examples():
    W = t([[0.5, -0.2, 0.1, 0], [0.05, 0.02, -0.01, 0.03], [1, 0.9, -0.8, 0.1]])
    expected = t([[0.277925, -0.032697, 0, 0], [0, 0, 0, 0], [0.411947, 0.318322, -0.224698, 0]])
    torch.testing.assert_close(cges_step(W, 0.1, 0.2), expected, atol=1e-6, rtol=0)
    # the all-zero group that makes the official code NaN stays exactly zero here
    out = cges_step(t([[0, 0, 0], [0.3, 0.1, -0.2]]), 0.01, 0.01)
    torch.testing.assert_close(out, t([[0, 0, 0], [0.286143, 0.091488, -0.188815]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cges_step(t([[3, -1, 2, 0.5]]), 0.5, 0.25), t([[1.1929, 0, 0.3253, 0]]),
                               atol=1e-4, rtol=0)


def test_l1_closed_form():
    v = t([1.5, -0.2, 0.0, -3.0, 0.7])
    torch.testing.assert_close(prox_l1(v, 0.5), t([1.0, 0.0, 0.0, -2.5, 0.2]))


# ----------------------------------------------------------------------------- random references


def test_owl_matches_reference_pava_and_certificate():
    rng = np.random.default_rng(0)
    for _ in range(1500):
        n = int(rng.integers(1, 40))
        v, lam = random_vector(rng, n), random_owl_weights(rng, n)
        x = prox_owl(t(v), t(lam)).numpy()
        np.testing.assert_allclose(x, ref_prox_owl(v, lam), atol=1e-10, rtol=0)
        # optimality certificate: u = v - x has dual norm <= 1 and <u, x> = OWL(x)
        u = v - x
        assert owl_dual_norm(u, lam) <= 1 + 1e-9
        assert abs(u @ x - owl_norm(x, lam)) <= 1e-9 * max(1.0, np.abs(v).sum())


def test_owl_brute_force_tiny():
    rng = np.random.default_rng(1)
    for _ in range(40):
        n = int(rng.integers(1, 5))
        v, lam = random_vector(rng, n), random_owl_weights(rng, n)
        x = prox_owl(t(v), t(lam)).numpy()
        np.testing.assert_allclose(x, brute_owl(v, lam), atol=1e-5, rtol=0)


def test_growl_matches_reference_with_zero_rows_and_ties():
    rng = np.random.default_rng(2)
    for _ in range(500):
        n, m = int(rng.integers(1, 25)), int(rng.integers(1, 7))
        W = rng.normal(size=(n, m)) * 10 ** rng.uniform(-2, 1)
        if n > 2:
            W[rng.integers(n)] = 0.0  # an all-zero group
            W[rng.integers(n)] = W[rng.integers(n)]  # duplicated rows: tied norms
        lam = random_owl_weights(rng, n)
        out = prox_growl(t(W), t(lam))
        assert torch.isfinite(out).all()
        np.testing.assert_allclose(out.numpy(), ref_prox_growl(W, lam), atol=1e-10, rtol=0)


def test_growl_with_constant_weights_is_group_lasso():
    rng = np.random.default_rng(3)
    for _ in range(100):
        W = t(rng.normal(size=(int(rng.integers(1, 30)), 4)))
        c = float(rng.uniform(0, 2))
        lam = growl_weights(W.shape[0], 1, c, 0.0)  # lambda2 = 0: constant c
        torch.testing.assert_close(prox_growl(W, lam), prox_group_lasso(W, c))


def _ref_linf_prox(v: np.ndarray, a: float) -> np.ndarray:
    """prox of a ||.||_inf via Moreau: v - a P_{l1 ball}(v / a) (Duchi et al. 2008 projection)."""
    y = np.abs(v) / a
    if y.sum() <= 1:
        return np.zeros_like(v)
    mu = np.sort(y)[::-1]
    cs = np.cumsum(mu)
    rho = np.nonzero(mu * np.arange(1, y.size + 1) > cs - 1)[0][-1]
    theta = (cs[rho] - 1) / (rho + 1)
    return v - a * np.sign(v) * np.maximum(y - theta, 0)


def test_growl_with_spike_weights_is_linf_over_group_norms():
    rng = np.random.default_rng(4)
    for _ in range(100):
        n = int(rng.integers(1, 20))
        W = rng.normal(size=(n, 3))
        a = float(rng.uniform(0.1, 3))
        lam = np.zeros(n)
        lam[0] = a
        out = prox_growl(t(W), t(lam)).numpy()
        norms = np.linalg.norm(W, axis=1)
        expected_norms = _ref_linf_prox(norms, a)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), expected_norms, atol=1e-10)


def test_exclusive_lasso_matches_lbfgsb():
    rng = np.random.default_rng(5)
    for _ in range(150):
        m = int(rng.integers(1, 9))
        v = random_vector(rng, m)
        rho = float(10 ** rng.uniform(-3, 0.5))
        out = prox_exclusive_lasso(t(v[None, :]), rho).numpy()[0]
        np.testing.assert_allclose(out, ref_prox_exclusive(v, rho), atol=1e-6, rtol=0)
        # fixed point x_i = sign(v_i)(|v_i| - rho ||x||_1)_+
        fp = np.sign(v) * np.maximum(np.abs(v) - rho * np.abs(out).sum(), 0)
        np.testing.assert_allclose(out, fp, atol=1e-12)
        if np.abs(v).max() > 0:
            assert np.abs(out).max() > 0  # the largest entry of a group always survives


def test_cges_matches_official_transcription():
    rng = np.random.default_rng(6)
    for _ in range(300):
        n, m = int(rng.integers(1, 12)), int(rng.integers(1, 8))
        W = rng.normal(size=(n, m)) * 10 ** rng.uniform(-2, 0.5)
        if n > 1:
            W[rng.integers(n)] = 0.0
        g, e = float(10 ** rng.uniform(-4, 0)), float(10 ** rng.uniform(-4, -0.5))
        np.testing.assert_allclose(cges_step(t(W), g, e).numpy(), ref_cges_official(W, g, e), atol=1e-12)


def test_cges_official_step_close_to_exact_at_practical_thresholds():
    # algorithms.md §2.7: the one-shot threshold rho||v||_1 exceeds the exact one, rho||x||_1, by
    # rho(||v||_1 - ||x||_1) <= rho^2 k ||v||_1; at the official run's thresholds that is tiny.
    rng = np.random.default_rng(7)
    W = t(rng.normal(scale=0.1, size=(1024, 10)))
    g, e = 4.2e-9, 3.456e-4  # fc4-like thresholds of the official MNIST run
    G = prox_group_lasso(W, g)
    diff = (cges_step(W, g, e) - prox_exclusive_lasso(G, e)).abs().max()
    bound = e**2 * W.shape[1] * G.abs().sum(dim=1).max()
    assert 0 < diff <= bound + 1e-15
    assert diff < 1e-5


def test_cges_official_step_is_not_a_prox():
    """The one-shot exclusive threshold is not non-expansive: its Jacobian row on a group whose
    first entry dominates is [1-e, -e, -e, ...], of norm > 1 for e > 0.4 with 5 members. That is
    why the contract tests hold only ``exact: true`` to non-expansiveness."""
    x = t([[10.0, 0.1, 0.1, 0.1, 0.1]])
    d = t([[0.5, -0.5, -0.5, -0.5, -0.5]]) * 1e-3
    ratio = (cges_step(x + d, 0.0, 0.5) - cges_step(x, 0.0, 0.5)).norm() / d.norm()
    assert ratio > 1.05


# ----------------------------------------------------------------------------- hygiene


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_kept_and_input_not_modified(dtype):
    W = torch.randn(6, 4, dtype=dtype)
    W[2] = 0
    before = W.clone()
    for out in (prox_l1(W, 0.1), prox_group_lasso(W, 0.5), prox_exclusive_lasso(W, 0.3),
                prox_growl(W, growl_weights(6, 3, 0.1, 0.1, dtype=dtype)), cges_step(W, 0.2, 0.1)):
        assert out.dtype == dtype and out.shape == W.shape
        assert torch.isfinite(out).all()
        assert (out[2] == 0).all()
    v = W[:, 0].clone()
    assert prox_owl(v, torch.full((6,), 0.1, dtype=dtype)).dtype == dtype
    torch.testing.assert_close(W, before, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_prox_flushes_subnormals_and_vanishing_rows(dtype):
    """Zero thresholds: entries below float32's smallest normal and rows with a norm at most
    float32's epsilon come out exactly 0.0; everything else is untouched (the prox at t = 0)."""
    W = torch.tensor([[0.5, 1e-40, -3e-39], [1e-8, -2e-8, 0.0], [0.2, -0.3, 1e-30]], dtype=dtype)
    kept = torch.tensor([[0.5, 0, 0], [0, 0, 0], [0.2, -0.3, 1e-30]], dtype=dtype)
    zero3 = torch.zeros(3, dtype=dtype)
    for out in (prox_group_lasso(W, 0.0), prox_exclusive_lasso(W, 0.0), cges_step(W, 0.0, 0.0),
                prox_growl(W, zero3)):
        torch.testing.assert_close(out, kept, rtol=0, atol=0)
    # element-wise operators have no groups: only the subnormals go
    elementwise = W.clone()
    elementwise[0, 1:] = 0
    torch.testing.assert_close(prox_l1(W, 0.0), elementwise, rtol=0, atol=0)
    torch.testing.assert_close(prox_owl(W[0], zero3), elementwise[0], rtol=0, atol=0)
    assert FLUSH_BELOW == torch.finfo(torch.float32).tiny and ZERO_ROW_NORM == torch.finfo(torch.float32).eps


def test_float32_close_to_float64():
    rng = np.random.default_rng(8)
    W = rng.normal(size=(50, 7))
    lam = growl_weights(50, 25, 0.3, 0.05).numpy()
    out32 = prox_growl(torch.tensor(W, dtype=torch.float32), torch.tensor(lam, dtype=torch.float32))
    np.testing.assert_allclose(out32.double().numpy(), ref_prox_growl(W, lam), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    W = torch.randn(40, 9, dtype=torch.float64)
    lam = growl_weights(40, 10, 0.2, 0.05)
    for f in (lambda X: prox_growl(X, lam.to(X.device)), lambda X: cges_step(X, 0.3, 0.05),
              lambda X: prox_exclusive_lasso(X, 0.2), lambda X: prox_group_lasso(X, 0.7)):
        out = f(W.cuda())
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), f(W))


def test_empty_inputs():
    assert prox_owl(torch.zeros(0, dtype=F64), torch.zeros(0, dtype=F64)).shape == (0,)
    assert prox_growl(torch.zeros(0, 3, dtype=F64), torch.zeros(0, dtype=F64)).shape == (0, 3)


@pytest.mark.parametrize("call, message", [
    (lambda: prox_l1(t([1.0]), -0.1), "t >= 0"),
    (lambda: prox_group_lasso(t([1.0, 2.0]), 0.1), "2-D"),
    (lambda: prox_group_lasso(torch.ones(2, 2, dtype=torch.int64), 0.1), "floating-point"),
    (lambda: prox_exclusive_lasso(t([[1.0]]), float("nan")), "t >= 0"),
    (lambda: prox_owl(t([1.0, 2.0]), t([0.1, 0.2])), "non-increasing"),
    (lambda: prox_owl(t([1.0, 2.0]), t([0.1, -0.2])), ">= 0"),
    (lambda: prox_owl(t([1.0, 2.0]), t([0.1])), "shape"),
    (lambda: prox_growl(t([[1.0], [2.0]]), t([0.2, 0.3])), "non-increasing"),
    (lambda: growl_weights(5, 6, 0.1, 0.1), "p <= n"),
    (lambda: growl_weights(5, 0, 0.1, 0.1), "1 <= p"),
    (lambda: growl_weights(5, 2, -0.1, 0.1), "lambda1"),
    (lambda: growl_weights(0, 1, 0.1, 0.1), "n >= 1"),
    (lambda: cges_step(t([[1.0]]), 0.1, -1.0), "excl_t"),
])
def test_bad_input_raises_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        call()
