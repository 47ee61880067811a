"""Frontier plots: accuracy vs non-zero parameters and vs compacted FLOPs, by regularizer family.

Two forms of the same picture: PNGs (matplotlib) and one interactive ``frontier.html`` (plotly)
with every finished trial, Pareto points marked and dominated ones faded, hover showing the
trial's id, family and hyperparameters. Which points are Pareto-optimal comes from
:class:`~search.frontier.Frontier`, never recomputed here (only the dashed staircase of one 2-D
view is, and it says so in its legend).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import pareto
from .frontier import Objective, better

if TYPE_CHECKING:
    from .frontier import Frontier

__all__ = ["frontier_figures", "frontier_figure", "frontier_html", "AXES", "axis_title"]

# (x metric, file name): the two views the README promises; y is the first "max" objective.
AXES = (("params_nonzero", "frontier_params.png"), ("flops_compact", "frontier_flops.png"))
_WORDS = {"params_nonzero": "non-zero parameters", "flops_compact": "FLOPs (compacted network)",
          "val_accuracy": "validation accuracy"}


def axis_title(frontier: Frontier, metric: str) -> str:
    """The metric in words, with which way is better ("lower is better" for a "min" objective)."""
    word = _WORDS.get(metric, metric.replace("_", " "))
    o = next((o for o in frontier.objectives if o.metric == metric), None) or \
        Objective(metric=metric, mode="max" if "accuracy" in metric else "min")
    return f"{word} ({better(o)})"


def _y_metric(frontier: Frontier) -> str:
    maxes = [o.metric for o in frontier.objectives if o.mode == "max"]
    return maxes[0] if maxes else "val_accuracy"


def frontier_figure(frontier: Frontier, x: str, y: str, extra: list[dict] | None = None, title: str | None = None):
    """All complete trials coloured by family; the search's Pareto points ringed in black and
    labelled with their trial ids; the 2-D staircase of this projection drawn; ``extra`` points
    (e.g. hand-tuned paper settings, dicts with ``label`` and the two metrics) drawn as stars.
    The legend sits outside the axes, so it never hides a point."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.4))
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
        for row, px, py in zip(np.array(frontier.rows, dtype=object)[frontier.mask], xs[frontier.mask],
                               ys[frontier.mask]):
            if row.get("trial_id"):
                ax.annotate(row.get("candidate", row["trial_id"]), (px, py), textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color="dimgray")
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
    ax.set_xlabel(axis_title(frontier, x))
    ax.set_ylabel(axis_title(frontier, y))
    if title:
        ax.set_title(title, fontsize=10)
    if len(xs) and np.nanmax(xs) > 50 * max(np.nanmin(xs), 1):
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def frontier_figures(frontier: Frontier, extra: list[dict] | None = None, title: str | None = None) -> dict:
    y = _y_metric(frontier)
    figures = {}
    for x, name in AXES:
        if any(x in r for r in frontier.rows) or not frontier.rows:
            figures[name] = frontier_figure(frontier, x, y, extra, title)
    return figures


def _hover(row: dict, frontier: Frontier, params: list[str]) -> str:
    lines = [f"<b>trial {row.get('candidate', row.get('trial_id', ''))}</b> ({row['regularizer']})"
             + (" — Pareto-optimal" if row.get("pareto") else "")]
    for o in frontier.objectives:
        v = row.get(o.metric)
        lines.append(f"{o.metric}: {v:,.4g}" if isinstance(v, float) else f"{o.metric}: {v}")
    if isinstance(row.get("test_accuracy"), float):
        lines.append(f"test_accuracy: {row['test_accuracy']:.4f}")
    lines += [f"{p[len('param:'):]}: {row[p]}" for p in params if p in row]
    return "<br>".join(lines)


def frontier_html(frontier: Frontier, search_id: str) -> str:
    """An interactive page (plotly, embedded: it opens offline and in the MLflow UI): accuracy vs
    non-zero parameters and vs FLOPs, side by side; every complete trial, coloured by family,
    Pareto-optimal ones marked, dominated ones faded; hover for the trial's hyperparameters."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    y = _y_metric(frontier)
    views = [x for x, _ in AXES if any(x in r for r in frontier.rows)] or [AXES[0][0]]
    fig = make_subplots(rows=1, cols=len(views), shared_yaxes=True, horizontal_spacing=0.06)
    rows = frontier.ranked
    params = [c for c in frontier.columns() if c.startswith("param:")]
    families = sorted({r["regularizer"] for r in rows})
    colors = dict(zip(families, qualitative.Plotly * 3))
    for col, x in enumerate(views, start=1):
        for fam in families:
            for on_front in (True, False):
                sel = [r for r in rows if r["regularizer"] == fam and r["pareto"] == on_front]
                if not sel:
                    continue
                fig.add_trace(go.Scatter(
                    x=[r.get(x) for r in sel], y=[r.get(y) for r in sel], mode="markers",
                    name=f"{fam} ({'Pareto-optimal' if on_front else 'dominated'})",
                    legendgroup=f"{fam}-{on_front}", showlegend=col == 1,
                    opacity=1.0 if on_front else 0.3,
                    marker={"color": colors[fam], "size": 11 if on_front else 8,
                            "symbol": "diamond" if on_front else "circle",
                            "line": {"color": "black", "width": 1.5 if on_front else 0}},
                    hovertext=[_hover(r, frontier, params) for r in sel], hoverinfo="text"), row=1, col=col)
        fig.update_xaxes(title_text=axis_title(frontier, x), type="log", row=1, col=col)
    fig.update_yaxes(title_text=axis_title(frontier, y), row=1, col=1)
    n = len(frontier.rows) + len(frontier.others)
    fig.update_layout(
        title=f"{search_id}: {int(frontier.mask.sum())} Pareto-optimal of {len(frontier.rows)} complete trials "
              f"({n} in all); hypervolume {frontier.hypervolume:.4f}",
        template="plotly_white", height=560, legend={"title": "family"})
    return fig.to_html(include_plotlyjs=True, full_html=True)
