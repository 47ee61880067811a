"""The ``sparsetune`` command: train | predict | export-model | search | frontier | export.

Exit status: 0 on success, 2 for invalid input (a bad config or spec, a missing file: one clear
message naming the field and the value, before any work starts), 1 when a run fails.
Heavy imports (torch, ray, mlflow) happen inside the subcommands, so ``--help`` is instant and
``sparsetune train`` never loads the search stack.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

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
  result.json        test/val accuracy, parameter counts (total, non-zero, unique, and
                     params_compact: what compact_model.pt stores densely), sparsity,
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
  sparsetune train exported/quickstart/rank0_growl_3807ba92.yaml --out runs/rerun   # re-run an exported config
"""


def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trainables import ConfigError, TrialConfig, check_trial, fit, save_run
    from trainables.train import check_device

    cfg = TrialConfig.from_yaml(args.config, overrides=args.set)
    try:
        check_device(cfg)
        check_trial(cfg)  # the real network built and run once, before training
    except ConfigError as e:  # name the file, as the errors of TrialConfig.from_yaml do
        raise ConfigError(e.problems, e.source or args.config) from None
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    console = Console(stderr=True)
    def report(epoch) -> None:
        progress.report(epoch)
        if epoch.result is not None and cfg.path is not None:  # every point of a path: its own run
            save_run(epoch.result, Path(args.out) / "points" / str(int(epoch.metrics["point"])))

    with _EpochProgress(console, cfg, quiet=args.quiet) as progress:
        result = fit(cfg, report=report, threads=threads)
    out = save_run(result, args.out)
    if not args.quiet:
        _print_summary(console, result.metrics, out)
        if cfg.path is not None:
            _print_points(console, result.metrics["points"], Path(args.out) / "points")
    return 0


def _print_points(console, points: list[dict], where: Path) -> None:
    """One row per point of a path (each saved under ``where/<point>``, its config re-running it)."""
    from rich.table import Table

    table = Table(title=f"path: {len(points)} points ({where}/<point>)")
    for column in ("point", "target", "epochs", "test accuracy", "params compact", "FLOPs compact"):
        table.add_column(column, justify="right")
    for p in points:
        table.add_row(str(p["point"]), f"{p['target']:.2f}", str(p["epoch"]), f"{p['test_accuracy']:.4f}",
                      f"{p['params_compact']:,}", f"{p['flops_compact']:,}")
    console.print(table)


