"""Frontier plots: accuracy vs non-zero parameters and vs compacted FLOPs, by regularizer family."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import pareto  # noqa: E402

if TYPE_CHECKING:
    from .tracking import Frontier

__all__ = ["frontier_figures", "frontier_figure", "AXES"]

# (x metric, file name): the two views the README promises; y is the first "max" objective.
AXES = (("params_nonzero", "frontier_params.png"), ("flops_compact", "frontier_flops.png"))


def frontier_figure(frontier: Frontier, x: str, y: str, extra: list[dict] | None = None):
    """All complete trials coloured by family; the search's Pareto points ringed in black; the
    2-D staircase of this projection drawn; ``extra`` points (e.g. hand-tuned paper settings,
    dicts with ``label`` and the two metrics) drawn as stars."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    families = sorted({r["regularizer"] for r in frontier.rows})
    colors = dict(zip(families, plt.cm.tab10.colors))
    xs = np.array([r.get(x, np.nan) for r in frontier.rows], dtype=float)
    ys = np.array([r.get(y, np.nan) for r in frontier.rows], dtype=float)
    for fam in families:
        sel = np.array([r["regularizer"] == fam for r in frontier.rows])
        ax.scatter(xs[sel], ys[sel], s=28, color=colors[fam], label=fam, alpha=0.85)
    if frontier.mask.any():
        ax.scatter(xs[frontier.mask], ys[frontier.mask], s=70, facecolors="none", edgecolors="black",
                   linewidths=1.2, label="Pareto-optimal (all objectives)")
    if len(xs):
        mask2 = pareto.nondominated_mask(np.column_stack([xs, ys]), ["min", "max"])
        order = np.argsort(xs[mask2])
        ax.step(xs[mask2][order], ys[mask2][order], where="post", color="grey", lw=1, ls="--",
                label="frontier of this view")
    labels: dict[tuple[float, float], list[str]] = {}  # points that coincide share one label
    for point in extra or []:
        labels.setdefault((float(point[x]), float(point[y])), []).append(point["label"])
    for (px, py), names in labels.items():
        ax.scatter([px], [py], marker="*", s=160, color="gold", edgecolors="black", zorder=5)
        ax.annotate("\n".join(names), (px, py), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    if len(xs) and np.nanmax(xs) > 50 * max(np.nanmin(xs), 1):
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def frontier_figures(frontier: Frontier, extra: list[dict] | None = None) -> dict:
    maxes = [o.metric for o in frontier.objectives if o.mode == "max"]
    y = maxes[0] if maxes else "val_accuracy"
    figures = {}
    for x, name in AXES:
        if any(x in r for r in frontier.rows) or not frontier.rows:
            figures[name] = frontier_figure(frontier, x, y, extra)
    return figures
