"""The training loop on a GPU: mixed precision, channels_last, the per-step prox, and trials
packed on one GPU.

Three sections (``--sections``, all by default), each a table of medians measured in this run:

- ``amp``: epoch time of ``trainables.fit`` with ``optim.amp`` off / bf16 / fp16, for LeNet-5
  (``lenet_cges``) on MNIST-10k and torchvision's resnet18 on 3x32x32 images (``--image-size``; a
  synthetic, learnable 10-class set written by the script); for resnet18 also with ``channels_last`` turned
  off (the loop turns it on for convolutional nets on a GPU). Accuracy beside each time, so a
  faster setting that learns less shows.
- ``prox``: epoch time with the regularizer's prox after every step (``prox_every: step``) or once
  per epoch, over the same run without a regularizer, for the MLP (784-300-10) and LeNet: CGES,
  and GrOWL with ``scale: absolute`` and ``scale: relative`` (which reads the layer's RMS row norm
  into Python at each prox: one device synchronisation per step on a GPU).
- ``pack``: K = 1, 2, 4 trials training at once on one GPU, each its own process (what
  ``resources: {gpu: 1/K}`` does in a search: Ray starts one worker process per trial and gives
  them all the same device). Each worker builds its trial and trains one untimed epoch, waits at a
  barrier until all K are ready, then trains ``--pack-epochs`` epochs; throughput = all the
  workers' training examples / (last end - first start).

Every epoch time is the median of ``epoch_time_s`` (fit's report: batches, forward, backward,
optimizer step, prox, masks) over the epochs after the first.

    python bench/gpu_loop.py --device cuda --data-dir /work/shared/data/mnist --out gpu.json
    python bench/gpu_loop.py --device cpu --sections amp --epochs 2 --images 512   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
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
    write_json,
)
import trainables.train
from trainables import TrialConfig, fit
from trainables.data import load

DEFAULT_DATA_DIR = "/work/shared/data/mnist"


def write_images(path: Path, n: int, size: int = 32, seed: int = 0) -> None:
    """A learnable 10-class set of 3 x size x size uint8 images: a class-specific smooth pattern
    plus noise (so accuracy means something and amp's effect on it shows)."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 10, n)
    yy, xx = np.mgrid[0:size, 0:size] / size
    patterns = np.stack([np.stack([np.sin((c + 1) * xx * np.pi + k) * np.cos((k % 3 + 1) * yy * np.pi + c)
                                   for c in range(3)]) for k in range(10)])  # [10, 3, 32, 32]
    x = 128 + 60 * patterns[y] + g.normal(0, 40, (n, 3, size, size))
    np.savez(path, X=np.clip(x, 0, 255).astype(np.uint8), y=y)


def trial(args, model: str, images: Path | None, **over: Any) -> dict[str, Any]:
    """The config dict of one timed run of ``model`` (``lenet``, ``mlp`` or ``resnet18``)."""
    if model == "resnet18":
        data = {"name": "arrays", "path": str(images), "test_fraction": 0.2}
        if args.train_subset:
            data["train_subset"] = args.train_subset
        spec = {"name": "torchvision", "arch": "resnet18"}
        optim = {"name": "momentum", "lr": 0.05, "momentum": 0.9, "batch_size": args.resnet_batch}
    else:
        data = {"name": "idx", "path": str(Path(args.data_dir).resolve()), "test_fraction": 0.2,
                "test_split": "last"}
        if args.train_subset:
            data["train_subset"] = args.train_subset
        spec = {"name": "lenet_cges"} if model == "lenet" else {"name": "mlp", "hidden": [300]}
        optim = {"name": "sgd", "lr": 0.05 if model == "lenet" else 0.1,
                 "batch_size": 100 if model == "lenet" else 64}
    cfg = {"seed": 0, "device": args.device_name, "data": data, "model": spec,
           "optim": {**optim, "epochs": args.epochs, "amp": over.pop("amp", "off")},
           "regularizer": over.pop("regularizer", {"name": "none"}), "tying": {"enabled": False}}
    assert not over, over
    return cfg


def timed_fit(cfg: dict[str, Any], channels_last: bool = True, threads: int | None = None) -> dict[str, Any]:
    """One fit; the median epoch time after the first epoch, and the run's accuracies."""
    reports: list[dict[str, Any]] = []
    original = trainables.train.uses_channels_last
    if not channels_last:
        trainables.train.uses_channels_last = lambda model, device: False
    try:
        t0 = time.perf_counter()
        result = fit(TrialConfig.from_dict(cfg), report=lambda r: reports.append(dict(r.metrics)), threads=threads)
        total = time.perf_counter() - t0
    finally:
        trainables.train.uses_channels_last = original
    times = [m["epoch_time_s"] for m in reports]
    return {"epoch_time": statistics.median(times[1:] or times), "epoch_times": times, "total": total,
            "val_accuracy": result.metrics.get("val_accuracy"),
            "test_accuracy": result.metrics.get("test_accuracy"),
            "sparsity": result.metrics.get("sparsity")}


def guarded(label: str, fn) -> dict[str, Any]:
    """Run one measurement; a failure is recorded (and printed) instead of ending the script."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - a benchmark reports what broke and goes on
        traceback.print_exc()
        out = {"error": f"{type(e).__name__}: {e}"}
    print(f"  {label}: {json.dumps({k: v for k, v in out.items() if k != 'epoch_times'}, default=str)}",
          flush=True)
    return out


def acc(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def section_amp(args, images: Path) -> tuple[list[dict], str]:
    rows, table = [], []
    plan = [("lenet", amp, True) for amp in ("off", "bf16", "fp16")]
    plan += [("resnet18", amp, cl) for amp in ("off", "bf16", "fp16") for cl in (True, False)]
    plan = [p for p in plan if p[0] in args.amp_models]
    if args.device.type != "cuda":
        plan = [p for p in plan if p[2]]  # channels_last is a GPU setting
    base: dict[tuple[str, bool], float] = {}
    for model, amp, cl in plan:
        out = guarded(f"amp {model} {amp} channels_last={cl}",
                      lambda: timed_fit(trial(args, model, images, amp=amp), channels_last=cl))
        rows.append({"model": model, "amp": amp, "channels_last": cl, **out})
        if "error" in out:
            table.append([model, amp, "on" if cl else "off", "failed", "", "", out["error"][:60]])
            continue
        if amp == "off":
            base[(model, cl)] = out["epoch_time"]
        ref = base.get((model, True))
        table.append([model, amp, "on" if cl else "off", fmt_time(out["epoch_time"]),
                      fmt_ratio(out["epoch_time"] / ref if ref else None), acc(out["val_accuracy"]),
                      acc(out["test_accuracy"])])
    text = markdown_table(["model", "amp", "channels_last", "epoch", "/ fp32 channels_last", "val acc", "test acc"],
                          table)
    return rows, text


def section_prox(args, images: Path) -> tuple[list[dict], str]:
    rows, table = [], []
    regs = [("none", {"name": "none"}, None)]
    for every in ("step", "epoch"):
        regs.append((f"cges {every}", {"name": "cges", "prox_every": every}, every))
    for scale in ("absolute", "relative"):
        regs.append((f"growl {scale} step", {"name": "growl", "prox_every": "step", "scale": scale,
                                              "groups": "input"}, "step"))  # as measured (RESULTS §5)
    for model in ("mlp", "lenet"):
        base = None
        for label, reg, _ in regs:
            out = guarded(f"prox {model} {label}", lambda: timed_fit(trial(args, model, images, regularizer=reg)))
            rows.append({"model": model, "regularizer": label, **out})
            if "error" in out:
                table.append([model, label, "failed", "", "", out["error"][:60]])
                continue
            base = out["epoch_time"] if label == "none" else base
            table.append([model, label, fmt_time(out["epoch_time"]),
                          fmt_ratio(out["epoch_time"] / base if base else None), acc(out["val_accuracy"]),
                          acc(out["sparsity"])])
    return rows, markdown_table(["model", "regularizer", "epoch", "/ none", "val acc", "sparsity"], table)


def worker(args) -> None:
    """One packed trial (a subprocess of ``section_pack``): warm up, wait at the barrier, train."""
    cfg = json.loads(args.worker)
    barrier = Path(args.barrier)
    warm = dict(cfg, optim={**cfg["optim"], "epochs": 1})
    fit(TrialConfig.from_dict(warm), threads=args.threads)  # CUDA context, kernels, data on the device
    (barrier / f"ready-{os.getpid()}").touch()
    deadline = time.time() + 600
    while len(list(barrier.glob("ready-*"))) < args.k and time.time() < deadline:
        time.sleep(0.01)
    start = time.time()
    out = timed_fit(cfg, threads=args.threads)
    out.update(start=start, end=time.time(), n_train=len(load(TrialConfig.from_dict(cfg).data).train))
    print("RESULT " + json.dumps(out), flush=True)


def section_pack(args, images: Path) -> tuple[list[dict], str]:
    rows, table = [], []
    for model in args.pack_models:
        cfg = trial(args, model, images)
        cfg["optim"]["epochs"] = args.pack_epochs
        single = None
        for k in (1, 2, 4):
            with tempfile.TemporaryDirectory() as barrier:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg),
                       "--barrier", barrier, "--k", str(k), "--threads", str(args.pack_threads)]
                procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                         for _ in range(k)]
                outs = [p.communicate(timeout=900) for p in procs]
            results, errors = [], []
            for p, (stdout, stderr) in zip(procs, outs):
                line = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
                if p.returncode == 0 and line:
                    results.append(json.loads(line[-1][7:]))
                else:
                    errors.append(stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {p.returncode}")
            if errors:
                print(f"  pack {model} K={k}: failed: {errors}", flush=True)
                rows.append({"model": model, "k": k, "error": errors})
                table.append([model, k, "failed", "", "", "", errors[0][:60]])
                continue
            wall = max(r["end"] for r in results) - min(r["start"] for r in results)
            examples = sum(r["n_train"] * args.pack_epochs for r in results)
            throughput = examples / wall
            single = throughput if k == 1 else single
            epoch = statistics.median(r["epoch_time"] for r in results)
            rows.append({"model": model, "k": k, "wall": wall, "examples": examples, "throughput": throughput,
                         "workers": results})
            print(f"  pack {model} K={k}: {throughput:.0f} examples/s, wall {wall:.1f} s", flush=True)
            table.append([model, k, f"{throughput:,.0f}", fmt_ratio(throughput / single if single else None),
                          fmt_time(epoch), f"{wall:.1f} s",
                          " ".join(acc(r["val_accuracy"]) for r in results)])
    return rows, markdown_table(["model", "trials on the GPU", "examples/s (all trials)", "/ one trial",
                                 "median epoch", "wall", "val acc per trial"], table)


SECTIONS = {"amp": section_amp, "prox": section_prox, "pack": section_pack}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats="the epochs after the first")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="MNIST IDX files (default: %(default)s)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--epochs", type=int, default=4, help="epochs per timed fit (the first is not timed)")
    parser.add_argument("--images", type=int, default=10_000, help="examples in the synthetic image set")
    parser.add_argument("--image-size", type=int, default=32, help="resnet18's images are 3 x N x N")
    parser.add_argument("--resnet-batch", type=int, default=128, help="resnet18's batch size")
    parser.add_argument("--train-subset", type=int, default=None, help="training examples per run (default: all)")
    parser.add_argument("--amp-models", nargs="+", default=["lenet", "resnet18"], choices=["lenet", "resnet18"])
    parser.add_argument("--pack-models", nargs="+", default=["lenet", "resnet18"],
                        choices=["lenet", "mlp", "resnet18"])
    parser.add_argument("--pack-epochs", type=int, default=4, help="timed epochs per packed trial")
    parser.add_argument("--pack-threads", type=int, default=2, help="torch threads per packed trial")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--barrier", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.epochs < 2:
        raise SystemExit(f"--epochs must be >= 2 (the first is not timed), got {args.epochs}")
    apply_threads(args.threads)
    args.device = resolve_device(args.device)
    args.device_name = str(args.device)
    payload = base_payload("bench/gpu_loop.py", args, args.device)
    print_header("The training loop on " + args.device.type.upper(), args.device)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images.npz"
        write_images(images, args.images, args.image_size)
        for name in args.sections:
            print(f"\n#### {name}\n", flush=True)
            rows, text = SECTIONS[name](args, images)
            payload[name] = rows
            print("\n" + text + "\n", flush=True)
            write_json(args.out, payload)  # after each section, so a later failure keeps it


if __name__ == "__main__":
    main()
