"""Strength by target: ``regularizer.target_sparsity: S`` for every proximal family.

``S`` is the fraction of the regularized *units* that are zero at the end of the regularized
(training) epochs: whole groups (rows of the group matrix, ``regularizer.groups``) for the group
families (``group_lasso``, ``cges``, ``growl``, ...), single weights for the element-wise ones
(``l1``, ``exclusive_lasso``: ``RegularizerConfig.target_unit``). The strength is adapted during
training to reach it; the configured strength (``lam``, GrOWL's ``lambda1``/``lambda2``, CGES's
two terms) is the starting point and fixes the *shape* of the penalty (ratios between terms,
between layers of a depth schedule), the controller only scales it.

How (one :class:`TargetController` per run, one multiplier ``m_l`` per regularized layer):

1. **Every family's proximal threshold is linear in ``step x strength``** (``prox(W, lr * m)`` is
   the prox of the penalty with all its strengths times ``m``), so the controller scales the prox
   step by ``m_l`` and needs nothing from a family but its ``prox``.
2. **A schedule of zeros.** After optimizer step ``t`` of ``T`` training steps (progress
   ``p = t / T``) the layer should have ``k(p) = floor(s(p) n_l)`` zero units, with Zhu & Gupta's
   cubic ``s(p) = S (1 - (1 - p)^3)``: fast at first, flat at the end, so the last zeros come
   when little is left to remove and ``s(1) = S`` exactly at the last prox. ``floor`` and at most
   ``n_l - 1`` zeros: a layer never loses its last unit (a 1-channel image input is never cut).
3. **A band, kept by bisection.** At each prox the controller first tries the current multiplier.
   If the number of zero units after that prox lies in the band ``[k(p), k(p + one epoch)]`` (the
   schedule now, and one epoch ahead), the prox is taken as it is: the strength stays, and the
   penalty works as the paper's. If more zeros come out, the multiplier is lowered to the largest
   value within ``k(p + one epoch)`` (geometric bisection on ``m``; the zero count is monotone in
   the strength for these operators), so a starting strength far too large is tamed at the first
   prox instead of zeroing a whole layer. If fewer come out, the multiplier is raised to the
   smallest value that reaches ``k(p)``, **but by at most a factor ``RISE`` (1.25) per epoch**:
   raising the strength shrinks every surviving unit too (the group lasso's threshold that zeroes
   the k-th smallest row takes that row's norm off every other row), which costs accuracy far more
   than the zeros themselves (measured: LeNet on digits at S = 0.5, 0.77 test accuracy with an
   unbounded rise, 0.92 bounded). Where the bounded strength falls short, the prox at that strength
   is followed by zeroing the smallest remaining units (by l2 norm, or magnitude for weights) up
   to ``k(p)``: the schedule is met by magnitude, and the penalty keeps shaping the rest. The
   same completion is used where the zero count jumps past the band (GrOWL pulls rows to equal
   norms, which then reach zero together). The new multiplier is kept for the next prox.
   At the last prox the band is ``[k(1), k(1)]``: each layer ends at exactly ``floor(S n_l)`` zero
   units (ties between equal norms may add one or two), so the run's zero fraction is ``S`` up to
   rounding. Zeros are counted after the prox; with ``mask_pruned`` they stay, without it units
   that the gradient revives are zeroed again by the next prox (whose band counts them).

The target is uniform over layers (each regularized layer ends at ``floor(S n_l)`` zeros), which
is simple and never empties a layer, but is not the allocation a global ranking would choose.

Why not a pure controller (``m *= f(measured - scheduled)`` per epoch): with permanent masks an
overshoot cannot be undone, and with a few epochs a multiplicative loop has no time to settle;
the band gives the exact landing of a quantile rule while keeping the penalty's own shrinkage
whenever it is on schedule. Cost: one prox per step when on schedule, two when the bounded rise
falls short, up to about 40 (the bisection) otherwise, always on the group matrix (not the
in-place fast path of ``cges``/``l1``), so ``prox_every: step`` runs are slower with a target.

The strength scale: with ``target_sparsity`` the row families (``group_lasso``, ``growl``) default to
``scale: relative`` (thresholds relative to the layer's RMS row norm), so the starting strength
means the same on a 64-input and a 3000-input layer and on a BatchNorm-followed layer; the
controller then only corrects it.

Recorded: every epoch ``target_scheduled`` (``s(p)`` at the epoch's last step), ``target_zero_fraction``
(measured over all regularized units) and ``strength`` (per layer: the family's first strength
field times ``m_l``, e.g. ``lam``); at the end ``target_sparsity``, ``target_reached`` and per layer
``target_strength`` / ``target_zero_fraction`` in ``layers``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .prox import ZERO_ROW_NORM
from .regularizers import LayerRegularizer

__all__ = ["TargetController", "build_target", "scheduled_sparsity", "strength_field"]

RISE = 1.25  # the most the strength grows per epoch; a faster schedule is met by magnitude
_BISECT_STEPS = 40  # geometric bisection steps on the multiplier (ratio 2**-40 of the bracket)
_BRACKET_STEPS = 80  # doublings / halvings to bracket the multiplier (2**80: any practical range)


def scheduled_sparsity(progress: float, target: float, start: float = 0.0) -> float:
    """Zhu & Gupta's cubic from ``start`` at ``progress = 0`` to ``target`` at ``progress = 1``."""
    p = min(max(progress, 0.0), 1.0)
    return start + (target - start) * (1 - (1 - p) ** 3)


