"""Training overhead of each regularizer: epoch time of ``trainables.fit`` with the regularizer /
epoch time without, for the MLP (784-300-10) and LeNet (``lenet_cges``) on 28x28 MNIST digits.

For each model, each regularizer (``none``, ``l2``, ``l1``, ``group_lasso``, ``exclusive_lasso``,
``cges``, ``growl``, and ``growl`` with parameter tying) and each ``prox_every`` (``step``,
``epoch``) one ``fit`` runs ``1 + repeats`` training epochs. The first epoch is a warm-up; the
epoch time is the median of the others' ``epoch_time_s``, read with ``fit``'s ``report`` callback
(it covers ``_train_epoch`` only: batches, forward, backward, optimizer step, prox, masks).
``none`` runs first and last in each model's sweep (after an untimed warm-up fit) and its
baseline is the median over both runs. Also measured:

- ``prox call``: one proximal step on all the regularized layers exactly as the loop makes it
  (``_Trainer._prox`` + ``_apply_masks``), timed directly as a median of ``--repeats``+ calls; a
  steadier estimate of the per-step cost than the difference of two epoch times;
- ``epoch metrics``: what ``fit`` does between epochs (validation pass, penalty, a
  ``count_nonzero`` over all parameters): wall time between two ``report`` calls minus
  ``epoch_time_s``;
- ``finalize``: the end of the run (``compact`` + ``model_metrics`` + test pass; for tying also the
  clustering before the retraining epoch), from the same timestamps;
- for ``growl+tying`` the retraining epoch (tie after every step, no prox), excluded from the
  median and reported on its own.

A second section times, on trained models, the pieces of the end-of-run metrics (``compact``,
``model_metrics``, ``count_unique`` over every parameter, ``count_flops``) and of each epoch
(``count_nonzero``, penalty, validation pass), and the data path (``trainables.data.batches`` alone,
against one gather per epoch), each also as a fraction of one ``none`` epoch.

Data: the real MNIST test set (IDX files, no download) at ``/work/shared/data/mnist``, split
80/20 in file order, leaving 7,200 training examples after the 10% validation split. Default
size: ``train_subset`` 2,000 (MLP) / 1,000 (LeNet) and 1 + 5 (MLP) / 1 + 2 (LeNet) epochs;
``--full``: all 7,200 examples and 1 + 5 epochs for both.

    python bench/train_overhead.py                         # ~6 minutes on 2 busy CPU cores
    python bench/train_overhead.py --full --device cuda --out train.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import (
    add_common_args,
    apply_threads,
    base_payload,
    fmt_ratio,
    fmt_time,
    markdown_table,
    print_header,
    resolve_device,
    timeit,
    write_json,
)
from trainables import TrialConfig, fit
from trainables.compact import compact
from trainables.data import batches, load
from trainables.metrics import count_flops, count_nonzero, count_unique, model_metrics
from trainables.regularizers import build_layer_regularizers
from trainables.train import _Trainer, evaluate
from trainables.tying import find_ties

DEFAULT_DATA_DIR = "/work/shared/data/mnist"

MODELS: dict[str, dict[str, Any]] = {
    # the papers' MNIST settings: plain SGD, GrOWL's batch 64 / CGES's batch 100 and lr 0.05
    "mlp": {"model": {"name": "mlp", "hidden": [300]},
            "optim": {"name": "sgd", "lr": 0.1, "batch_size": 64},
            "train_subset": 2000, "repeats": 5},
    "lenet": {"model": {"name": "lenet_cges"},
              "optim": {"name": "sgd", "lr": 0.05, "batch_size": 100},
              "train_subset": 1000, "repeats": 2},
}
FULL_REPEATS = 5

# The config defaults of each family (trainables.config.REGULARIZER_PARAMS): strengths, layers
# and mask_pruned as a user gets them; only prox_every is varied. Groupings are the papers' (the
# defaults when RESULTS Performance §2 was measured; `groups: auto` is now `channel` on the LeNet).
REGULARIZERS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("none", {"name": "none"}, {}),
    ("l2", {"name": "l2"}, {}),
    ("l1", {"name": "l1"}, {}),
    ("group_lasso", {"name": "group_lasso", "groups": "input"}, {}),
    ("exclusive_lasso", {"name": "exclusive_lasso"}, {}),
    ("cges", {"name": "cges"}, {}),
    ("growl", {"name": "growl", "groups": "input"}, {}),
    ("growl+tying", {"name": "growl"}, {"enabled": True, "retrain_epochs": 1, "every": "step"}),
]


_WARNED: set[str] = set()


def data_config(args: argparse.Namespace, model: str) -> tuple[dict[str, Any], str]:
    """The data section, and a description (with a warning when falling back)."""
    folder = Path(args.data_dir)
    if folder.is_dir() and any(folder.iterdir()):
        d = {"name": "idx", "path": str(folder), "test_fraction": 0.2, "test_split": "last"}
        what = f"MNIST IDX files in {folder} (test_fraction 0.2, last)"
    else:
        # no download: a 784-feature synthetic set for the MLP, the bundled 8x8 digits for LeNet
        d = {"name": "correlated_blocks"} if model == "mlp" else {"name": "digits"}
        what = f"{d['name']} (FALLBACK: {folder} not found)"
        if model not in _WARNED:
            _WARNED.add(model)
            warnings.warn(f"{folder} is absent: timing {model} on {d['name']} instead of MNIST; the "
                          "numbers are not comparable with MNIST runs", stacklevel=2)
    subset = None if args.full else (args.train_subset or MODELS[model]["train_subset"])
    if subset is not None:
        d["train_subset"] = subset
    return d, what


def make_config(args, model: str, reg: dict[str, Any], tying: dict[str, Any], prox_every: str | None,
                device: torch.device, epochs: int) -> TrialConfig:
    data, _ = data_config(args, model)
    spec = MODELS[model]
    regularizer = dict(reg)
    if prox_every is not None:
        regularizer["prox_every"] = prox_every
    return TrialConfig.from_dict({
        "seed": 0, "device": str(device), "data": data, "model": spec["model"],
        "optim": {**spec["optim"], "epochs": epochs}, "regularizer": regularizer,
        "tying": tying or {"enabled": False},
    })


def model_repeats(args, model: str) -> int:
    return args.repeats or (FULL_REPEATS if args.full else MODELS[model]["repeats"])


def run_one(cfg: TrialConfig) -> tuple[dict[str, Any], Any]:
    """One fit; per-epoch times from the report callback and the wall clock between reports."""
    reports: list[tuple[float, dict[str, Any]]] = []
    t0 = time.perf_counter()
    result = fit(cfg, report=lambda r: reports.append((time.perf_counter(), dict(r.metrics))))
    total = time.perf_counter() - t0
    train_epochs = cfg.optim.epochs
    stamps = [t0] + [t for t, _ in reports]
    times = [m["epoch_time_s"] for _, m in reports]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]  # report to report
    timed = times[1:train_epochs]  # training phase after the warm-up epoch
    # between-epoch work (_epoch_metrics): epochs that are neither the first (set-up) nor the last
    # (finalize) nor the first retraining one (clustering)
    middle = [g - t for i, (g, t) in enumerate(zip(gaps, times))
              if 0 < i < len(times) - 1 and i != train_epochs]
    metrics_s = statistics.median(middle) if middle else None
    out = {
        "epoch_times": times,
        "epoch_time": statistics.median(timed) if timed else times[-1],
        "epoch_metrics": metrics_s,
        "setup": gaps[0] - times[0] - (metrics_s or 0.0),  # data load, model build, 1st metrics
        "finalize": gaps[-1] - times[-1] - (metrics_s or 0.0),
        "total": total,
        "sparsity": result.metrics.get("sparsity"),
        "val_accuracy": result.metrics.get("val_accuracy"),
    }
    if cfg.tying.enabled:
        retrain = times[train_epochs:]
        out["retrain_epoch"] = statistics.median(retrain) if retrain else None
    return out, result


def prox_call(cfg: TrialConfig, repeats: int, device: torch.device) -> float | None:
    """Median time of one proximal step on all regularized layers as the loop makes it."""
    if cfg.regularizer.name == "none":
        return None
    trainer = _Trainer(cfg)
    lr = cfg.optim.lr

    def step():
        trainer._prox(lr, 0)
        trainer._apply_masks()

    return timeit(step, repeats=max(repeats, 5), warmup=1, device=device).median


def bench_training(args, device) -> tuple[list[dict], dict[Any, Any]]:
    """Per model: an untimed warm-up fit, then ``none``, every regularizer, and ``none`` again
    (the baseline is the median over both ``none`` runs, so a drift of the machine's speed during
    the sweep shows up in the baseline rather than in one regularizer). With ``--rounds R`` the
    sweep runs R times in turn and each figure is the median over the timed epochs of all rounds,
    so the configs share the machine's slow and fast spells instead of each meeting one."""
    rows, results = [], {}
    for model in args.models:
        repeats = model_repeats(args, model)
        fit(make_config(args, model, {"name": "none"}, {}, None, device, 1))  # imports, caches, allocator
        plan = [(name, reg, tying, pe) for name, reg, tying in REGULARIZERS if name in args.regularizers
                for pe in (["step", "epoch"] if name != "none" else [None])]
        plan.append(plan[0])  # none again, last
        for i, (name, reg, tying, prox_every) in [(i, step) for _ in range(args.rounds) for i, step in enumerate(plan)]:
            cfg = make_config(args, model, reg, tying, prox_every, device, 1 + repeats)
            r, result = run_one(cfg)
            results.setdefault((model, name, prox_every), result)
            last_none = name == "none" and i > 0
            if prox_every == "step":  # the same call for both prox_every values
                r["prox_call"] = prox_call(cfg, repeats, device)
            rows.append({"model": model, "regularizer": name, "prox_every": prox_every or "-",
                         "run": 2 if last_none else 1, "batch_size": cfg.optim.batch_size,
                         "repeats": repeats, **r})
            print(f"  {model:6s} {name:16s} prox_every={prox_every or '-':5s} "
                  f"epoch {fmt_time(r['epoch_time'])}  total {fmt_time(r['total'])}"
                  + (f"  prox call {fmt_time(r['prox_call'])}" if r.get("prox_call") else ""),
                  file=sys.stderr, flush=True)
    return rows, results