class _EpochProgress:
    """A rich progress bar over epochs, showing validation accuracy and sparsity as it goes."""

    def __init__(self, console, cfg, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        total = cfg.total_epochs
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
        stage = f"stage {metrics['stage'] + 1}  " if "stage" in metrics else ""
        status = f"{stage}{metrics['phase']}  loss {metrics['train_loss']:.3f}"
        if "val_accuracy" in metrics:
            status += f"  val acc {metrics['val_accuracy']:.3f}"
        status += f"  zero weights {metrics['weights_sparsity']:.1%}"
        self.progress.update(self.task, advance=1, status=status)


def _print_summary(console, m: dict, out) -> None:
    from rich.table import Table

    table = Table(title=f"result ({out})", show_header=False)

    def accuracy(split: str) -> str:
        chance = m.get(f"{split}_at_chance") and m.get("chance_accuracy" if split == "test" else "val_chance_accuracy")
        note = f"  [bold red]at chance level[/] ({chance:.4f})" if chance else ""
        return f"{m[f'{split}_accuracy']:.4f}{note}"

    rows = [("test accuracy", accuracy("test"))]
    if "val_accuracy" in m:
        rows.append(("val accuracy", accuracy("val")))
    rows += [
        ("parameters (non-zero / total)", f"{m['params_nonzero']:,} / {m['params_total']:,}"),
        ("unique parameters", f"{m['params_unique']:,}"),
        ("sparsity", f"{m['sparsity']:.2%}"),
    ]
    if "params_compact" in m:  # what compact_model.pt stores densely, zeros included
        compact = m["params_compact"]
        rows += [("parameters in compact_model.pt (dense)", f"{compact:,}"),
                 ("physical compression (total / compact)",
                  f"{m['params_total'] / compact:.2f}x" if compact else "n/a")]
    if "target_sparsity" in m:
        rows.append(("target sparsity (reached)", f"{m['target_sparsity']:.2%} ({m['target_reached']:.2%} "
                                                  f"of the regularized {m['target_unit']})"))
    rows += [
        ("sparse compression (total / unique non-zero)", f"{m['compression_rate']:.2f}x"),
        ("parameter sharing", f"{m['param_sharing']:.2f}"),
        ("FLOPs (compact / dense)", f"{m['flops_compact']:,} / {m['flops_dense']:,}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    if m.get("test_at_chance") or m.get("val_at_chance"):
        from .frontier import CHANCE_CAUSES

        console.print(f"[bold red]at chance level:[/] the network predicts {CHANCE_CAUSES}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


_PREDICT_HELP = """\
Predict with a trained run's compact model. RUN_DIR is a `sparsetune train --out` folder (or a
trial's downloaded artifacts): its compact_model.pt records the preprocessing (input shape,
normalisation, image transforms, CSV columns) and the class labels. INPUT holds raw examples in
the training format:
  a .csv     the training columns by name, in any order (the target column optional)
  a .npz     array X as in training (y optional)
  a folder   images (any depth; for a model trained on an image_folder); an image inside a
             folder named after a class counts as labelled with it
--out gets one row per example: id (the row number, or the image's path under INPUT), label
(the predicted class, as in the training labels) and p_<class>, the probability of each class.
With labels in INPUT the accuracy is printed: on the test split's raw rows it is the run's
test_accuracy.
"""

_PREDICT_EPILOG = """\
examples:
  sparsetune predict runs/growl new_rows.csv --out predictions.csv
  sparsetune predict runs/pets photos/ --out predictions.csv
"""

_EXPORT_MODEL_HELP = """\
Write a run's compact model as one self-contained file for serving: TorchScript
(torch.jit.load) or ONNX (onnxruntime; needs `pip install 'sparsetune[onnx]'`). The
normalisation is folded into the graph, so the input is [batch, *input_shape] of raw values as
in the training data (for an image folder: pixel values 0..255 after the recorded grayscale,
resize and center_crop) and the output is the logits. The class labels, the input shape and
the image transforms are recorded in the file (ONNX metadata_props, TorchScript extra files),
as JSON under sparsetune.classes, sparsetune.input_shape, sparsetune.image.
"""

_EXPORT_MODEL_EPILOG = """\
examples:
  sparsetune export-model runs/growl --format onnx --out growl.onnx
  sparsetune export-model runs/growl --format torchscript --out growl.pt
"""


def _cmd_predict(args: argparse.Namespace) -> int:
    from trainables.deploy import predict

    summary = predict(args.run_dir, args.input, args.out, batch_size=args.batch_size)
    line = f"wrote {summary['n']} predictions to {summary['out']}"
    if summary["accuracy"] is not None:
        line += f" (accuracy {summary['accuracy']:.4f} on the input's labels)"
    print(line, file=sys.stderr)
    return 0


def _cmd_export_model(args: argparse.Namespace) -> int:
    from trainables.deploy import export_model

    out = export_model(args.run_dir, args.format, args.out)
    print(f"wrote {args.format} model to {out}", file=sys.stderr)
    return 0


def _add_deploy_subcommands(sub: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("predict", help="predict with a run's compact model on raw inputs",
                       description=_PREDICT_HELP, epilog=_PREDICT_EPILOG, formatter_class=raw)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder holding compact_model.pt")
    p.add_argument("input", metavar="INPUT", help="a .csv, a .npz or a folder of images")
    p.add_argument("--out", required=True, help="the predictions CSV to write")
    p.add_argument("--batch-size", type=int, default=1024, help="examples per forward pass (default: 1024)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export-model", help="write a run's compact model as ONNX or TorchScript",
                       description=_EXPORT_MODEL_HELP, epilog=_EXPORT_MODEL_EPILOG, formatter_class=raw)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder holding compact_model.pt")
    p.add_argument("--format", required=True, metavar="{onnx,torchscript}", help="the file format")
    p.add_argument("--out", required=True, help="the file to write")
    p.set_defaults(func=_cmd_export_model)


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
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="torch threads for the run (default: every core this process may use)")
    p.set_defaults(func=_cmd_train)
    _add_deploy_subcommands(sub)

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
        hint = f"; continue it with: sparsetune search {args.spec} --resume" if args.command == "search" else ""
        print(f"sparsetune {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as e:
        from trainables.configbase import ConfigError  # torch-free, as are the two below
        from trainables.yamlio import YamlError

        from .locations import InputError

        if isinstance(e, (InputError, ConfigError, YamlError)):
            print(f"sparsetune {args.command}: error: {e}", file=sys.stderr)
            return 2
        if type(e).__module__.startswith("trainables."):  # raised by the training stack, so it is loaded
            from trainables.data import DataUnavailable
            from trainables.train import TrainingDiverged

            if isinstance(e, TrainingDiverged):
                print(f"sparsetune {args.command}: training diverged: {e}", file=sys.stderr)
                return 1
            if isinstance(e, DataUnavailable):
                print(f"sparsetune {args.command}: error: {e}", file=sys.stderr)
                return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
