"""Gradual pruning on Zhu & Gupta's schedule ("To prune, or not to prune", 2017), shared by the
``magnitude`` (weights) and ``channel_magnitude`` (whole groups) families.

The sparsity rises from ``s_i`` (``initial``) to ``s_f`` (``final``) on a cubic:

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3    for t0 <= t <= t0 + n dt

over optimizer steps ``t``, counted as steps done (``t = 1`` after the first step), with
``t0 = start_epoch x steps per epoch`` and ``t0 + n dt = end_epoch x steps per epoch``. Pruning
happens at ``t = t0 + k every`` inside the window (``t >= 1``) and at the window's end, so
``final`` is reached exactly whatever ``every``; the epochs after ``end_epoch`` fine-tune with the
masks. At a pruning step a layer of ``n`` units (weights or groups; all selected layers together
with ``global``) has ``round(s_t n)`` of them pruned (halves round up): the ones with the smallest
scores, those pruned before first (masks only grow), ties broken by position (layer order, then
flat index), so the count is exact and the choice deterministic.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, create_model, model_validator

from ..configbase import FieldError, check_finite
from ..families import RegularizerConfig
from .base import Pruner

__all__ = ["GradualConfig", "GradualPruner", "sparsity_at", "is_pruning_step", "prune_count", "lowest"]


# ----------------------------------------------------------------------------- the schedule


def sparsity_at(t: int, *, initial: float, final: float, t0: int, t1: int) -> float:
    """Zhu & Gupta's target sparsity after ``t`` optimizer steps, for the window ``[t0, t1]``."""
    if t <= t0:
        return initial
    if t >= t1:
        return final
    return final + (initial - final) * (1 - (t - t0) / (t1 - t0)) ** 3


def is_pruning_step(t: int, *, t0: int, t1: int, every: int) -> bool:
    """Whether the masks are updated after ``t`` steps: every ``every`` steps from ``t0``, and at ``t1``."""
    return t >= 1 and t0 <= t <= t1 and ((t - t0) % every == 0 or t == t1)


def prune_count(sparsity: float, n: int) -> int:
    """How many of ``n`` units a sparsity prunes: ``round(sparsity n)``, halves up."""
    return min(n, math.floor(sparsity * n + 0.5))


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of the ``k`` smallest entries of the 1-D ``scores``, ties by position."""
    chosen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    chosen[torch.sort(scores, stable=True).indices[:k]] = True
    return chosen


# ----------------------------------------------------------------------------- the parameters


class _GradualBase(RegularizerConfig):
    """Zhu & Gupta's schedule (its ``global`` field is added below: a Python keyword)."""

    prox_every: Literal["step"] = Field("step", description="pruning runs after optimizer steps "
                                                            "(every `every` of them)")
    initial: float = Field(0.0, description="sparsity s_i at `start_epoch`, in [0, final]")
    final: float = Field(0.5, description="sparsity s_f reached at `end_epoch`, in [initial, 1)")
    start_epoch: int = Field(0, description="epoch at which pruning starts (t0 = start_epoch x batches "
                                            "per epoch, in optimizer steps)")
    end_epoch: int | None = Field(None, description="epoch at which `final` is reached, after "
                                                    "`start_epoch` and at most `optim.epochs` (default, "
                                                    "filled in: `optim.epochs`); the epochs after it "
                                                    "fine-tune with the masks")
    every: int = Field(100, description="optimizer steps between two pruning steps (Zhu & Gupta's "
                                        "Delta t); the window's last step always prunes")

    @model_validator(mode="after")
    def check_schedule(self) -> _GradualBase:
        check_finite(self.final, "final", 0, 1, hi_open=True)
        check_finite(self.initial, "initial", 0)
        if self.initial > self.final:
            raise FieldError("initial", f"`initial <= final` must hold (final={self.final})", self.initial)
        if self.start_epoch < 0:
            raise FieldError("start_epoch", "`start_epoch >= 0` must hold", self.start_epoch)
        if self.end_epoch is not None and self.end_epoch <= self.start_epoch:
            raise FieldError("end_epoch", f"`start_epoch < end_epoch` must hold (start_epoch="
                                           f"{self.start_epoch})", self.end_epoch)
        if self.every < 1:
            raise FieldError("every", "`every >= 1` must hold", self.every)
        return self

    def link(self, trial: Any) -> RegularizerConfig:
        epochs = trial.optim.epochs
        end = epochs if self.end_epoch is None else self.end_epoch
        if end > epochs:
            raise FieldError("regularizer.end_epoch", f"`end_epoch <= optim.epochs` must hold "
                                                       f"(optim.epochs={epochs})", end)
        if self.start_epoch >= end:
            raise FieldError("regularizer.start_epoch", f"`start_epoch < end_epoch` must hold "
                                                         f"(end_epoch={end}, from optim.epochs)", self.start_epoch)
        return self if end == self.end_epoch else self.model_copy(update={"end_epoch": end})