def merge_rounds(rows: list[dict]) -> list[dict]:
    """One row per (model, regularizer, prox_every, run) over the rounds: the timed epochs of all
    rounds pooled (``epoch_time`` their median), the other figures the median of the rounds'."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["regularizer"], r["prox_every"], r["run"]), []).append(r)
    out = []
    for rs in groups.values():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        m = dict(rs[0], rounds=len(rs))
        m["epoch_times"] = [rs[0]["epoch_times"][0]] + [t for r in rs for t in r["epoch_times"][1:1 + r["repeats"]]]
        m["epoch_time"] = statistics.median(m["epoch_times"][1:])  # the training epochs (retraining apart)
        for key in ("prox_call", "epoch_metrics", "setup", "finalize", "total", "retrain_epoch"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                m[key] = statistics.median(vals)
        out.append(m)
    return out


def baseline(rows: list[dict], model: str) -> float:
    """The ``none`` epoch time of ``model``: the median over the timed epochs of both runs."""
    times = [t for r in rows if r["model"] == model and r["regularizer"] == "none"
             for t in r["epoch_times"][1:]]
    return statistics.median(times)


def bench_pieces(args, device, results) -> list[dict]:
    """The end-of-run metrics, the per-epoch metrics and the data path, on the trained models."""
    out = []
    for model in args.models:
        repeats = max(3, model_repeats(args, model))
        t = lambda fn: timeit(fn, repeats=repeats, warmup=1, device=device).median  # noqa: E731
        # a dense network (none) and a partly sparse one (cges at its defaults)
        for name in ("none", "cges"):
            key = next((k for k in results if k[0] == model and k[1] == name), None)
            if key is None:
                continue
            res = results[key]
            net, small, cfg = res.model, res.compact_model, res.config
            shape = res.spec.input_shape
            layers = build_layer_regularizers(cfg.regularizer, copy.deepcopy(net))
            groupings = {layer.name: layer.grouping for layer in layers}
            piece = {"model": model, "trained_with": name, "sparsity": res.metrics.get("sparsity"),
                     "params_total": res.metrics.get("params_total"),
                     "params_unique": res.metrics.get("params_unique")}
            piece["compact"] = t(lambda: compact(net))
            piece["model_metrics"] = t(lambda: model_metrics(net, small, shape, groupings=groupings))
            piece["count_unique"] = t(lambda: sum(count_unique(p) for p in small.parameters()))
            piece["count_unique_dense"] = t(lambda: sum(count_unique(p) for p in net.parameters()))
            piece["count_flops"] = t(lambda: count_flops(net, shape))
            piece["count_nonzero"] = t(lambda: count_nonzero(net))
            with torch.no_grad():
                piece["penalty"] = t(lambda: float(sum(layer.penalty().item() for layer in layers)))
            if name == "none":  # GrOWL's clustering (affinity propagation) on the dense rows: the
                # worst case, once per tying run; growl's default layers and preference
                tcfg = make_config(args, model, {"name": "growl"}, {"enabled": True}, None, device, 1)
                tl = [(lr.name, lr.module, lr.grouping)
                      for lr in build_layer_regularizers(tcfg.regularizer, copy.deepcopy(net))]
                piece["find_ties_rows"] = [int(lr[1].weight.shape[1]) for lr in tl]
                piece["find_ties"] = timeit(
                    lambda: find_ties(tl, preference=tcfg.tying.preference, damping=tcfg.tying.damping,
                                      max_cluster_ratio=tcfg.tying.max_cluster_ratio),
                    repeats=1, warmup=0, device=device).median
            out.append(piece)
            print(f"  timed the metrics of {model} trained with {name}", file=sys.stderr, flush=True)
        # the data path, on this model's data
        key = next((k for k in results if k[0] == model), None)
        if key is None:
            continue
        res = results[key]
        data = load(res.config.data, device)
        bs = res.config.optim.batch_size
        gen = torch.Generator().manual_seed(0)

        def one_pass():
            for _ in batches(data.train, bs, shuffle=True, generator=gen, augment=data.augment):
                pass

        def one_gather():  # the same batches from one permuted copy per epoch (a reference)
            order = torch.randperm(len(data.train), generator=gen).to(data.train.X.device)
            X, y = data.train.X[order], data.train.y[order]
            for s in range(0, len(y), bs):
                X[s:s + bs], y[s:s + bs]

        out.append({
            "model": model, "trained_with": "(data)",
            "load": t(lambda: load(res.config.data, device)),
            "batches_pass": t(one_pass),
            "gather_pass": t(one_gather),
            "validation": t(lambda: evaluate(res.model, data.val)),
            "n_train": len(data.train), "n_val": len(data.val), "batch_size": bs,
        })
        print(f"  timed the data path of {model}", file=sys.stderr, flush=True)
    return out


def print_training(args, rows, n_train, none_epoch) -> None:
    for model in args.models:
        mr = [r for r in rows if r["model"] == model]
        if not mr:
            continue
        base = none_epoch[model]
        bs = mr[0]["batch_size"]
        steps = -(-n_train[model] // bs)
        step_time = base / steps
        print(f"#### {model}: epoch time and ratio to `none` ({n_train[model]:,} training examples, "
              f"batch {bs}, {steps} steps per epoch, 1 + {mr[0]['repeats']} epochs per run)\n")
        table = []
        for name, _, _ in REGULARIZERS:
            by = {r["prox_every"]: r for r in mr if r["regularizer"] == name and r["run"] == 1}
            if not by:
                continue
            step, epoch = by.get("step") or by["-"], by.get("epoch") or by["-"]
            t_step = base if name == "none" else step["epoch_time"]
            t_epoch = base if name == "none" else epoch["epoch_time"]
            call = step.get("prox_call")
            table.append([
                name, fmt_time(t_step), fmt_ratio(t_step / base), fmt_time(t_epoch), fmt_ratio(t_epoch / base),
                fmt_time(call), fmt_ratio(call / step_time) if call else "",
                f"{step['sparsity']:.0%}" if step.get("sparsity") is not None else "–",
                fmt_time(step["epoch_metrics"]), fmt_time(step["finalize"]),
                fmt_time(step["retrain_epoch"]) if "retrain_epoch" in step else "",
            ])
        print(markdown_table(
            ["regularizer", "prox_every step: epoch", "×none", "prox_every epoch: epoch", "×none",
             "prox call (all layers)", "÷ one none step", "final sparsity (step)",
             "epoch metrics (per epoch)", "finalize (once)", "retrain epoch"], table))
        print()
    print("`prox call`: one `_Trainer._prox(lr)` + `_apply_masks()` (all regularized layers, masks "
          "included), timed directly; `÷ one none step` compares it with one optimizer step of `none` "
          "(epoch / steps). With `prox_every: step` an epoch pays it once per step, with `epoch` once. "
          "`final sparsity`: the default strengths can prune a network entirely in a few epochs (the "
          "timing of dense kernels does not depend on it). `epoch metrics` and `finalize`: from the "
          "`prox_every: step` run (wall time between `report` calls minus `epoch_time_s`).\n")


def print_pieces(pieces, none_epoch) -> None:
    print("#### Metrics: cost of one call, and (in brackets) as a fraction of one `none` epoch\n")
    table = []
    for p in pieces:
        if p["trained_with"] == "(data)":
            continue
        base = none_epoch[p["model"]]
        table.append([p["model"], p["trained_with"], f"{p['params_total']:,}",
                      f"{p['sparsity']:.1%}" if p["sparsity"] is not None else "–"]
                     + [f"{fmt_time(p[k])} ({p[k] / base:.2f})" for k in
                        ("compact", "model_metrics", "count_unique", "count_unique_dense", "count_flops",
                         "count_nonzero", "penalty")]
                     + [f"{fmt_time(p['find_ties'])} ({p['find_ties'] / base:.2f})" if "find_ties" in p else ""])
    print(markdown_table(["model", "trained with", "params", "sparsity", "compact", "model_metrics",
                          "count_unique (compact model)", "count_unique (dense model)",
                          "count_flops (dense model)", "count_nonzero", "penalty (all layers)",
                          "find_ties (dense rows, once)"], table))
    print("\n`finalize` runs `compact` + `model_metrics` once per run (`model_metrics` calls "
          "`count_unique` on every compact parameter, `count_flops` on both models); `count_nonzero` "
          "and `penalty` run after every epoch, with the validation pass below. `find_ties`: GrOWL's "
          "affinity-propagation clustering of the rows of growl's layers, before the retraining "
          "(once per tying run), on the dense `none` network (the worst case: no pruned rows).\n")
    print("#### Data path: per epoch, and (in brackets) as a fraction of one `none` epoch\n")
    table = []
    for p in pieces:
        if p["trained_with"] != "(data)":
            continue
        base = none_epoch[p["model"]]
        table.append([p["model"], f"{p['n_train']:,} / {p['n_val']:,}", p["batch_size"]]
                     + [f"{fmt_time(p[k])} ({p[k] / base:.2f})"
                        for k in ("load", "batches_pass", "gather_pass", "validation")])
    print(markdown_table(["model", "train / val examples", "batch", "load (once per fit)",
                          "`batches` pass (shuffled)", "one gather + slices (reference)",
                          "validation pass (every epoch)"], table))
    print("\n`batches` pass: iterating `trainables.data.batches` over the training split with no model "
          "(the data cost inside every epoch); the reference permutes the split once and slices views.\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats="timed epochs per run after the warm-up one: MLP 5, LeNet 2; "
                                    f"--full {FULL_REPEATS}")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"folder of MNIST IDX files (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="training examples at the default size (default: MLP 2000, LeNet 1000; "
                             "--full: all)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--regularizers", nargs="+", default=[r[0] for r in REGULARIZERS],
                        choices=[r[0] for r in REGULARIZERS])
    parser.add_argument("--skip-pieces", action="store_true", help="skip the metrics/data section")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the sweep this many times in turn and pool the epochs (default 1)")
    args = parser.parse_args(argv)
    if "none" not in args.regularizers:
        args.regularizers = ["none", *args.regularizers]  # the baseline of every ratio
    apply_threads(args.threads)
    device = resolve_device(args.device)
    payload = base_payload("bench/train_overhead.py", args, device)
    descriptions = {m: data_config(args, m)[1] for m in args.models}
    print_header("Training overhead (bench/train_overhead.py)", device, [
        f"Data: {'; '.join(sorted(set(descriptions.values())))}. Epoch time: median `epoch_time_s` "
        "of the epochs after the first; `none` is the median over two runs (first and last of the "
        "sweep, after an untimed warm-up fit). Regularizer settings: the config defaults "
        "(`group_lasso` and `growl` mask pruned groups; `growl` skips the last layer)."])

    n_train = {}
    for m in args.models:  # the split sizes (and a check that the data loads) before any timing
        d = load(make_config(args, m, {"name": "none"}, {}, None, device, 1).data, "cpu")
        n_train[m] = len(d.train)
    payload["n_train"] = n_train
    rows, results = bench_training(args, device)
    payload["training_rounds"] = rows
    rows = merge_rounds(rows)
    payload["training"] = rows
    none_epoch = {m: baseline(rows, m) for m in args.models}
    payload["none_epoch"] = none_epoch
    print_training(args, rows, n_train, none_epoch)

    if not args.skip_pieces:
        pieces = bench_pieces(args, device, results)
        payload["pieces"] = pieces
        print_pieces(pieces, none_epoch)

    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
