"""Where the per-step CGES prox's time goes on the MLP 784-300-10 (one thread).

1. Inside a real ``fit`` (MNIST-10k, 2,000 examples, batch 64, the config defaults of CGES with
   ``prox_every: step``, 1 + 7 epochs): the trainer's ``_prox`` and ``_backward_step`` wrapped with
   a timer, against a plain run (``none``), alternating ``none`` / ``cges`` twice.
2. ``cges_step_`` alone on each layer's weight shape (the 300 x 784 hidden layer, the 10 x 300
   output layer), and the six weight-sized passes of the hidden layer's step one by one.

    python bench/cges_step_parts.py --out bench/results/cges_step_parts.json
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import add_common_args, base_payload, markdown_table, print_header, timeit, write_json

import torch  # noqa: E402

import trainables.train as T  # noqa: E402
from trainables import TrialConfig, fit  # noqa: E402
from trainables.regularizers.cges import cges_step_  # noqa: E402


def config(reg: dict, data_dir: str) -> TrialConfig:
    return TrialConfig.from_dict({
        "seed": 0, "device": "cpu", "tying": {"enabled": False}, "regularizer": reg,
        "data": {"name": "idx", "path": data_dir, "test_fraction": 0.2, "test_split": "last", "train_subset": 2000},
        "model": {"name": "mlp", "hidden": [300]}, "optim": {"name": "sgd", "lr": 0.1, "batch_size": 64, "epochs": 8}})


def in_fit(data_dir: str) -> list[list]:
    times: dict[str, list[float]] = {"prox": [], "step": []}
    prox, backward = T._Trainer._prox, T._Trainer._backward_step

    def timed_prox(self, lr, step):
        t0 = time.perf_counter()
        prox(self, lr, step)
        times["prox"].append(time.perf_counter() - t0)

    def timed_step(self, loss):
        t0 = time.perf_counter()
        out = backward(self, loss)
        times["step"].append(time.perf_counter() - t0)
        return out

    T._Trainer._prox, T._Trainer._backward_step = timed_prox, timed_step
    rows = []
    try:
        fit(config({"name": "none"}, data_dir))  # warm-up
        for reg in ({"name": "none"}, {"name": "cges", "prox_every": "step"}) * 2:
            times["prox"].clear()
            times["step"].clear()
            epochs: list[float] = []
            fit(config(reg, data_dir), report=lambda r: epochs.append(r.metrics["epoch_time_s"]))
            rows.append([reg["name"], statistics.median(epochs[1:]), statistics.median(times["step"]),
                         statistics.median(times["prox"]) if times["prox"] else None])
    finally:
        T._Trainer._prox, T._Trainer._backward_step = prox, backward
    return rows


def pieces() -> list[list]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, shape in (("hidden 300 x 784", (300, 784)), ("output 10 x 300", (10, 300))):
        W0 = torch.randn(*shape, generator=g) * 0.05
        W, S = W0.clone(), torch.empty_like(W0)

        def step():
            W.copy_(W0)
            cges_step_(W, (0,), 0.1 * 0.01 * 0.8, 0.1 * 0.01 * 0.2, S)

        copy = timeit(lambda: W.copy_(W0), repeats=9).median
        rows.append([f"`cges_step_`, {name}", timeit(step, repeats=9).median - copy])
    W, S = torch.randn(300, 784, generator=g) * 0.05, torch.empty(300, 784)
    col, tau = torch.ones(1, 784), torch.full((1, 784), 0.01)
    for name, fn in (("square + column sums", lambda: torch.mul(W, W, out=S).sum((0,), keepdim=True)),
                     ("abs + column sums", lambda: torch.abs(W, out=S).sum((0,), keepdim=True)),
                     ("scale the columns (mul_)", lambda: W.mul_(col)),
                     ("clamp to [-tau, tau]", lambda: torch.clamp(W, -tau, tau, out=S)),
                     ("subtract (sub_)", lambda: W.sub_(S))):
        rows.append([f"hidden layer pass: {name}", timeit(fn, repeats=9).median])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=9)
    parser.add_argument("--data-dir", default="/work/shared/data/mnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or 1)
    payload = base_payload("cges_step_parts", args, torch.device("cpu"))
    header = print_header("Per-step CGES on the MLP: where the time goes", torch.device("cpu"), [])
    fits = in_fit(args.data_dir)
    print(markdown_table(["run", "epoch (median)", "backward + optimizer step", "prox per step"],
                         [[n, f"{e * 1e3:.1f} ms", f"{s * 1e3:.2f} ms", f"{p * 1e3:.2f} ms" if p else "–"]
                          for n, e, s, p in fits]))
    none = [e for n, e, _, _ in fits if n == "none"]
    cges = [e for n, e, _, _ in fits if n == "cges"]
    print(f"\nepoch ratio cges / none, per pair: {', '.join(f'{c / n:.2f}x' for c, n in zip(cges, none))}\n")
    parts = pieces()
    print(markdown_table(["piece", "time"], [[n, f"{t * 1e6:.0f} µs"] for n, t in parts]))
    payload.update(header=header, fits=fits, pieces=parts)
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