def strength_field(cfg: Any) -> str | None:
    """The name of the family's (first) strength field whose value is recorded (``lam``,
    ``lambda1``), or ``None``."""
    for name in ("lam", "lambda1"):
        if name in type(cfg).model_fields:
            return name
    return None


class _Layer:
    def __init__(self, layer: LayerRegularizer, unit: str):
        self.layer, self.unit = layer, unit
        self.multiplier = 1.0
        G = layer.groups()
        self.units = int(G.numel() if unit == "elements" else G.shape[0])
        base = getattr(layer.regularizer, "lam", getattr(layer.regularizer, "lambda1", None))
        self.base = float(base) if isinstance(base, (int, float)) else None

    def group_matrix(self) -> torch.Tensor:
        return self.layer.groups()  # the layer's own rows: a weight's groups, or its channel groups

    def zeros(self, G: torch.Tensor) -> int:
        if self.unit == "elements":
            return int((G == 0).sum())
        return int((~G.ne(0).any(1)).sum())

    def strength(self) -> float | None:
        return None if self.base is None else self.base * self.multiplier


class TargetController:
    """Scales each regularized layer's proximal step so that the zero units follow the schedule
    towards ``target`` (module docstring)."""

    def __init__(self, layers: list[LayerRegularizer], target: float, unit: str, *,
                 total_steps: int, steps_per_epoch: int, start: float = 0.0):
        self.target, self.unit, self.start = float(target), unit, float(start)
        self.total_steps, self.steps_per_epoch = max(total_steps, 1), max(steps_per_epoch, 1)
        self.layers = [_Layer(layer, unit) for layer in layers]
        self.scheduled = 0.0
        self.last_step: int | None = None

    # -- the step ---------------------------------------------------------------------------------

    def _count(self, p: float, n: int) -> int:
        return min(max(n - 1, 0), math.floor(scheduled_sparsity(p, self.target, self.start) * n + 1e-9))

    @torch.no_grad()
    def apply(self, lr: float, step: int) -> None:
        """The prox of every layer after optimizer step ``step`` (from 0), step size ``lr`` times
        each layer's multiplier, the multiplier first moved into the band if needed."""
        p = (step + 1) / self.total_steps
        # the strength may grow by at most RISE per epoch (as a rate: per prox, by the steps since the last)
        since = step + 1 if self.last_step is None else step - self.last_step
        self.last_step = step
        rise = RISE ** (since / self.steps_per_epoch)
        ahead = p + self.steps_per_epoch / self.total_steps
        self.scheduled = scheduled_sparsity(p, self.target, self.start)
        for t in self.layers:
            lo, hi = self._count(p, t.units), self._count(ahead if p < 1 else 1.0, t.units)
            G = t.group_matrix()
            prox = t.layer.regularizer.prox

            def zeros_at(m: float) -> tuple[int, torch.Tensor]:
                out = prox(G, lr * m)
                if t.unit == "groups":  # a row at float32 epsilon is a dead group (mask_pruned masks it)
                    out = torch.where(torch.linalg.vector_norm(out, dim=1, keepdim=True) <= ZERO_ROW_NORM,
                                      torch.zeros_like(out), out)
                return t.zeros(out), out

            m = t.multiplier
            z, out = zeros_at(m)
            if z < lo:
                z_fast, out_fast = zeros_at(m * rise)
                if z_fast < lo:  # the schedule outruns the strength: the smallest units make up the rest
                    m, out = m * rise, _complete(out_fast, lo, t)
                else:
                    m, out = self._raise(zeros_at, m, lo, hi, t)
            elif z > hi:
                m, out = self._lower(zeros_at, m, hi, G)
            t.multiplier = m
            t.layer.write(out)

    @staticmethod
    def _raise(zeros_at, m: float, lo: int, hi: int, t: _Layer) -> tuple[float, torch.Tensor]:
        """The smallest multiplier (to bisection precision) with at least ``lo`` zeros; where the
        zero count jumps past ``hi`` there (GrOWL pulls rows to equal norms, which then reach zero
        together), the largest multiplier below ``lo`` with its smallest units zeroed up to ``lo``."""
        below = m if m > 0 else 1e-12
        z_below, out_below = zeros_at(below)
        above, z, out = below, z_below, out_below
        for _ in range(_BRACKET_STEPS):
            if z >= lo:
                break
            below, z_below, out_below = above, z, out
            above = above * 2
            z, out = zeros_at(above)
        else:
            return above, _complete(out, lo, t)  # the operator cannot make that many zeros alone
        for _ in range(_BISECT_STEPS):
            if above / below < 1 + 1e-6:
                break
            mid = math.sqrt(below * above)
            zm, om = zeros_at(mid)
            if zm >= lo:
                above, z, out = mid, zm, om
            else:
                below, z_below, out_below = mid, zm, om
        if z <= hi:
            return above, out
        return below, _complete(out_below, lo, t)

    @staticmethod
    def _lower(zeros_at, m: float, hi: int, G: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The largest multiplier (to bisection precision) with at most ``hi`` zeros."""
        above, below = m, m / 2
        z, out = zeros_at(below)
        for _ in range(_BRACKET_STEPS):
            if z <= hi:
                break
            above, below = below, below / 2
            z, out = zeros_at(below)
        else:  # above the band without any prox (masked units): skip this prox, keep the strength
            return m, G.clone()
        for _ in range(_BISECT_STEPS):
            mid = math.sqrt(below * above)
            zm, om = zeros_at(mid)
            if zm <= hi:
                below, out = mid, om
            else:
                above = mid
            if above / below < 1 + 1e-6:
                break
        return below, out

    # -- what is recorded -------------------------------------------------------------------------

    @torch.no_grad()
    def zero_fraction(self) -> float:
        zeros = sum(t.zeros(t.group_matrix()) for t in self.layers)
        units = sum(t.units for t in self.layers)
        return zeros / units if units else 0.0

    def epoch_metrics(self) -> dict[str, Any]:
        return {"target_scheduled": self.scheduled, "target_zero_fraction": self.zero_fraction(),
                "strength": {t.layer.name: t.strength() for t in self.layers},
                "strength_multiplier": {t.layer.name: t.multiplier for t in self.layers}}

    @torch.no_grad()
    def final_metrics(self, layer_rows: list[dict[str, Any]]) -> dict[str, Any]:
        by_name = {t.layer.name: t for t in self.layers}
        for row in layer_rows:
            t = by_name.get(row.get("name"))
            if t is not None:
                row["target_strength"] = t.strength()
                row["target_multiplier"] = t.multiplier
                row["target_zero_fraction"] = t.zeros(t.group_matrix()) / t.units if t.units else 0.0
        return {"target_sparsity": self.target, "target_unit": self.unit,
                "target_reached": self.zero_fraction()}

    # -- checkpoints ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"multipliers": [t.multiplier for t in self.layers], "scheduled": self.scheduled,
                "last_step": self.last_step}

    def load_state(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        for t, m in zip(self.layers, state["multipliers"]):
            t.multiplier = float(m)
        self.scheduled = float(state.get("scheduled", 0.0))
        self.last_step = state.get("last_step")


def _complete(G: torch.Tensor, count: int, t: _Layer) -> torch.Tensor:
    """``G`` with its smallest non-zero units (weights or rows, by magnitude / l2 norm) set to
    zero until ``count`` units are zero."""
    missing = count - t.zeros(G)
    if missing <= 0:
        return G
    G = G.clone(memory_format=torch.contiguous_format)
    if t.unit == "elements":
        score = G.abs().flatten()
    else:
        score = torch.linalg.vector_norm(G, dim=1)
    score = torch.where(score > 0, score, torch.full_like(score, math.inf))
    idx = torch.sort(score, stable=True).indices[:missing]
    if t.unit == "elements":
        G.view(-1)[idx] = 0
    else:
        G[idx] = 0
    return G


def build_target(cfg: Any, layers: list[LayerRegularizer], *, total_steps: int, steps_per_epoch: int,
                 stage: int = 0, previous: TargetController | None = None) -> TargetController | None:
    """The controller of a trial whose regularizer sets ``target_sparsity`` (else ``None``); on a
    sparsity path (``cfg.path``), the controller of stage ``stage``: from the previous target to
    this one, starting from the ``previous`` stage's multipliers."""
    reg = cfg.regularizer
    path = getattr(cfg, "path", None)
    target = getattr(reg, "target_sparsity", None) if path is None else path.targets[stage]
    if target is None or not layers:
        return None
    start = 0.0 if path is None or stage == 0 else path.targets[stage - 1]
    controller = TargetController(layers, target, getattr(reg, "target_unit", "groups"),
                                  total_steps=total_steps, steps_per_epoch=steps_per_epoch, start=start)
    if previous is not None:  # the strength reached so far is where the next stage starts
        for t, p in zip(controller.layers, previous.layers):
            t.multiplier = p.multiplier
    return controller
