"""GrOWL §4.1 reproduction (issue 4, reproduction 1): feature selection and block recovery on the
``correlated_blocks`` data (784 features, 10 blocks of 50 correlated features, cov 0.96^|i-j|,
gaps of 28 noise features), one 300-unit hidden layer, only the first layer regularized.

For group lasso and for GrOWL at several ``p`` (p = 1 is OSCAR), and for each seed, this trains
with ``trainables.fit`` (proximal training, then affinity-propagation tying and retraining) and
measures on the first layer, whose rows (``input`` grouping) are the 784 input features:

* selection: non-zero rows, true (block) features kept out of 500, noise features kept out of
  284, recall, precision, blocks with at least one kept feature;
* block recovery: the adjusted Rand index between the AP cluster labels that ``fit`` used for
  tying (computed on the weights after training, before tying) and the true block ids, over
  (a) the non-zero rows of block features (``ari_true``) and (b) all non-zero rows with every noise
  feature its own singleton group (``ari_all``; noise features are independent, so the ideal
  clustering leaves each one alone). Offline AP at a few other preferences on the same weights
  (``trainables.tying.cluster_rows``, the function ``fit`` uses) shows how much the ARI depends on
  the preference; mean |S| within vs. between blocks is a preference-free view of the same thing;
* test accuracy before tying (the trained network) and after tying + retraining (final).

It writes a JSON (``--out``) with every per-seed number, the summary (mean and sample std over
seeds, ddof=1) and the command, prints a Markdown table, and draws the pairwise similarity
|S| (GrOWL Eq. 10) of the first-layer rows before tying, like the paper's Fig. 3: one panel per
method ordered by true block, one ordered by the learned clusters (``--fig-dir``).

Setup: ``mlp`` 784-300-10 (ReLU, no BN, PyTorch default init), momentum 0.9, lr 0.01, batch 64
(an unregularized net reaches ~88% test accuracy at the default budget, chance is 18%); the
regularizer on ``fc1`` only, ``groups: input``, prox once per epoch with step = lr and pruned rows
masked (the official GrOWL code's schedule); tying with AP preference 0.6 (GrOWL's MNIST value),
re-tied after every step, retraining at the same lr. Strengths: one number ``--lam`` for every
method. Group lasso uses it as its lambda; GrOWL at every ``p`` gets Eq. 9 weights whose mean over
the 784 rows is ``lam``, half of it in the ramp (``--ramp-share``, see :func:`growl_lambdas`),
i.e. the same total penalty as group lasso on rows of equal norm. The default ``lam = 8`` is the
smallest value of the grid {4, 6, 7, 8} at which group lasso kept no noise feature on seed 0
(4: 90 noise rows, 6: 11, 7: 2). Run ``--lam`` with several values to see the sensitivity. These
strengths are calibrated to the default budget: the prox runs once per epoch, so with ``--full``
(more samples, hence more SGD steps per prox) the same ``lam`` prunes relatively less and should be
re-tuned.

Run from the repository root:  ``python bench/growl_synthetic.py``  (``--full``: larger run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables import TrialConfig, fit  # noqa: E402
from trainables.data import load  # noqa: E402
from trainables.groups import to_groups  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.regularizers.base import growl_rank  # noqa: E402
from trainables.train import evaluate  # noqa: E402
from trainables.tying import ZERO_ROW_NORM, cluster_rows, similarity  # noqa: E402

N_FEATURES = 784
FIRST_LAYER = "fc1"

# default (quick) and --full budgets
BUDGETS = {
    "default": {"n_samples": 3000, "epochs": 40, "retrain_epochs": 5},
    "full": {"n_samples": 10000, "epochs": 80, "retrain_epochs": 10},
}


# ----------------------------------------------------------------------------- configs


def growl_lambdas(p: float, lam: float, ramp_share: float, n: int = N_FEATURES) -> tuple[float, float]:
    """(lambda1, lambda2) of Eq. 9 whose weights average ``lam`` over the ``n`` rows, a share
    ``ramp_share`` of it in the ramp: ``lambda1 = (1 - ramp_share) lam`` and
    ``lambda2 P (P + 1) / (2 n) = ramp_share lam`` with ``P = floor(p n)``.

    So GrOWL and group lasso (weight ``lam`` on every row) put the same total penalty on a layer
    whose rows all have equal norms, which is the state every layer starts in; the official
    GrOWL MNIST config is of this kind (mean GrOWL weight 54, 78% of it in the ramp, vs. group
    lasso 60)."""
    P = growl_rank(p, n)
    return (1.0 - ramp_share) * lam, ramp_share * lam * 2.0 * n / (P * (P + 1))


def make_config(method: str, p: float | None, lam: float | None, seed: int,
                a: argparse.Namespace) -> TrialConfig:
    """``none`` (no regularizer, tying only: the paper's "tied afterwards" baseline),
    ``group_lasso`` with ``lam`` or ``growl`` at ``p`` with mean weight ``lam``; first layer only."""
    reg: dict = {"name": method, "layers": [0], "groups": "input"}
    if method != "none":
        reg.update(prox_every="epoch", mask_pruned=True)
    if method == "group_lasso":
        reg["lam"] = lam
    elif method == "growl":
        l1, l2 = growl_lambdas(p, lam, a.ramp_share)
        reg.update(p=p, lambda1=l1, lambda2=l2)
    return TrialConfig.from_dict({
        "seed": seed,
        "device": "cpu",
        "data": {"name": "correlated_blocks", "n_samples": a.n_samples, "split_seed": a.split_seed},
        "model": {"name": "mlp", "hidden": [300]},
        "optim": {"name": "momentum", "momentum": 0.9, "lr": a.lr, "epochs": a.epochs,
                  "batch_size": a.batch_size},
        "regularizer": reg,
        "tying": {"enabled": True, "preference": a.preference, "retrain_epochs": a.retrain_epochs,
                  "every": "step"},
    })


# ----------------------------------------------------------------------------- measurements


def first_layer_rows(state_dict: dict) -> np.ndarray:
    """The first layer's ``input`` group matrix ``[784, 300]`` (one row per input feature)."""
    return to_groups(state_dict[f"{FIRST_LAYER}.weight"], "input").detach().cpu().double().numpy()


def row_norm_stats(G: np.ndarray, rtol: float = 1e-5) -> dict:
    """Per-epoch view of the first layer after that epoch's prox: kept rows (true / noise are not
    known here), the norm range of the kept rows and the size of the largest set of kept rows
    with equal norms (consecutive sorted norms within ``rtol``), i.e. the largest group that the
    OWL prox pooled (group lasso never pools: there it is 1-3, norms equal by coincidence)."""
    norms = np.linalg.norm(G, axis=1)
    alive = np.sort(norms[norms > ZERO_ROW_NORM])[::-1]
    if alive.size == 0:
        return {"kept": 0, "norm_max": 0.0, "norm_min": 0.0, "largest_equal_norm_group": 0}
    same = np.abs(np.diff(alive)) <= rtol * alive[:-1]
    best = run = 1
    for eq in same:
        run = run + 1 if eq else 1
        best = max(best, run)
    return {"kept": int(alive.size), "norm_max": float(alive[0]), "norm_min": float(alive[-1]),
            "largest_equal_norm_group": int(best)}


def full_similarity(G: np.ndarray) -> np.ndarray:
    """Eq. 10 between all rows; pruned rows (norm <= float32 eps) get 0 everywhere."""
    alive = np.linalg.norm(G, axis=1) > ZERO_ROW_NORM
    S = np.zeros((G.shape[0], G.shape[0]))
    idx = np.flatnonzero(alive)
    if idx.size:
        S[np.ix_(idx, idx)] = similarity(torch.from_numpy(G[idx]))
    return S


def ari_scores(labels: np.ndarray, blocks: np.ndarray) -> dict[str, float]:
    """ARI over kept block rows, and over all kept rows with each noise row a singleton."""
    kept = labels >= 0
    true_rows = kept & (blocks >= 0)
    out = {"ari_true": float("nan"), "ari_all": float("nan")}
    if true_rows.sum() >= 2:
        out["ari_true"] = float(adjusted_rand_score(blocks[true_rows], labels[true_rows]))
    if kept.sum() >= 2:
        truth = np.where(blocks >= 0, blocks, 1000 + np.arange(blocks.size))  # singleton noise
        out["ari_all"] = float(adjusted_rand_score(truth[kept], labels[kept]))
    return out


def cluster_stats(labels: np.ndarray, blocks: np.ndarray) -> dict[str, float]:
    kept = labels >= 0
    clusters = np.unique(labels[kept])
    true_rows = kept & (blocks >= 0)
    # per cluster: the fraction of its rows that belong to its majority block (noise = -1 counted
    # as its own "block"), averaged over rows
    pure = 0
    for c in clusters:
        b = blocks[labels == c]
        pure += np.bincount(b + 1).max()
    per_block = [np.unique(labels[(blocks == k) & kept]).size for k in range(blocks.max() + 1)
                 if ((blocks == k) & kept).any()]
    return {
        "clusters": int(clusters.size),
        "clusters_true_rows": int(np.unique(labels[true_rows]).size),
        "purity": float(pure / max(kept.sum(), 1)),
        "clusters_per_block": float(np.mean(per_block)) if per_block else float("nan"),
    }


def similarity_stats(S: np.ndarray, alive: np.ndarray, blocks: np.ndarray) -> dict[str, float]:
    """Mean |S| between distinct kept block rows of the same block vs. of different blocks."""
    rows = np.flatnonzero(alive & (blocks >= 0))
    if rows.size < 2:
        return {"s_within": float("nan"), "s_between": float("nan")}
    A = np.abs(S[np.ix_(rows, rows)])
    b = blocks[rows]
    same = b[:, None] == b[None, :]
    off = ~np.eye(rows.size, dtype=bool)
    w, btw = A[same & off], A[~same]
    return {"s_within": float(w.mean()) if w.size else float("nan"),
            "s_between": float(btw.mean()) if btw.size else float("nan")}


def run_one(method: str, p: float | None, lam: float | None, seed: int, a: argparse.Namespace,
            data) -> tuple[dict, np.ndarray, np.ndarray]:
    cfg = make_config(method, p, lam, seed, a)
    snap: dict = {}

    trajectory = []

    def report(r) -> None:
        epoch = r.metrics["epoch"]
        if epoch > cfg.optim.epochs:
            return
        state = r.state()["model"]
        trajectory.append({"epoch": epoch, **row_norm_stats(first_layer_rows(state))})
        if epoch == cfg.optim.epochs:  # the weights after training, before _start_tying
            snap["state"] = {k: v.clone() for k, v in state.items()}

    t0 = time.perf_counter()
    res = fit(cfg, report)
    seconds = time.perf_counter() - t0

    blocks = data.info["blocks"]
    G = first_layer_rows(snap["state"])
    alive = np.linalg.norm(G, axis=1) > ZERO_ROW_NORM
    tie = next(t for t in res.ties if t.name == FIRST_LAYER)
    # the tied model keeps the same support (masks + tying leave pruned rows at zero)
    G_final = first_layer_rows(res.model.state_dict())
    assert np.array_equal(alive, np.linalg.norm(G_final, axis=1) > ZERO_ROW_NORM)
    assert np.array_equal(alive, tie.labels >= 0)

    pre = build_model(cfg.model, data.spec)
    pre.load_state_dict(snap["state"])
    acc_pre = evaluate(pre, data.test)["accuracy"]

    true = blocks >= 0
    kept, kept_true, kept_noise = int(alive.sum()), int((alive & true).sum()), int((alive & ~true).sum())
    m = {
        "method": method, "p": p, "lam": lam, "seed": seed, "seconds": seconds,
        "kept": kept, "true_kept": kept_true, "noise_kept": kept_noise,
        "recall": kept_true / int(true.sum()),
        "precision": kept_true / kept if kept else float("nan"),
        "blocks_hit": int(np.unique(blocks[alive & true]).size),
        "test_acc_pre_tying": acc_pre,
        "test_acc_final": res.metrics["test_accuracy"],
        "tying_enabled": bool(tie.enabled), "ap_converged": bool(tie.converged),
        **ari_scores(tie.labels, blocks), **cluster_stats(tie.labels, blocks),
    }
    S = full_similarity(G)
    m.update(similarity_stats(S, alive, blocks))
    # AP at other preferences on the same (pre-tying) rows, offline
    m["ari_true_by_preference"], m["clusters_by_preference"] = {}, {}
    for pref in a.extra_preferences:
        labels = cluster_rows(torch.from_numpy(G), preference=pref).labels
        if pref == a.preference:
            assert np.array_equal(labels, tie.labels)
        m["ari_true_by_preference"][str(pref)] = ari_scores(labels, blocks)["ari_true"]
        m["clusters_by_preference"][str(pref)] = int(np.unique(labels[labels >= 0]).size)
    m["trajectory"] = trajectory
    m["pooled_first"] = trajectory[0]["largest_equal_norm_group"]
    m["pooled_last"] = trajectory[-1]["largest_equal_norm_group"]
    m["collapse_epoch"] = next((t["epoch"] for t in trajectory if t["kept"] == 0), None)
    m["config"] = cfg.to_dict()
    return m, G, tie.labels


# ----------------------------------------------------------------------------- figures


def cluster_order(labels: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, int]:
    """Kept rows grouped by AP cluster (clusters ordered by majority true block, then size), then
    the pruned rows in feature order; also the number of kept rows."""
    kept = np.flatnonzero(labels >= 0)
    keys = []
    for c in np.unique(labels[kept]):
        members = kept[labels[kept] == c]
        b = blocks[members]
        maj = np.bincount(b + 1).argmax() - 1
        keys.append(((maj if maj >= 0 else 10**6), -members.size, int(members.min()), members))
    keys.sort(key=lambda k: k[:3])
    order = [r for k in keys for r in sorted(k[3])]
    pruned = np.flatnonzero(labels < 0)
    return np.concatenate([np.asarray(order, dtype=int), pruned]), kept.size


def block_order(blocks: np.ndarray) -> np.ndarray:
    return np.concatenate([np.flatnonzero(blocks == k) for k in range(blocks.max() + 1)]
                          + [np.flatnonzero(blocks < 0)])


def draw_figure(panels: list[tuple[str, np.ndarray, np.ndarray]], data, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = data.info["blocks"]
    X = data.train.X.cpu().double().numpy()
    C = np.abs(np.corrcoef(X, rowvar=False))
    bo = block_order(blocks)
    n_true = int((blocks >= 0).sum())
    bounds = np.cumsum([int((blocks == k).sum()) for k in range(blocks.max() + 1)])
    ncol = len(panels) + 1
    fig, axes = plt.subplots(2, ncol, figsize=(3.0 * ncol + 1.0, 7.2), squeeze=False,
                             layout="constrained")
    kw = dict(cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    im = axes[0, 0].imshow(C[np.ix_(bo, bo)], **kw)
    axes[0, 0].set_title("data: |corr| of features\n(ordered by true block)", fontsize=8)
    axes[1, 0].axis("off")
    axes[1, 0].text(0.0, 0.5, "rows: 784 first-layer rows\n(input features), after\ntraining, "
                    "before tying.\n|S| = GrOWL Eq. 10;\npruned rows are 0.\n\ntop: ordered by "
                    "true block\n(blocks 0..9, then noise);\nbottom: by AP cluster\n(pruned rows last, "
                    "after\nthe red line).", fontsize=8, va="center")
    for j, (name, G, labels) in enumerate(panels, start=1):
        S = np.abs(full_similarity(G))
        alive = np.linalg.norm(G, axis=1) > ZERO_ROW_NORM
        ax = axes[0, j]
        ax.imshow(S[np.ix_(bo, bo)], **kw)
        for b in bounds[:-1]:
            ax.axhline(b - 0.5, color="w", lw=0.2, alpha=0.5)
            ax.axvline(b - 0.5, color="w", lw=0.2, alpha=0.5)
        ax.axhline(n_true - 0.5, color="r", lw=0.4)
        ax.axvline(n_true - 0.5, color="r", lw=0.4)
        ax.set_title(f"{name}\nby true block; kept: {int((alive & (blocks >= 0)).sum())}/500 true,\n"
                     f"{int((alive & (blocks < 0)).sum())}/284 noise", fontsize=8)
        co, nk = cluster_order(labels, blocks)
        ax = axes[1, j]
        ax.imshow(S[np.ix_(co, co)], **kw)
        ax.axhline(nk - 0.5, color="r", lw=0.4)
        ax.axvline(nk - 0.5, color="r", lw=0.4)
        ari = ari_scores(labels, blocks)["ari_true"]
        ax.set_title(f"{name}\nby AP cluster: {np.unique(labels[labels >= 0]).size} clusters,\n"
                     f"ARI (kept true rows) {ari:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, -1].tolist(), shrink=0.6, label="|S|")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)  # 784x784 noisy panels: keep the PNG small enough for the repository
    plt.close(fig)


# ----------------------------------------------------------------------------- summary


SUMMARY_KEYS = ["kept", "true_kept", "noise_kept", "recall", "precision", "blocks_hit", "clusters",
                "clusters_true_rows", "clusters_per_block", "purity", "ari_true", "ari_all",
                "s_within", "s_between", "test_acc_pre_tying", "test_acc_final", "seconds",
                "pooled_first", "pooled_last"]


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample std (ddof=1) over the finite values; nan where there are none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"), "n": int(v.size)}


def fmt(s: dict, digits: int, pct: bool = False) -> str:
    k = 100.0 if pct else 1.0
    if s["n"] == 0:
        return "n/a"
    txt = f"{s['mean'] * k:.{digits}f} ± {s['std'] * k:.{digits}f}"
    return txt if s["n"] == s.get("of", s["n"]) else f"{txt} (n={s['n']})"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sklearn

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "sklearn": sklearn.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg())}


def method_label(method: str, p: float | None, lam: float | None, with_lam: bool) -> str:
    if method == "none":
        return "none (tying only)"
    name = "group lasso" if method == "group_lasso" else (
        f"GrOWL p={p:g}" + (" (OSCAR)" if p == 1.0 else ""))
    return f"{name}, λ={lam:g}" if with_lam else name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ps", type=float, nargs="+", default=[0.1, 0.5, 1.0],
                    help="GrOWL p values (fraction of rows on the Eq. 9 ramp; 1.0 = OSCAR)")
    ap.add_argument("--lam", type=float, nargs="+", default=[8.0],
                    help="strength(s): group lasso lambda = mean GrOWL weight over the 784 rows "
                         "(per-epoch prox with step = lr); several values run every method at each")
    ap.add_argument("--ramp-share", type=float, default=0.5,
                    help="GrOWL: share of the mean weight in the Eq. 9 ramp (lambda1 = (1-share) lam)")
    ap.add_argument("--no-group-lasso", action="store_true", help="leave group lasso out")
    ap.add_argument("--no-baseline", action="store_true",
                    help="leave out the unregularized (tying only) baseline")
    ap.add_argument("--full", action="store_true",
                    help=f"larger budget {BUDGETS['full']} instead of {BUDGETS['default']}")
    ap.add_argument("--n-samples", type=int, default=None, help="override the budget's n_samples")
    ap.add_argument("--epochs", type=int, default=None, help="override the budget's training epochs")
    ap.add_argument("--retrain-epochs", type=int, default=None, help="override the budget's retraining epochs")
    ap.add_argument("--split-seed", type=int, default=0, help="data seed (same data for every trial seed)")
    ap.add_argument("--lr", type=float, default=0.01, help="momentum-0.9 SGD learning rate (= prox step)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--preference", type=float, default=0.6, help="AP preference used for tying")
    ap.add_argument("--extra-preferences", type=float, nargs="*", default=[0.6, 0.8, 0.9],
                    help="preferences for the offline ARI on the pre-tying weights")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--fig-seed", type=int, default=None, help="seed whose weights are drawn (default: first)")
    ap.add_argument("--out", default="bench/results/growl_synthetic.json")
    ap.add_argument("--fig-dir", default="bench/figures")
    a = ap.parse_args(argv)

    budget = BUDGETS["full" if a.full else "default"]
    for key in budget:
        if getattr(a, key) is None:
            setattr(a, key, budget[key])
    torch.set_num_threads(a.threads)
    args = argv if argv is not None else sys.argv[1:]
    command = "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *args])
    fig_seed = a.seeds[0] if a.fig_seed is None else a.fig_seed
    with_lam = len(a.lam) > 1

    methods: list[tuple[str, float | None, float | None]] = [] if a.no_baseline else [("none", None, None)]
    for lam in a.lam:
        methods += [] if a.no_group_lasso else [("group_lasso", None, lam)]
        methods += [("growl", p, lam) for p in a.ps]
    data_cfg = make_config("none", None, None, a.seeds[0], a).data
    data = load(data_cfg)
    chance = float(np.bincount(data.test.y.cpu().numpy()).max() / len(data.test))

    info = machine()
    t_start = time.perf_counter()
    runs, panels = [], {}
    for method, p, lam in methods:
        label = method_label(method, p, lam, with_lam)
        for seed in a.seeds:
            m, G, labels = run_one(method, p, lam, seed, a, data)
            m["label"] = label
            runs.append(m)
            print(f"[{label} seed {seed}] kept {m['kept']} (true {m['true_kept']}, "
                  f"noise {m['noise_kept']}), clusters {m['clusters']}, ARI true {m['ari_true']:.3f}, "
                  f"acc {m['test_acc_pre_tying']:.3f}/{m['test_acc_final']:.3f}, {m['seconds']:.1f}s",
                  file=sys.stderr, flush=True)
            if seed == fig_seed:
                panels[(method, p, lam)] = (method_label(method, p, lam, False), G, labels)
    total = time.perf_counter() - t_start

    summary = {}
    for method, p, lam in methods:
        label = method_label(method, p, lam, with_lam)
        rs = [r for r in runs if r["label"] == label]
        s = {k: mean_std([r[k] for r in rs]) for k in SUMMARY_KEYS}
        for k in s:
            s[k]["of"] = len(rs)
        for pref in a.extra_preferences:
            s[f"ari_true@{pref:g}"] = mean_std([r["ari_true_by_preference"][str(pref)] for r in rs])
            s[f"clusters@{pref:g}"] = mean_std([r["clusters_by_preference"][str(pref)] for r in rs])
        s["ap_converged"] = sum(r["ap_converged"] for r in rs)
        s["tying_enabled"] = sum(r["tying_enabled"] for r in rs)
        s["collapsed"] = sum(r["kept"] == 0 for r in rs)
        s["seeds"] = len(rs)
        s["regularizer"] = rs[0]["config"]["regularizer"]
        summary[label] = s

    figures = []
    suffix = "_full" if a.full else ""
    for lam in a.lam:
        keys = [k for k in methods if k[2] in (lam, None)]
        fig_path = Path(a.fig_dir) / (f"growl_synthetic_similarity{suffix}"
                                      + (f"_lam{lam:g}" if with_lam else "") + ".png")
        title = (f"GrOWL §4.1 correlated blocks: first-layer row similarity |S| (Eq. 10) after training, "
                 f"before tying; seed {fig_seed}, λ={lam:g}, n_samples={a.n_samples}, "
                 f"{a.epochs}+{a.retrain_epochs} epochs")
        draw_figure([panels[k] for k in keys if k in panels], data, fig_path, title)
        figures.append(str(fig_path))

    out = {
        "command": command, "machine": info, "total_seconds": total,
        "settings": {k: v for k, v in vars(a).items() if k not in ("out", "fig_dir")},
        "data": data_cfg.model_dump(mode="json", exclude_none=True),
        "split_sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "chance_accuracy": chance,
        "summary": summary, "runs": runs, "figures": figures,
        "std": "sample standard deviation over seeds (ddof=1); runs where a quantity is undefined "
               "(no kept rows) are left out of its mean and counted in 'n'",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=float))

    # ---- Markdown report
    print(f"Command: `{command}`  ")
    print(f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
          f"({info['torch_threads']} thread(s)), scikit-learn {info['sklearn']}, Python {info['python']}, "
          f"load average at start {info['load_average_at_start'][0]:.2f}  ")
    print(f"Data: correlated_blocks, n_samples={a.n_samples} (train {len(data.train)}, val "
          f"{len(data.val)}, test {len(data.test)}), split_seed={a.split_seed}, majority-class test "
          f"accuracy {100 * chance:.1f}%; seeds {a.seeds}; {a.epochs} training + {a.retrain_epochs} "
          f"retraining epochs; momentum 0.9, lr {a.lr:g}, batch {a.batch_size}; AP preference "
          f"{a.preference:g}; total {total:.0f} s  ")
    print(f"Mean ± sample std over {len(a.seeds)} seeds. Figures: "
          + ", ".join(f"`{f}`" for f in figures) + f". JSON: `{a.out}`\n")
    print("| method | kept rows | true kept /500 | noise kept /284 | recall | precision | blocks hit /10 "
          "| AP clusters on true rows | ARI true rows | ARI all kept | mean abs S within / between block "
          "| test acc before tying | test acc final | AP conv. / tied / collapsed |")
    print("|---|" + "---|" * 13)
    for name, s in summary.items():
        print(f"| {name} | {fmt(s['kept'], 1)} | {fmt(s['true_kept'], 1)} | {fmt(s['noise_kept'], 1)} "
              f"| {fmt(s['recall'], 3)} | {fmt(s['precision'], 3)} | {fmt(s['blocks_hit'], 1)} "
              f"| {fmt(s['clusters_true_rows'], 1)} | {fmt(s['ari_true'], 3)} | {fmt(s['ari_all'], 3)} "
              f"| {fmt(s['s_within'], 3)} / {fmt(s['s_between'], 3)} "
              f"| {fmt(s['test_acc_pre_tying'], 1, True)}% | {fmt(s['test_acc_final'], 1, True)}% "
              f"| {s['ap_converged']}/{s['tying_enabled']}/{s['collapsed']} of {s['seeds']} |")
    print(f"\nARI over kept true rows for AP preferences {a.extra_preferences} (offline, on the same "
          f"pre-tying weights; {a.preference:g} is the one used for tying; a run where AP did not "
          f"converge gets singletons, ARI 0), with the number of clusters:\n")
    print("The last two columns: the largest set of first-layer rows with equal norms (rel. tol. 1e-5) "
          "right after the prox of epoch 1 and of the last training epoch, i.e. the largest group the "
          "OWL prox pooled; and the epoch at which all rows were pruned, if any.\n")
    print("| method | " + " | ".join(f"ARI @ {q:g} | clusters @ {q:g}" for q in a.extra_preferences)
          + " | equal-norm rows, epoch 1 / last | collapse epoch |")
    print("|---|" + "---|---|" * len(a.extra_preferences) + "---|---|")
    for name, s in summary.items():
        cells = " | ".join(f"{fmt(s[f'ari_true@{q:g}'], 3)} | {fmt(s[f'clusters@{q:g}'], 1)}"
                           for q in a.extra_preferences)
        rs = [r for r in runs if r["label"] == name]
        collapse = ", ".join(str(r["collapse_epoch"]) for r in rs if r["collapse_epoch"] is not None) or "-"
        print(f"| {name} | {cells} | {fmt(s['pooled_first'], 0)} / {fmt(s['pooled_last'], 0)} | {collapse} |")
    print("\nRegularizers (first layer only): " + "; ".join(
        f"{name}: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in s["regularizer"].items() if k not in ("name", "layers", "groups"))
        for name, s in summary.items() if s["regularizer"]["name"] != "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
