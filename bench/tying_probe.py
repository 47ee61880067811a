"""Why affinity-propagation tying does not converge on some MNIST-10k layers: re-train recorded
Table-1 rows (their exact configs, tying off) and run scikit-learn's affinity propagation on the
first layer's non-zero rows (GrOWL Eq. 10 similarity, preference 0.6) at several damping /
iteration settings, and as ``trainables.tying.cluster_rows`` does it (per connected component of the
graph of pairs above the preference), printing whether each converges, its clusters and time.

    python bench/tying_probe.py                                   # group lasso seed 1, GrOWL + l2 seed 2
    python bench/tying_probe.py --rows "GrOWL:1" --settings 0.9:4000 components
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, add_common_args, base_payload, markdown_table, print_header, write_json

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainables import TrialConfig, fit  # noqa: E402
from trainables.groups import to_groups  # noqa: E402
from trainables.tying import (_affinity_propagation, cluster_rows, components,  # noqa: E402
                              scaled_convergence_iter, similarity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=1)
    parser.add_argument("--rows-from", type=Path, default=ROOT / "bench/results/mnist_table1.json")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--rows", nargs="+", default=["group lasso:1", "GrOWL + l2:2"], metavar="LABEL:SEED")
    parser.add_argument("--settings", nargs="+", default=["0.9:4000", "0.9:16000", "0.95:16000", "0.9:32000",
                                                          "components"],
                        metavar="DAMPING:MAX_ITER|components",
                        help="plain affinity propagation on all rows at these settings; 'components': "
                             "trainables.tying.cluster_rows (per connected component, its defaults)")
    parser.add_argument("--save-rows", type=Path, default=None, metavar="PREFIX.npy",
                        help="also save each trained layer's non-zero rows (float32 .npy, one per row)")
    parser.add_argument("--preference", type=float, default=0.6)
    args = parser.parse_args()
    details = json.loads(args.rows_from.read_text())["details"]
    payload = base_payload("tying_probe", args, torch.device("cpu"))
    header = print_header("Affinity propagation on trained MNIST-10k first layers", torch.device("cpu"),
                          [f"rows {args.rows}, preference {args.preference}"])
    table, out = [], []
    for item in args.rows:
        label, seed = item.rsplit(":", 1)
        cfg = dict(details[label]["config"], seed=int(seed), tying={"enabled": False})
        cfg["data"] = {**cfg["data"], "path": str(args.data_dir)}
        model = fit(TrialConfig.from_dict(cfg)).model
        W = next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).weight.detach()
        G = to_groups(W, "input")
        S = similarity(G[G.norm(dim=1) > 0])
        off = S[~np.eye(len(S), dtype=bool)]
        if args.save_rows:
            np.save(args.save_rows.with_name(f"{args.save_rows.stem}-{label.replace(' ', '_')}-{seed}.npy"),
                    G[G.norm(dim=1) > 0].numpy().astype(np.float32))
        for setting in args.settings:
            t0 = time.perf_counter()
            if setting == "components":  # today's cluster_rows: AP per component, default damping / retries
                damping, max_iter = 0.9, 1000
                c = cluster_rows(G, args.preference)
                found = (c.labels[c.labels >= 0], c.iterations) if c.converged else None
                parts = components(S, args.preference)
            else:
                damping, max_iter = float(setting.split(":")[0]), int(setting.split(":")[1])
                found = _affinity_propagation(S, args.preference, damping, max_iter,
                                              scaled_convergence_iter(15, damping), 0)
                parts = None
            row = {"setting": setting, "row": label, "seed": int(seed), "rows": len(S), "median_similarity": float(np.median(off)),
                   "above_preference": float((off > args.preference).mean()), "damping": damping,
                   "max_iter": max_iter, "converged": found is not None,
                   "clusters": len(set(found[0])) if found else None, "seconds": time.perf_counter() - t0,
                   "components": None if parts is None else {
                       "count": len(parts), "of_two_or_more": sum(len(p) > 1 for p in parts),
                       "largest": max(len(p) for p in parts)}}
            out.append(row)
            table.append([label, seed, row["rows"], f"{row['median_similarity']:.3f}", f"{row['above_preference']:.4%}",
                          "per component" if parts is not None else f"{damping}, {max_iter}", "yes" if found else "no", row["clusters"] or "–", f"{row['seconds']:.1f} s"])
            print(f"  {label} seed {seed}: damping {damping} max_iter {max_iter}: "
                  f"{'converged' if found else 'not converged'}", flush=True)
    print()
    print(markdown_table(["row", "seed", "non-zero rows", "median similarity", "pairs above the preference",
                          "AP (damping, max_iter)", "converged", "clusters", "time"], table))
    payload.update(header=header, probes=out)
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
