"""Contract tests over the whole regularizer registry, plus schedules and layer selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.config import ConfigError, Ends, RegularizerConfig, resolve_schedule
from trainables.regularizers import Pruner, get_regularizer, implementations, select_layers

# One instance per registry entry (and the exact CGES variant), with non-trivial strengths.
INSTANCES = {
    "none": {},
    "l2": {"lam": 0.7},
    "l1": {"lam": 0.3},
    "group_lasso": {"lam": 0.5},
    "exclusive_lasso": {"lam": 0.4},
    "cges": {"lam": 0.6, "mu": 0.4},
    "cges_exact": {"lam": 0.6, "mu": 0.4, "exact": True},
    "growl": {"p": 0.5, "lambda1": 0.2, "lambda2": 0.1},
    "oscar": {"p": 1.0, "lambda1": 0.1, "lambda2": 0.05},
}


def make(key: str):
    name = {"cges_exact": "cges", "oscar": "growl"}.get(key, key)
    return get_regularizer(name)(**INSTANCES[key])


def test_every_registered_regularizer_is_covered():
    covered = {{"cges_exact": "cges", "oscar": "growl"}.get(k, k) for k in INSTANCES}
    # pruners have no prox (masks on a schedule): tests/test_baselines.py covers them
    pruners = {name for name, cls in implementations().items() if issubclass(cls, Pruner)}
    assert covered | pruners == set(implementations()) and not covered & pruners


def test_unknown_regularizer_lists_valid_names():
    with pytest.raises(ValueError, match="unknown regularizer 'foo'.*growl"):
        get_regularizer("foo")


def _matrix(seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(7, 5, generator=g, dtype=dtype) * torch.rand(7, 1, generator=g, dtype=dtype) * 2
    W[3] = 0  # an all-zero group
    return W


@pytest.mark.parametrize("key", INSTANCES)
class TestContract:
    def test_zero_step_is_identity(self, key):
        W = _matrix(0)
        torch.testing.assert_close(make(key).prox(W, 0.0), W)

    def test_zero_stays_zero(self, key):
        Z = torch.zeros(6, 4, dtype=torch.float64)
        assert (make(key).prox(Z, 0.8) == 0).all()
        assert make(key).penalty(Z).item() == 0

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_shape_dtype_finite_and_no_mutation(self, key, dtype):
        W = _matrix(1, dtype)
        before = W.clone()
        out = make(key).prox(W, 0.5)
        assert out.shape == W.shape and out.dtype == dtype and out.device == W.device
        assert torch.isfinite(out).all()
        assert (out[3] == 0).all()
        torch.testing.assert_close(W, before, rtol=0, atol=0)
        assert make(key).penalty(W).item() >= 0

    def test_nonexpansive(self, key):
        if key == "cges":
            pytest.skip("the official one-shot CGES step is not a prox (test_prox.py shows a counterexample)")
        reg = make(key)
        for seed in range(30):
            X = _matrix(seed)
            Y = X + 0.3 * torch.randn(X.shape, generator=torch.Generator().manual_seed(100 + seed),
                                      dtype=X.dtype)
            lhs = (reg.prox(X, 0.7) - reg.prox(Y, 0.7)).norm()
            assert lhs <= (X - Y).norm() + 1e-12

    def test_prox_beats_random_perturbations(self, key):
        """prox(v) minimises 1/2||x - v||^2 + step * penalty(x): no nearby point scores lower."""
        if key in ("cges", "cges_exact"):
            # neither composition is the prox of the sum (algorithms.md §2.7); each factor is,
            # and test_prox.py checks each against its own reference
            pytest.skip("CGES steps are compositions of proxes, not the prox of the sum")
        reg, step = make(key), 0.7
        g = torch.Generator().manual_seed(5)
        for seed in range(10):
            V = _matrix(seed)
            X = reg.prox(V, step)
            best = 0.5 * (X - V).pow(2).sum() + step * reg.penalty(X)
            for _ in range(50):
                Z = X + 1e-3 * torch.randn(X.shape, generator=g, dtype=X.dtype)
                assert best <= 0.5 * (Z - V).pow(2).sum() + step * reg.penalty(Z) + 1e-12


@pytest.mark.parametrize("key", [k for k in INSTANCES if k != "none"])
def test_weights_without_gradient_reach_exact_zero(key):
    """Proximal steps on entries that get no gradient end at exactly 0.0, never at a subnormal.

    Column 0 is kept alive (a 'gradient' resets it to 1 every step); column 1 is a dead unit
    inside live groups, which group operators shrink by a factor < 1 per step; row 3 is a lone
    entry with no gradient, which the exclusive threshold and the l2 prox shrink geometrically.
    Without the flush these decay to float32 subnormals and stay there (1.4e-45 * f rounds back
    to 1.4e-45), counted as non-zero."""
    reg = make(key)
    W = torch.zeros(4, 3)
    W[:3, 1] = 0.5
    W[3, 0] = 0.5
    tiny = torch.finfo(torch.float32).tiny
    for _ in range(1500):
        W[:3, 0] = 1.0
        W = reg.prox(W, 0.5)
        nonzero = W[W != 0].abs()
        assert not (nonzero < tiny).any(), f"subnormal left: {nonzero.min().item()!r}"
    assert (W[:3, 1] == 0).all() and (W[3] == 0).all(), W


def test_growl_penalty_sorts_rows():
    reg = get_regularizer("growl")(p=1.0, lambda1=0.0, lambda2=1.0)  # weights [n, n-1, ..., 1]
    W = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]], dtype=torch.float64)
    # sorted norms 3, 2, 1 with weights 3, 2, 1
    assert reg.penalty(W).item() == pytest.approx(3 * 3 + 2 * 2 + 1 * 1)


def test_cges_penalty_and_prox_compose_group_and_exclusive():
    reg = get_regularizer("cges")(lam=2.0, mu=0.25, group_scale=1.0, exclusive_scale=2.0)
    W = torch.tensor([[3.0, -4.0], [1.0, 0.0]], dtype=torch.float64)
    g, e = 2.0 * 0.75 * 1.0, 2.0 * 0.25 * 2.0  # lam(1-mu)g_l, lam mu e_l
    expected = g * (5 + 1) + 0.5 * e * (7**2 + 1**2)
    assert reg.penalty(W).item() == pytest.approx(expected)


# ----------------------------------------------------------------------------- schedules


def test_resolve_schedule_forms():
    assert resolve_schedule(0.3, 3, "lam") == [0.3, 0.3, 0.3]
    assert resolve_schedule([1.0, 2.0], 2, "lam") == [1.0, 2.0]
    assert resolve_schedule(Ends(first=0.2, last=0.8), 4, "mu") == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert resolve_schedule(Ends(first=0.2, last=0.8), 1, "mu") == [0.2]


def test_schedule_list_of_wrong_length_names_field_and_value():
    with pytest.raises(ConfigError, match=r"regularizer\.mu.*3 for this model.*\[0\.1, 0\.2\]"):
        resolve_schedule([0.1, 0.2], 3, "mu")


def _layers(n: int):
    return [(f"l{i}", nn.Linear(2, 2)) for i in range(n)]


@pytest.mark.parametrize("selection, expected", [
    ("all", ["l0", "l1", "l2", "l3"]),
    ("all_but_first", ["l1", "l2", "l3"]),
    ("all_but_last", ["l0", "l1", "l2"]),
    ("inner", ["l1", "l2"]),
    ([0, -1], ["l0", "l3"]),
    (["l2", 0], ["l0", "l2"]),
    (["l[12]", "l*"], ["l0", "l1", "l2", "l3"]),  # fnmatch patterns may overlap
    (["l?", "l3"], ["l0", "l1", "l2", "l3"]),
])
def test_select_layers(selection, expected):
    assert [name for name, _ in select_layers(_layers(4), selection)] == expected


@pytest.mark.parametrize("selection, message", [
    ([4], "out of range"),
    (["nope"], r"matches no Conv2d/Linear layer of this model \(its 4 layers: l0, l1, l2, l3\)"),
    (["l0", "x*"], "matches no Conv2d/Linear layer"),
    ([1, "l1"], "selected twice"),
])
def test_select_layers_errors(selection, message):
    with pytest.raises(ConfigError, match=message):
        select_layers(_layers(4), selection)


def test_config_fills_paper_defaults_per_family():
    cges = RegularizerConfig.model_validate({"name": "cges"})
    assert cges.groups == "auto" and cges.paper_groups == "input_position" and cges.mu == Ends(first=0.2, last=0.8)
    assert cges.exact is False and "p" not in type(cges).model_fields
    growl = RegularizerConfig.model_validate({"name": "growl"})
    assert growl.groups == "auto" and growl.paper_groups == "input"
    assert growl.prox_every == "epoch" and growl.mask_pruned is True
    assert "lam" not in type(growl).model_fields and "mu" not in type(growl).model_fields


@pytest.mark.parametrize("name,kwargs", [("group_lasso", {"lam": 0.5}),
                                         ("growl", {"p": 0.5, "lambda1": 0.2, "lambda2": 0.1})])
def test_relative_scale_is_the_absolute_prox_at_the_layers_rms_row_norm_and_scale_equivariant(name, kwargs):
    """``scale: relative`` multiplies the strengths by ||W||_F / sqrt(rows) at each step: the same
    result as the absolute prox at those strengths, and prox(cW) = c prox(W), so which rows die
    does not depend on the layer's overall scale (it does for the absolute prox)."""
    cls = get_regularizer(name)
    rel, ab = cls(**kwargs, scale="relative"), cls(**kwargs)
    W = _matrix(4)
    rms = (W.pow(2).sum() / W.shape[0]).sqrt().item()
    scaled = {k: v * rms if k in ("lam", "lambda1", "lambda2") else v for k, v in kwargs.items()}
    torch.testing.assert_close(rel.prox(W, 0.7), cls(**scaled).prox(W, 0.7))
    torch.testing.assert_close(rel.penalty(W), cls(**scaled).penalty(W))
    for c in (0.05, 20.0):
        torch.testing.assert_close(rel.prox(c * W, 0.7), c * rel.prox(W, 0.7))
    dead = lambda X: set((X.norm(dim=1) == 0).nonzero().flatten().tolist())  # noqa: E731
    base = dead(rel.prox(W, 0.7))
    assert {3} < base < set(range(W.shape[0]))  # the zero row and some (not all) others
    assert dead(rel.prox(0.05 * W, 0.7)) == dead(rel.prox(20 * W, 0.7)) == base
    # the absolute prox kills every row of the shrunk layer and none but the zero one of the grown
    assert dead(ab.prox(0.05 * W, 0.7)) == set(range(W.shape[0])) and dead(ab.prox(20 * W, 0.7)) == {3}


def test_relative_scale_reaches_the_layer_regularizer_from_the_config():
    from trainables.config import TrialConfig
    from trainables.regularizers import build_layer_regularizers

    cfg = TrialConfig.from_dict({"data": {"name": "digits"}, "regularizer": {"name": "growl", "scale": "relative"}})
    assert cfg.to_dict()["regularizer"]["scale"] == "relative"
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    [layer] = build_layer_regularizers(cfg.regularizer, model)
    assert layer.regularizer.scale == "relative"
    with pytest.raises(ConfigError, match="regularizer.*scale"):
        TrialConfig.from_dict({"data": {"name": "digits"}, "regularizer": {"name": "group_lasso", "scale": "rel"}})
