"""``sparsetune search | frontier | export``: the commands that use ray, optuna and mlflow.

``frontier`` and ``export`` read MLflow only: they import neither ray nor torch (nor
``trainables``, whose package loads torch), so they start in a couple of seconds.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from trainables.schema import CONFIG_FILE

__all__ = ["add_subcommands"]

_SEARCH_HELP = """\
Run a multi-objective search described by SPEC (see examples/quickstart.yaml): Ray Tune runs the
trials (locally, or on a cluster with --address auto), Optuna's sampler chooses each trial's
regularizer family and hyperparameters, and MLflow records every trial and the Pareto frontier
of accuracy vs non-zero parameters vs FLOPs. The spec is validated completely before Ray starts.
"""

_SEARCH_EPILOG = """\
examples:
  sparsetune search examples/quickstart.yaml
  sparsetune search examples/quickstart.yaml --resume            # continue the latest interrupted run
  ray job submit --address http://HEAD:8265 --working-dir . -- \\
      sparsetune search examples/search/lenet_cges.yaml --address auto
"""

_FRONTIER_HELP = "Print the Pareto frontier of a search (the latest of EXPERIMENT unless --search-id)."
_EXPORT_HELP = """\
Write the chosen runs' exact TrialConfig files (and an index.csv) to --out. Without constraints:
the Pareto frontier. With constraints: the Pareto-optimal runs among those that satisfy them
(e.g. the most accurate network with at most N non-zero parameters). `sparsetune train` re-runs
an exported file and reproduces its parameter counts.
"""


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("search", help="run a multi-objective hyperparameter search",
                       description=_SEARCH_HELP, epilog=_SEARCH_EPILOG, formatter_class=raw)
    p.add_argument("spec", help="a search spec YAML file")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                   help="continue an interrupted search: the latest one of this spec, or RUN_DIR")
    p.add_argument("--address", help="Ray cluster to join ('auto' on a cluster node); default: local Ray")
    p.add_argument("--trials", type=int, help="override the spec's number of trials")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop after this long (Tune's time_budget_s; overrides the spec's time_budget_s); "
                        "trials not started are not failures, and --resume continues the search")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_search)

    for name, short, help_text, func in (
            ("frontier", "print the Pareto frontier of a search", _FRONTIER_HELP, _cmd_frontier),
            ("export", "write the frontier's (or the chosen runs') exact configs", _EXPORT_HELP, _cmd_export)):
        q = sub.add_parser(name, help=short, description=help_text, formatter_class=raw)
        q.add_argument("--experiment", required=True, help="the MLflow experiment (the spec's name)")
        q.add_argument("--search-id", help="one search of the experiment (default: the latest)")
        q.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
        q.add_argument("--max-params", type=float, metavar="N", help="keep runs with params_nonzero <= N")
        q.add_argument("--max-compact-params", type=float, metavar="N",
                       help="keep runs with params_compact <= N (what compact_model.pt stores, zeros included)")
        q.add_argument("--max-flops", type=float, metavar="F", help="keep runs with flops_compact <= F")
        q.add_argument("--min-accuracy", type=float, metavar="A", help="keep runs with val_accuracy >= A")
        if name == "frontier":
            q.add_argument("--plot", metavar="PNG", help="also draw the frontier (accuracy vs --plot-x) to PNG")
            q.add_argument("--plot-x", choices=("params_nonzero", "params_compact", "flops_compact"),
                           default="params_nonzero",
                           help="the x axis of --plot (default: params_nonzero)")
            q.add_argument("--all", action="store_true",
                           help="list every complete trial (with a pareto column), not only the frontier")
        else:
            q.add_argument("--out", required=True, help="output folder for the YAML files and index.csv")
        q.set_defaults(func=func)


def _cmd_search(args: argparse.Namespace) -> int:
    from .frontier import CHANCE_CAUSES
    from .spec import load_spec

    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        from .locations import InputError

        raise InputError("--time-budget", "must be a positive number of seconds", args.time_budget)
    spec = load_spec(args.spec, trials=args.trials)  # every spec error surfaces here, before Ray
    from .run import run_search

    outcome = run_search(spec, Path(args.spec).read_text(), address=args.address, resume=args.resume,
                         quiet=args.quiet, time_budget_s=args.time_budget)
    frontier = outcome.frontier
    if not args.quiet and frontier.rows:
        _print_table(frontier, frontier.points, f"Pareto frontier of {outcome.search_id} ("
                                                f"{int(frontier.mask.sum())} of {len(frontier.rows)} complete trials); "
                                                f"hypervolume {frontier.hypervolume:.4f}")
    failed = sum(n for n, _ in outcome.failures)
    if failed:  # one line per distinct cause, on stderr: what went wrong, however quiet
        done = len(frontier.rows) + len(frontier.others)
        print(f"sparsetune search: {failed} of {done} trials failed:", file=sys.stderr)
        for n, cause in outcome.failures:
            print(f"  {n} × {cause}", file=sys.stderr)
    resume = f"sparsetune search {args.spec} --resume (or --resume {outcome.path})"
    if not outcome.complete and not outcome.budget_hit:
        print(f"sparsetune search: interrupted; continue it with: {resume}", file=sys.stderr)
        return 130
    if not frontier.rows:
        why = "within the time budget" if outcome.budget_hit else "(see the causes above)"
        print(f"sparsetune search: error: no trial completed {why}; nothing to export", file=sys.stderr)
        if outcome.budget_hit:
            print(f"continue it with: {resume}", file=sys.stderr)
        return 1
    if outcome.budget_hit:
        print(f"sparsetune search: time budget reached; continue it with: {resume}", file=sys.stderr)
    if frontier.at_chance:  # the search ran as told, but its frontier is no result: the last word
        print(f"sparsetune search: warning: every trial is at chance level: {CHANCE_CAUSES}", file=sys.stderr)
    if not args.quiet:
        print(f"the frontier: {outcome.parent_url}")
        print(f"its runs: {outcome.url}")
        print(f"Optuna dashboard: optuna-dashboard {outcome.optuna_storage}")
        print(f"export it with: sparsetune export --experiment {spec.name} --out exported/{spec.name}")
    return 0


def _load(args: argparse.Namespace):
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # when the MLflow client reads
    from .locations import InputError, resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(args.tracking_uri)
    except ValueError as e:
        raise InputError("--tracking-uri", str(e), args.tracking_uri) from None
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise InputError("--tracking-uri", "no MLflow store there (run a search first)", uri)
    from .frontier import objectives_from_json
    from .store import NotAStore, load_frontier, open_store

    try:
        reader = open_store(uri)  # a SQLite store is read without loading MLflow (search/store.py)
    except NotAStore as e:
        raise InputError("--tracking-uri", str(e), uri) from None
    experiment_id, parent = reader.find_search(args.experiment, args.search_id)
    if parent is None:
        what = f"search {args.search_id!r} in " if args.search_id else ""
        raise InputError("--experiment", f"no {what}search recorded in {uri}", args.experiment)
    # the objectives as the search defined them, hypervolume references included: the same
    # hypervolume as the search's own
    objectives = objectives_from_json(parent.params["objectives"])
    frontier = load_frontier(reader, experiment_id, parent.run_id, objectives)
    return reader, parent, _constrained(frontier, args)


def _constrained(frontier, args: argparse.Namespace):
    """The frontier of the runs that meet --max-params / --max-compact-params / --max-flops /
    --min-accuracy."""
    from .frontier import Frontier

    limits = (("params_nonzero", args.max_params, lambda v, c: v <= c),
              ("params_compact", args.max_compact_params, lambda v, c: v <= c),
              ("flops_compact", args.max_flops, lambda v, c: v <= c),
              ("val_accuracy", args.min_accuracy, lambda v, c: v >= c))
    if all(c is None for _, c, _ in limits):
        return frontier
    rows = [r for r in frontier.rows
            if all(c is None or (isinstance(r.get(k), float) and ok(r[k], c)) for k, c, ok in limits)]
    return Frontier.of(rows, frontier.objectives, frontier.others)


def _cmd_frontier(args: argparse.Namespace) -> int:
    _, parent, frontier = _load(args)
    rows = frontier.ranked if args.all else frontier.points
    _print_table(frontier, rows, f"{parent.run_name}: {int(frontier.mask.sum())} Pareto-optimal of "
                                 f"{len(frontier.rows)} complete trials; hypervolume {frontier.hypervolume:.4f}",
                 pareto_column=args.all)
    if args.plot:
        from .plots import frontier_figure

        y = next((o.metric for o in frontier.objectives if o.mode == "max"), "val_accuracy")
        title = f"{parent.run_name}: {len(frontier.rows)} complete trials"
        frontier_figure(frontier, args.plot_x, y, title=title).savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"wrote {args.plot}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    reader, parent, frontier = _load(args)
    chosen = frontier.points
    if not chosen:
        print("sparsetune export: no complete run meets the constraints", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for rank, row in enumerate(chosen):
        # the trial's own config.yaml, byte for byte: TrialConfig.to_dict() of exactly what it ran
        local = reader.download(row["run_id"], CONFIG_FILE, out / f".dl{rank}")
        # a path point's config.yaml is its path truncated after that point: it re-runs to exactly it
        candidate = row.get("candidate", row["trial_id"])
        name = f"rank{rank}_{row['regularizer']}_{candidate.replace('/', '_')}.yaml"
        header = (f"# exported from MLflow run {row['run_id']} (search {parent.run_name}, trial "
                  f"{candidate})\n# " + ", ".join(f"{o.metric}={row.get(o.metric)}" for o in frontier.objectives)
                  + f", test_accuracy={row.get('test_accuracy')}\n")
        (out / name).write_text(header + Path(local).read_text())
        Path(local).unlink()
        Path(local).parent.rmdir()
        index.append({"file": name, **{k: row.get(k) for k in frontier.columns()
                                       if not k.startswith("param:") and k not in ("state", "cause")},
                      "pareto": True})
    with open(out / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(index[0]))
        writer.writeheader()
        writer.writerows(index)
    _print_table(frontier, chosen, f"exported {len(chosen)} config{'s' if len(chosen) != 1 else ''} to {out}")
    return 0


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def _print_table(frontier, rows: list[dict], title: str, pareto_column: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = [o.metric for o in frontier.objectives]
    cols = ["trial_id", *(["point"] if any("point" in r for r in rows) else []), "regularizer",
            *(["pareto"] if pareto_column else []), *metrics,
            *[c for c in ("test_accuracy", "sparsity") if c not in metrics]]
    table = Table(title=title)
    for c in cols:
        table.add_column(c, justify="left" if c in ("trial_id", "regularizer") else "right")
    for r in rows:
        table.add_row(*[_fmt(r.get(c)) for c in cols])
    Console(width=None if sys.stdout.isatty() else 160).print(table)
