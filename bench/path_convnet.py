"""A sparsity path on a conv net trained outside sparsetune (RESULTS §10): one path from the user's
weights against one full training per target.

1. **Outside sparsetune**, a plain PyTorch loop trains a small BatchNorm CNN of this file
   (``UserCNN``: two conv-BN-ReLU-pool blocks, two linear layers) on MNIST-10k's first 80% (the
   rows ``test_split: last`` keeps out of the test set), normalised as the PyTorch MNIST example
   does, and saves its ``state_dict``.
2. **One path** per family from those weights (``model.weights``): ``path.targets`` with
   ``path.epochs`` regularized + ``path.finetune_epochs`` fine-tuning epochs a stage, on channel
   groups (``groups: auto``: whole channels with their BatchNorm entries).
3. **One run per target** from the same weights, each trained as many epochs as the path spent up
   to that point (``target_sparsity`` / the pruner's ``final``, reached at the end), the way a
   search without paths buys each point.

Per point: test accuracy, the compact network's parameters and FLOPs, and the epochs it cost;
every number from the compacted model (masked eval = compacted eval is a test of the project).

    python bench/path_convnet.py --out bench/results/path_convnet_seed0.json     # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from trainables import TrialConfig, fit  # noqa: E402

FAMILIES = {
    "group_lasso": {"name": "group_lasso", "lam": 0.05, "prox_every": "step"},
    "growl": {"name": "growl", "p": 0.5, "lambda1": 0.05, "lambda2": 1e-3, "prox_every": "step"},
    "channel_magnitude": {"name": "channel_magnitude", "every": 20},
}


class UserCNN(nn.Module):
    """A user's network: nothing in it is sparsetune's."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 7 * 7, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def train_outside(data_dir: Path, out: Path, epochs: int, seed: int) -> dict:
    """The user's own training: their loop, their normalisation, their file."""
    torch.manual_seed(seed)
    x = torch.tensor(read_idx(data_dir / "t10k-images-idx3-ubyte.gz"), dtype=torch.float32)[:, None] / 255.0
    y = torch.tensor(read_idx(data_dir / "t10k-labels-idx1-ubyte.gz"), dtype=torch.int64)
    n = int(len(x) * 0.8)  # test_split: last, test_fraction: 0.2 keeps the rest for the test set
    x, y = (x[:n] - 0.1307) / 0.3081, y[:n]
    model = UserCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    torch.save(model.state_dict(), out)
    return {"epochs": epochs, "seconds": time.perf_counter() - t0}


def config(family: str, weights: Path, data_dir: Path, seed: int, targets: list[float], epochs: int,
           finetune: int) -> dict:
    return {"seed": seed, "device": "cpu",
            "data": {"name": "idx", "path": str(data_dir), "test_fraction": 0.2, "test_split": "last"},
            "model": {"name": "python", "factory": "path_convnet:UserCNN", "weights": str(weights)},
            "optim": {"name": "momentum", "momentum": 0.9, "lr": 0.01, "epochs": epochs, "batch_size": 64},
            "regularizer": dict(FAMILIES[family]),
            "path": {"targets": targets, "epochs": epochs, "finetune_epochs": finetune, "finetune_lr": 0.003}}


def one_point(cfg: dict, target: float, epochs: int) -> dict:
    """The same target bought by one training of ``epochs`` (as many as the path spent up to it):
    ``target_sparsity`` (or the pruner's ``final``) reached at its end, no path."""
    reg = dict(cfg["regularizer"])
    reg["final" if reg["name"] in ("magnitude", "channel_magnitude") else "target_sparsity"] = target
    return {**cfg, "path": None, "optim": {**cfg["optim"], "epochs": epochs}, "regularizer": reg}


def row(metrics: dict, epochs_cost: int) -> list:
    return [f"{metrics['test_accuracy']:.4f}", f"{metrics['params_compact']:,.0f}",
            f"{metrics['flops_compact']:,.0f} ({metrics['flops_compact'] / metrics['flops_dense']:.1%})", epochs_cost]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=1)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outside-epochs", type=int, default=4)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.85, 0.95])
    parser.add_argument("--stage-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    payload = base_payload("path_convnet", args, torch.device("cpu"))
    header = print_header("A sparsity path from a conv net trained outside sparsetune (MNIST-10k)",
                          torch.device("cpu"), [
        f"UserCNN trained {args.outside_epochs} epochs by a plain PyTorch loop; targets {args.targets}, "
        f"{args.stage_epochs} + {args.finetune_epochs} epochs a stage; seed {args.seed}"])
    work = Path(tempfile.mkdtemp(prefix="path-convnet-"))
    weights = work / "user_cnn.pt"
    outside = train_outside(args.data_dir, weights, args.outside_epochs, args.seed)
    stage = args.stage_epochs + args.finetune_epochs
    dense_cfg = config("group_lasso", weights, args.data_dir, args.seed, args.targets, 0, 0)
    dense_cfg.update(path=None, regularizer={"name": "none"})
    dense = fit(TrialConfig.from_dict(dense_cfg)).metrics  # the user's network, scored on the same splits
    print(f"the user's network as given: test accuracy {dense['test_accuracy']:.4f}, "
          f"{dense['params_compact']:,.0f} parameters, {dense['flops_compact']:,.0f} FLOPs "
          f"(trained outside in {outside['seconds']:.0f} s)\n")
    results = {"outside": outside, "dense": {k: dense[k] for k in ("test_accuracy", "params_compact", "flops_compact")},
               "families": {}}
    for family in args.families:
        cfg = config(family, weights, args.data_dir, args.seed, args.targets, args.stage_epochs, args.finetune_epochs)
        t0 = time.perf_counter()
        path = fit(TrialConfig.from_dict(cfg)).metrics
        path_s = time.perf_counter() - t0
        table, mine = [], {"path_seconds": path_s, "points": [], "single": []}
        single_s = 0.0
        for k, (target, point) in enumerate(zip(args.targets, path["points"])):
            t0 = time.perf_counter()
            single = fit(TrialConfig.from_dict(one_point(cfg, target, (k + 1) * stage))).metrics
            single_s += time.perf_counter() - t0
            table.append([f"{target:.2f}", *row(point, (k + 1) * stage), *row(single, (k + 1) * stage)])
            keep = ("test_accuracy", "val_accuracy", "params_compact", "flops_compact", "flops_dense", "sparsity")
            mine["points"].append({k2: point[k2] for k2 in keep if k2 in point})
            mine["single"].append({k2: single[k2] for k2 in keep if k2 in single})
        mine["single_seconds"] = single_s
        total_single = sum((k + 1) * stage for k in range(len(args.targets)))
        print(f"### {family}: one path ({len(args.targets) * stage} epochs, {path_s / 60:.1f} min) against one "
              f"run per target ({total_single} epochs, {single_s / 60:.1f} min)\n")
        print(markdown_table(["target", "path: test acc", "params", "FLOPs", "epochs (cumulative)",
                              "one run: test acc", "params", "FLOPs", "epochs"], table))
        print()
        results["families"][family] = mine
    payload.update(header=header, results=results)
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
