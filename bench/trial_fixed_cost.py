"""What a trial costs before its first epoch and after its last, as a ratio to one epoch.

In process, the work a search's trial does in its worker (``search.trainable.train_trial``), timed
from the outside through ``fit``'s report callback (no private seams):

- **before**: the config parsed (``TrialConfig.from_dict``), then ``fit`` up to its first epoch:
  data loaded and split, model built, the config's checks, optimizer and regularizer set up
  (the time to the first report, less that epoch's training time and one validation pass);
- **per epoch, besides training**: the validation pass and the metrics of each epoch (the gap
  between two reports, less the epoch's ``epoch_time_s``; median over the middle epochs);
- **after**: the last epoch's finish (compaction, the compacted network's checks and its test
  evaluation: the last gap less the epoch and a validation pass) and the final checkpoint the
  worker writes (``torch.save`` of the run's state and ``save_run``: config, result.json, the
  compact model).

Not here, measured by ``bench/ray_overhead.py`` (RESULTS Performance §3): the actor's start (~4 s
for a search's first worker, reused by later trials) and the driver's MLflow run per trial.

    python bench/trial_fixed_cost.py                       # digits MLP, MNIST-10k MLP, LeNet: ~2 min
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

import torch  # noqa: E402

from trainables import fit, save_run  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402

MNIST = {"name": "idx", "path": str(ROOT.parent / "shared/data/mnist"), "test_fraction": 0.2, "test_split": "last"}
CASES = {
    "digits MLP 64-100-10, group lasso": {
        "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [100]},
        "optim": {"name": "sgd", "lr": 0.1, "epochs": 6}, "regularizer": {"name": "group_lasso", "lam": 1e-3}},
    "MNIST-10k MLP 784-300-10 (BN), group lasso": {
        "data": MNIST, "model": {"name": "mlp", "hidden": [300], "batch_norm": True},
        "optim": {"name": "momentum", "momentum": 0.9, "lr": 0.01, "epochs": 6, "batch_size": 128},
        "regularizer": {"name": "group_lasso", "lam": 0.05, "layers": [0], "groups": "input"}},
    "MNIST-10k LeNet-5, CGES": {
        "data": MNIST, "model": {"name": "lenet_cges"},
        "optim": {"name": "momentum", "momentum": 0.9, "lr": 0.01, "epochs": 4, "batch_size": 128},
        "regularizer": {"name": "cges", "lam": 1e-3}},
}


def measure(raw: dict, threads: int | None) -> dict:
    t0 = time.perf_counter()
    cfg = TrialConfig.from_dict(raw)
    parsed = time.perf_counter() - t0
    stamps: list[float] = []
    epochs: list[float] = []
    final = {}

    def report(epoch) -> None:
        stamps.append(time.perf_counter())
        epochs.append(float(epoch.metrics["epoch_time_s"]))
        if epoch.final:
            final["state"] = epoch.state()

    start = time.perf_counter()
    result = fit(cfg, report, threads=threads)
    gaps = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    val = statistics.median(g - e for g, e in zip(gaps[1:-1], epochs[1:-1]))  # validation + metrics per epoch
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        torch.save(final["state"], Path(d) / "state.pt")
        save_run(result, d)
    checkpoint = time.perf_counter() - t1
    epoch = statistics.median(epochs[1:])
    before = parsed + gaps[0] - epochs[0] - val
    finish = gaps[-1] - epochs[-1] - val
    return {"epoch_s": epoch, "first_epoch_s": epochs[0], "val_per_epoch_s": val, "before_s": before,
            "finish_s": finish, "checkpoint_s": checkpoint, "after_s": finish + checkpoint,
            "epochs": len(epochs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=3)
    args = parser.parse_args()
    repeats = args.repeats or 3
    payload = base_payload("trial_fixed_cost", args, torch.device("cpu"))
    header = print_header("A trial's fixed cost in its worker, as a ratio to one epoch", torch.device("cpu"), [
        f"in process, `fit` timed through its report callback; median of {repeats} runs each; "
        f"threads {args.threads or 'torch default'}"])
    rows, out = [], {}
    for name, raw in CASES.items():
        runs = [measure(raw, args.threads) for _ in range(repeats)]
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        out[name] = {"median": m, "runs": runs}
        rows.append([name, f"{m['epoch_s']:.3f} s", f"{m['before_s']:.3f} s ({m['before_s'] / m['epoch_s']:.2f}×)",
                     f"{m['val_per_epoch_s']:.3f} s ({m['val_per_epoch_s'] / m['epoch_s']:.2f}×)",
                     f"{m['finish_s']:.3f} s", f"{m['checkpoint_s']:.3f} s",
                     f"{m['after_s']:.3f} s ({m['after_s'] / m['epoch_s']:.2f}×)"])
        print(f"{name}: done", flush=True)
    print()
    print(markdown_table(["trial", "one epoch (training)", "before the first epoch", "validation per epoch",
                          "finish (compact, test)", "final checkpoint", "after the last epoch"], rows))
    payload.update(header=header, results=out)
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
