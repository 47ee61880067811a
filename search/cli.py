"""The ``sparsetune`` command: train | search | frontier | export.

Exit status: 0 on success, 2 for invalid input (a bad config or spec, a missing file: one clear
message naming the field and the value, before any work starts), 1 when a run fails.
Heavy imports (torch, ray, mlflow) happen inside the subcommands, so ``--help`` is instant and
``sparsetune train`` never loads the search stack.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

_MAIN_HELP = """\
Distributed hyperparameter search for compact neural networks.

Train one network under a structured-sparsity regularizer (l1, group lasso, exclusive lasso,
CGES, GrOWL), or search regularizer families and strengths with Ray Tune + Optuna's
multi-objective samplers, tracking the Pareto frontier of accuracy vs parameters vs FLOPs in
MLflow, then export the frontier's configs, which `sparsetune train` re-runs exactly.
"""

_TRAIN_HELP = """\
Train one network as CONFIG says and write, in --out:
  config.yaml        the exact config of the run (re-run it with `sparsetune train`)
  result.json        test/val accuracy, parameter counts (total, non-zero, unique), sparsity,
                     compression rate, parameter sharing, dense and compacted FLOPs, per-layer
                     details, and the per-epoch history
  compact_model.pt   the physically compacted network (state_dict + config; load it with
                     trainables.compact.load_compact, torch.load(weights_only=True) inside)
"""

_TRAIN_EPILOG = """\
examples:
  sparsetune train examples/train/growl_digits.yaml --out runs/growl
  sparsetune train examples/train/cges_digits.yaml --out runs/cges \\
      --set regularizer.lam=3e-3 --set optim.epochs=20
  sparsetune train exported/rank0_trial_00003.yaml --out runs/rerun   # re-run an exported config
"""


def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trainables import ConfigError, TrialConfig, check_trial, fit, save_run

    cfg = TrialConfig.from_yaml(args.config, overrides=args.set)
    try:
        check_trial(cfg)  # the real network built and run once, before training
    except ConfigError as e:  # name the file, as the errors of TrialConfig.from_yaml do
        raise ConfigError(e.problems, e.source or args.config) from None
    console = Console(stderr=True)
    with _EpochProgress(console, cfg, quiet=args.quiet) as progress:
        result = fit(cfg, report=progress.report)
    out = save_run(result, args.out)
    if not args.quiet:
        _print_summary(console, result.metrics, out)
    return 0


class _EpochProgress:
    """A rich progress bar over epochs, showing validation accuracy and sparsity as it goes."""

    def __init__(self, console, cfg, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        total = cfg.optim.epochs + (cfg.tying.retrain_epochs if cfg.tying.enabled else 0)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                 console=console, disable=quiet)
        self.task = self.progress.add_task(f"{cfg.regularizer.name} on {cfg.data.name}", total=total,
                                           status="")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def report(self, epoch) -> None:
        metrics = epoch.metrics
        status = f"{metrics['phase']}  loss {metrics['train_loss']:.3f}"
        if "val_accuracy" in metrics:
            status += f"  val acc {metrics['val_accuracy']:.3f}"
        status += f"  zero weights {metrics['weights_sparsity']:.1%}"
        self.progress.update(self.task, advance=1, status=status)


def _print_summary(console, m: dict, out) -> None:
    from rich.table import Table

    table = Table(title=f"result ({out})", show_header=False)
    rows = [("test accuracy", f"{m['test_accuracy']:.4f}")]
    if "val_accuracy" in m:
        rows.append(("val accuracy", f"{m['val_accuracy']:.4f}"))
    rows += [
        ("parameters (non-zero / total)", f"{m['params_nonzero']:,} / {m['params_total']:,}"),
        ("unique parameters", f"{m['params_unique']:,}"),
        ("sparsity", f"{m['sparsity']:.2%}"),
        ("compression rate", f"{m['compression_rate']:.2f}x"),
        ("parameter sharing", f"{m['param_sharing']:.2f}"),
        ("FLOPs (compact / dense)", f"{m['flops_compact']:,} / {m['flops_dense']:,}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsetune", description=_MAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one network from a config file", description=_TRAIN_HELP,
                       epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a TrialConfig YAML file (see examples/train/)")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set regularizer.lam=1e-3 (repeatable; VALUE is YAML)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=_cmd_train)

    from . import commands  # search | frontier | export (kept apart: they use ray/optuna/mlflow)

    commands.add_subcommands(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"sparsetune: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _show_warning  # one line, no source location: for users, not developers
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"sparsetune {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # the training side's error types are looked up only if a command loaded it: `frontier`
        # and `export` never import trainables (whose package loads torch)
        from .locations import InputError

        train = sys.modules.get("trainables.config")
        yamlio = sys.modules.get("trainables.yamlio")
        input_errors = (InputError, *([train.ConfigError] if train else []), *([yamlio.YamlError] if yamlio else []))
        if isinstance(e, input_errors):
            print(f"sparsetune {args.command}: error: {e}", file=sys.stderr)
            return 2
        if "trainables" in sys.modules:
            from trainables import TrainingDiverged
            from trainables.data import DataUnavailable

            if isinstance(e, TrainingDiverged):
                print(f"sparsetune {args.command}: training diverged: {e}", file=sys.stderr)
                return 1
            if isinstance(e, DataUnavailable):
                print(f"sparsetune {args.command}: error: {e}", file=sys.stderr)
                return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
