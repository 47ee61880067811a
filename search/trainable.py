"""The Ray trainable: ``trainables.fit`` reporting every epoch through ``tune.report``.

Each report carries a checkpoint (the resumable training state) every ``checkpoint_every_s``
seconds and on the last epoch, when it also holds ``config.yaml``, ``result.json`` and
``compact_model.pt`` (which the driver logs to MLflow). A trial's exception is classified here:
retryable ones (out of memory) are raised for Ray to retry, deterministic ones are reported as a
failed trial. Paths are absolute: Ray runs each trial in its own working directory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from ray import tune

from trainables.config import TrialConfig

from .spec import SearchSpec

__all__ = ["EPOCH_FILE", "POINTS_KEY", "STAGES_KEY", "STATE_FILE", "make_trainable", "newest_state", "train_trial"]

STATE_FILE = "state.pt"
POINTS_KEY = "points_json"  # a path trial's last report: its points' metrics, as JSON
# a path trial's report at each point it measured: the stages trained so far (a scheduler's rungs
# in a path search are stages: search.space.rung_unit)
STAGES_KEY = "stages_done"
EPOCH_FILE = "epoch.json"  # {"epoch": k}: which of a trial's checkpoints is newest, without loading them


def train_trial(config: dict[str, Any], checkpoint_every_s: float = 0.0, import_paths: tuple[str, ...] = ()) -> None:
    """One trial: ``fit`` reporting every epoch, with a checkpoint when ``checkpoint_every_s``
    seconds have passed since the last one and on the last epoch; resumed from Tune's checkpoint
    if there is one. ``import_paths`` (the driver's directory and PYTHONPATH) go on ``sys.path``
    where they exist, so a user's ``model.factory`` module imports in the worker as in the driver."""
    import torch

    for path in reversed(import_paths):
        if path not in sys.path and os.path.isdir(path):
            sys.path.insert(0, path)

    from trainables import TrainingDiverged, fit, save_run

    cfg = TrialConfig.from_dict(config)
    resume = newest_state(tune.get_checkpoint())

    last_checkpoint = time.monotonic()

    def report(epoch) -> None:
        nonlocal last_checkpoint
        metrics = {k: v for k, v in epoch.metrics.items()
                   if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        metrics["final"] = 1.0 if epoch.final else 0.0
        if epoch.result is not None and "point" in epoch.metrics:
            metrics[STAGES_KEY] = int(epoch.metrics["point"]) + 1
        if epoch.final and epoch.metrics.get("points"):  # a path: what the searcher is told about (samplers.py)
            metrics[POINTS_KEY] = json.dumps(epoch.metrics["points"])
        if epoch.result is None and time.monotonic() - last_checkpoint < checkpoint_every_s:
            tune.report(metrics)
            return
        last_checkpoint = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            torch.save(epoch.state(), Path(d) / STATE_FILE)
            (Path(d) / EPOCH_FILE).write_text(json.dumps({"epoch": int(epoch.metrics.get("epoch", 0))}))
            if epoch.result is not None:  # the finished run, or a path's point (the driver records it)
                save_run(epoch.result, d)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    try:  # as many torch threads as the trial's resources.cpu: concurrent trials never share cores
        fit(cfg, report, resume=resume, threads=_trial_cpus())
    except Exception as e:
        if _retryable(e):
            raise  # Ray retries it (max_failures), from the last checkpoint
        # deterministic (a bad config, unreadable data, a diverging loss...): the same config fails
        # the same way again, so report it instead of raising, and Ray does not retry it
        tune.report({"trial_failed": 1.0, "final": 0.0, "cause": _one_line(e),
                     "error": "".join(traceback.format_exception(e))})


def newest_state(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """The training state to resume from: the newest loadable checkpoint of this trial.

    Normally that is the one Ray hands over. After the driver was killed, Ray's restored
    experiment state can be older than the trial's directory: the checkpoint it names may have been
    deleted since (Ray keeps two), a newer one may exist (written after Ray last saved its state),
    and one may be half written. So every ``checkpoint_*`` beside Ray's (the same trial's) is a
    candidate, newest epoch first; the first that loads wins, and with none the trial starts over.
    A trial that had finished resumes from its final checkpoint and only reports its last epoch
    again. A checkpoint holding a pickled object is refused, never skipped (``weights_only``)."""
    import pickle

    import pyarrow.fs
    import torch

    if checkpoint is None:
        return None
    fs = getattr(checkpoint, "filesystem", None)
    paths = {checkpoint.path} if fs is not None else set()
    if fs is not None:
        try:
            infos = fs.get_file_info(pyarrow.fs.FileSelector(os.path.dirname(checkpoint.path.rstrip("/")),
                                                             allow_not_found=True))
        except OSError:
            infos = []
        paths |= {i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                  and i.base_name.startswith("checkpoint_")}

    def epoch_of(path: str) -> int:
        try:
            with fs.open_input_stream(f"{path}/{EPOCH_FILE}") as f:
                return int(json.loads(f.read())["epoch"])
        except Exception:  # missing (a checkpoint of an older version, a deleted one) or torn
            return -1

    ranked = sorted(paths, key=lambda p: (epoch_of(p), p == checkpoint.path, p), reverse=True)
    candidates = [tune.Checkpoint(p, filesystem=fs) for p in ranked] if fs is not None else [checkpoint]
    for candidate in candidates:
        try:
            with candidate.as_directory() as d:
                return torch.load(Path(d) / STATE_FILE, weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" in str(e):
                raise  # not a torn file: an object that would run code when loaded
        except Exception:  # noqa: BLE001 - gone, empty or half written: the next one
            pass
    return None


def _trial_cpus() -> int:
    """The CPUs Ray gave this trial (at least 1; 1 outside a Tune trial, e.g. in a unit test)."""
    try:
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    except Exception:  # no trial context
        cpus = 1
    return max(1, int(cpus))


def _retryable(e: BaseException) -> bool:
    """Only what can succeed on a retry: running out of (GPU) memory, which other trials sharing
    the device may have freed by then. A dead worker or node never reaches this code: Ray sees it
    and retries the trial. Everything else a trial raises is deterministic."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"


def _one_line(e: BaseException) -> str:
    from trainables import TrainingDiverged
    from trainables.config import ConfigError

    text = " ".join(str(e).split())
    if isinstance(e, ConfigError):  # its message already says "invalid config: field: ... (got ...)"
        return text[:500]
    return f"{'training diverged' if isinstance(e, TrainingDiverged) else type(e).__name__}: {text}"[:500]


def make_trainable(spec: SearchSpec):
    """``train_trial`` with the spec's checkpoint period and resources, as Tune runs it."""
    trainable = tune.with_parameters(train_trial, checkpoint_every_s=spec.checkpoint_every_s,
                                     import_paths=driver_import_paths())
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def driver_import_paths() -> tuple[str, ...]:
    """Where the driver imports a user's modules from: its current directory, then PYTHONPATH.
    Ray workers start elsewhere (and trials run in their own directories), so a trial puts these on
    its ``sys.path``; on a cluster the code travels with ``ray job submit --working-dir``."""
    paths = [os.getcwd()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return tuple(dict.fromkeys(os.path.abspath(p) for p in paths))