GradualConfig = create_model(
    "GradualConfig", __base__=_GradualBase, __module__=__name__, __doc__=_GradualBase.__doc__,
    **{"global": (bool, Field(False, description="one ranking over all selected layers (true) or one "
                                                 "per layer, each at the scheduled sparsity (false)"))})


# ----------------------------------------------------------------------------- the pruner


class GradualPruner(Pruner):
    """Masks on Zhu & Gupta's schedule. A subclass says what a unit is: :meth:`units` (each
    unit's score, and which units are pruned already) and :meth:`mask` (units back to a weight
    mask)."""

    params = ("initial", "final", "start_epoch", "end_epoch", "every", "global", "groups")

    def __init__(self, **params: Any):
        missing = [p for p in self.params if p not in params]
        if missing or len(params) != len(self.params):
            raise TypeError(f"{type(self).__name__} takes {list(self.params)}, got {sorted(params)}")
        for p in self.params:
            setattr(self, p, params[p])  # ``global`` is a keyword: read it with getattr

    def target(self, t: int, steps_per_epoch: int) -> float | None:
        """The sparsity the masks reach after ``t`` steps, or ``None`` when ``t`` is no pruning step."""
        t0, t1 = self.start_epoch * steps_per_epoch, self.end_epoch * steps_per_epoch
        if not is_pruning_step(t, t0=t0, t1=t1, every=self.every):
            return None
        return sparsity_at(t, initial=self.initial, final=self.final, t0=t0, t1=t1)

    def units(self, W: torch.Tensor, keep: torch.Tensor | None, ranked_globally: bool, *, g: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, pruned)``: 1-D, one entry per unit of ``W`` (``g``: its layer's conv groups)."""
        raise NotImplementedError

    def mask(self, W: torch.Tensor, pruned: torch.Tensor, *, g: int) -> torch.Tensor:
        """The bool keep mask of ``W`` with the units ``pruned`` removed."""
        raise NotImplementedError

    @torch.no_grad()
    def prune(self, weights: list[torch.Tensor], keep: list[torch.Tensor | None], *, step: int,
              steps_per_epoch: int, conv_groups: list[int] | None = None) -> list[torch.Tensor] | None:
        s = self.target(step + 1, steps_per_epoch)
        if s is None:
            return None
        ranked_globally = getattr(self, "global")
        gs = [1] * len(weights) if conv_groups is None else list(conv_groups)
        if len(gs) != len(weights):
            raise ValueError(f"conv_groups has {len(gs)} entries for {len(weights)} weights")
        scored = [self.units(W, k, ranked_globally, g=g) for W, k, g in zip(weights, keep, gs)]
        before = [p for _, p in scored]
        # pruned units score below every live one, so they are chosen first and stay pruned
        scores = [torch.where(p, torch.full_like(sc, -1.0), sc) for sc, p in scored]
        if ranked_globally:  # one ranking: layer order, then flat index, breaks ties
            flat = torch.cat(scores)
            k = max(prune_count(s, flat.numel()), int(sum(int(p.sum()) for p in before)))
            chosen = list(torch.split(lowest(flat, k), [sc.numel() for sc in scores]))
        else:
            chosen = [lowest(sc, max(prune_count(s, sc.numel()), int(p.sum()))) for sc, p in zip(scores, before)]
        return [self.mask(W, c | p, g=g) for W, c, p, g in zip(weights, chosen, before, gs)]
