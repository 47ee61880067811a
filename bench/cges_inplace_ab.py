"""A/B of the per-step CGES prox, interleaved in one process so both sides see the same load:
the generic path (group matrix view, ``cges_step``, copy back) against the in-place step
(``cges_step_``), on the MLP 784-300-10's and LeNet's layers at CGES's defaults, one thread.
Prints the median over 22 alternating rounds of one prox on all layers.

    python bench/cges_inplace_ab.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from trainables.regularizers import LayerRegularizer  # noqa: E402
from trainables.regularizers.cges import CGES  # noqa: E402


class Generic(CGES):
    in_place = False  # the path every other regularizer takes


NETS = {"mlp": [(300, 784), (10, 300)], "lenet": [(32, 1, 5, 5), (64, 32, 5, 5), (1024, 3136), (10, 1024)]}


def main() -> None:
    torch.set_num_threads(1)
    for net, shapes in NETS.items():
        mods = [nn.Linear(s[1], s[0]) if len(s) == 2 else nn.Conv2d(s[1], s[0], s[2]) for s in shapes]
        mus = [0.2 + 0.6 * i / max(len(shapes) - 1, 1) for i in range(len(shapes))]
        sides = {kind: [LayerRegularizer(str(i), m, "input_position", cls(lam=1e-2, mu=mu))
                        for i, (m, mu) in enumerate(zip(mods, mus))]
                 for kind, cls in (("generic", Generic), ("in place", CGES))}
        times: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(25):
            for kind, layers in sides.items():
                t0 = time.perf_counter()
                for layer in layers:
                    layer.apply_prox(1e-5)
                times[kind].append(time.perf_counter() - t0)
        g, n = (statistics.median(times[k][3:]) for k in sides)
        print(f"{net}: generic {g * 1e3:.2f} ms, in place {n * 1e3:.2f} ms, {g / n:.2f}x faster")


if __name__ == "__main__":
    main()
