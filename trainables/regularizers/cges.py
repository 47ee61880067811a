"""CGES, combined group and exclusive sparsity (Yoon & Hwang, ICML 2017, Eq. 5).

``Omega_l(W) = lam [ (1 - mu_l) g_l sum_i ||W_i||_2 + (mu_l / 2) e_l sum_i ||W_i||_1^2 ]``

with ``mu_l`` the per-layer balance (rising with depth in the official code: 0.2, 0.4, 0.6, 0.8)
and ``g_l``, ``e_l`` optional per-layer factors (the official code's ``glayerwise`` and
``elayerwise``, hand-set for its 4-layer MNIST net; 1 by default).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from ..configbase import Ends, Schedule, check_schedule
from ..prox import cges_step, prox_exclusive_lasso, prox_group_lasso
from .base import LamConfig, Regularizer, mask_pruned, register

__all__ = ["CGES", "CGESConfig", "cges_step_"]


class CGESConfig(LamConfig):
    """CGES (Yoon & Hwang 2017) with the official code's settings."""

    name: Literal["cges"] = "cges"
    paper_groups: ClassVar[Literal["input", "input_position"]] = "input_position"
    # on channel groups the exclusive term zeroes most filters' weights but not their norm entries:
    # few whole channels go (measured: 98% of filters zero at a 0.25 channel target on a CNN)
    auto_channel: ClassVar[bool] = False
    lam: Schedule = 1e-2
    mu: Schedule = Field(Ends(first=0.2, last=0.8),
                         description="per-layer weight of the exclusive term in [0, 1] (the group term "
                                     "gets 1 - mu); rising with depth in the official code")
    exact: bool = Field(False, description="the exact exclusive prox after the group step, instead of "
                                           "the official one-shot threshold")
    group_scale: Schedule = Field(1.0, description="per-layer factor on the group term (official "
                                                   "`glayerwise`)")
    exclusive_scale: Schedule = Field(1.0, description="per-layer factor on the exclusive term "
                                                       "(official `elayerwise`)")
    mask_pruned: bool = mask_pruned(False)

    @model_validator(mode="after")
    def _check(self) -> CGESConfig:
        check_schedule(self.mu, "mu", 0, 1)
        check_schedule(self.group_scale, "group_scale", 0)
        check_schedule(self.exclusive_scale, "exclusive_scale", 0)
        return self


@torch.no_grad()
def cges_step_(W: torch.Tensor, dims: tuple[int, ...], group_t: float, excl_t: float,
               scratch: torch.Tensor | None = None) -> None:
    """:func:`trainables.prox.cges_step` in place on a layer's weight ``W``, whose groups' members
    span ``dims`` (:func:`trainables.groups.member_dims`), with values below float32's smallest
    normal flushed to exact zero.

    The same arithmetic as the reference, up to the rounding of the two row reductions: row norms
    and l1 norms as sums over ``dims``, the group shrink ``G = W s`` (``s = (1 - group_t /
    ||W_i||)_+``) in place, then ``G - clamp(G, -t_i, t_i)`` with ``t_i = excl_t ||G_i||_1 =
    excl_t s_i ||W_i||_1``. Why: the reference goes through a group matrix (a strided view whose
    row norm is a slow strided reduction) and allocates five weight-sized temporaries per call,
    each a fresh mmap whose pages fault in; this makes none (``scratch``, one weight-sized buffer
    kept by the caller, takes the elementwise intermediates) and runs every pass in ``W``'s own
    layout: a few memory passes instead of ~15 (bench/train_overhead.py, RESULTS Performance §2).
    """
    if scratch is None or scratch.shape != W.shape or scratch.dtype != W.dtype or scratch.device != W.device:
        scratch = torch.empty_like(W)
    tiny = torch.finfo(W.dtype).tiny
    flush = torch.finfo(torch.float32).tiny
    norms = torch.mul(W, W, out=scratch).sum(dims, keepdim=True).sqrt_()
    l1 = torch.abs(W, out=scratch).sum(dims, keepdim=True)
    scale = (1 - group_t / norms.clamp_min_(tiny)).clamp_(min=0)  # prox_group_lasso's, on the row norms
    W.mul_(scale)
    tau = l1.mul_(scale).mul_(excl_t)
    W.sub_(torch.clamp(W, -tau, tau, out=scratch))
    # A non-zero result |G| - t_i with t_i >= 2 flush / eps is a positive multiple of ulp(t_i)
    # >= flush, so only rows with a smaller threshold (that the group step kept) can hold values
    # below ``flush``. On a large CPU layer the full flush pass runs only then. On a small layer
    # (or a GPU, where the test would synchronise) it always runs: three passes over a few
    # thousand values cost less than the test's five small operations and its read into Python.
    if W.numel() <= ALWAYS_FLUSH or W.device.type != "cpu":
        W.mul_(torch.abs(W, out=scratch).ge_(flush))
        return
    small = 2 * flush / torch.finfo(W.dtype).eps
    if bool(((tau < small) & (scale > 0)).any()):
        W.mul_(torch.abs(W, out=scratch).ge_(flush))


ALWAYS_FLUSH = 1 << 14  # weights of at most this many values are flushed without the test


@register
class CGES(Regularizer):
    """The step is the official composition (``exact=False``): group shrink, then the one-shot
    exclusive threshold on the group-shrunk rows (algorithms.md §2.2). ``exact=True`` follows the
    group step with the exact exclusive-lasso prox instead. Neither is the exact prox of the sum
    (the composition trick needs 1-homogeneity, §2.7); at practical thresholds they agree closely.
    """

    name = "cges"
    config = CGESConfig

    def __init__(self, lam: float, mu: float, group_scale: float = 1.0,
                 exclusive_scale: float = 1.0, exact: bool = False):
        self.lam, self.mu, self.exact = lam, mu, exact
        self.group_scale, self.exclusive_scale = group_scale, exclusive_scale

    def _weights(self) -> tuple[float, float]:
        return (self.lam * (1 - self.mu) * self.group_scale, self.lam * self.mu * self.exclusive_scale)

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        g, e = self._weights()
        return g * torch.linalg.vector_norm(W, dim=1).sum() + 0.5 * e * W.abs().sum(dim=1).pow(2).sum()

    @property
    def in_place(self) -> bool:  # exact has no in-place form: its row sort needs the group matrix
        return not self.exact

    def prox_(self, W: torch.Tensor, dims: tuple[int, ...], step: float, scratch: torch.Tensor | None) -> None:
        """The official step in place on the weight: :func:`cges_step_`."""
        g, e = self._weights()
        cges_step_(W, dims, step * g, step * e, scratch)

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        g, e = self._weights()
        if self.exact:
            return prox_exclusive_lasso(prox_group_lasso(W, step * g), step * e)
        return cges_step(W, step * g, step * e)
