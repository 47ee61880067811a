"""The shared dense start of a search (spec ``start: {epochs: N}``): the dense network of ``base``
trained once, before the tuner starts, and every trial started from its weights.

- **What is trained**: ``base`` with ``regularizer: {name: none}``, tying off and
  ``optim.epochs: N`` (``optim.lr: start.lr`` when given), everything else as in ``base`` (space
  entries do not apply: the start is one network for every trial). One Ray task with the spec's
  ``resources`` runs ``trainables.fit`` and ``trainables.save_run``.
- **Where**: ``<storage>/<search id>/start/`` beside Ray's experiment files: ``config.yaml``,
  ``result.json``, ``compact_model.pt`` (``save_run``), ``weights.pt`` (the trained dense model's
  plain ``state_dict``) and ``weights.sha256``. It is written into a temporary sibling
  (``.start-<hex>``) and renamed into place when whole, so a start that is there is a finished
  one; a temporary folder left by a killed driver is removed and the start trained again.
- **Trials**: ``base.model.weights`` = that ``weights.pt`` and ``base.model.weights_sha256`` = its
  hash, set in the spec before the tuner is built (so each trial's exported ``config.yaml`` is
  exactly what ran, and names its start by content).
- **Resume**: a finished start (its ``result.json``, its weights and a matching hash) is reused,
  never trained again.
- **Tracking**: one more child run of the search, trial id ``start`` (tag ``sparsetune.role:
  start``), recorded as a complete trial is (params, per-epoch and final metrics, artifacts), so
  the frontier (``trials.csv`` / ``frontier.csv``, ``sparsetune frontier`` / ``export``) has the
  dense end among its candidates; the parent run gets ``start_epochs`` and ``start_seconds``.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trainables.schema import RESULT_FILE

from . import faults

__all__ = ["START_DIR", "START_TRIAL_ID", "WEIGHTS_FILE", "HASH_FILE", "Start", "start_config", "finished_start",
           "ensure_start", "started_only", "with_start", "record_start"]

START_DIR = "start"
START_TRIAL_ID = "start"
WEIGHTS_FILE = "weights.pt"
HASH_FILE = "weights.sha256"
SECONDS_FILE = "seconds.json"  # how long the start trained (the figure a reused start reports)


@dataclass(frozen=True)
class Start:
    """A finished start: its folder, weights file and their sha256, and what it cost."""

    path: Path
    sha256: str
    epochs: int
    seconds: float
    trained: bool  # trained by this driver (False: reused)

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE


def start_config(spec: Any) -> dict[str, Any]:
    """The config the start trains: ``base``, dense (no regularizer, no tying), ``start.epochs``."""
    data = copy.deepcopy(spec.base)
    data["regularizer"] = {"name": "none"}
    data["tying"] = {"enabled": False}
    data.pop("path", None)  # the trials' sparsity path starts from the start's weights
    optim = dict(data.get("optim") or {})
    optim["epochs"] = spec.start.epochs
    if spec.start.lr is not None:
        optim["lr"] = spec.start.lr
    data["optim"] = optim
    return data


def _sha256(path: Path) -> str:
    from trainables.models.sources import file_sha256

    return file_sha256(path)


def finished_start(folder: Path) -> Start | None:
    """The start in ``folder`` if it is whole (result, weights and a matching hash), else None."""
    weights, recorded, result = folder / WEIGHTS_FILE, folder / HASH_FILE, folder / RESULT_FILE
    if not (weights.is_file() and recorded.is_file() and result.is_file()):
        return None
    sha = recorded.read_text().strip()
    if _sha256(weights) != sha:
        return None
    try:
        history = json.loads(result.read_text()).get("history", [])
        seconds = json.loads((folder / SECONDS_FILE).read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        return None
    return Start(folder, sha, len(history), float(seconds), trained=False)


def _train(config: dict[str, Any], out: str, import_paths: tuple[str, ...] = (), threads: int | None = None) -> None:
    """Train the start and write its folder (runs in a Ray task, or in-process in tests). The
    driver's ``import_paths`` go on ``sys.path`` as a trial's do (a user's data or model module)."""
    import sys

    import torch

    from trainables import TrialConfig, fit, save_run

    for path in reversed(import_paths):
        if path not in sys.path and os.path.isdir(path):
            sys.path.insert(0, path)
    began = time.monotonic()
    result = fit(TrialConfig.from_dict(config), threads=threads)
    folder = save_run(result, out)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    torch.save(state, folder / WEIGHTS_FILE)
    (folder / SECONDS_FILE).write_text(json.dumps({"seconds": time.monotonic() - began}) + "\n")
    (folder / HASH_FILE).write_text(_sha256(folder / WEIGHTS_FILE) + "\n")  # last: the start is whole


def train_on_ray(spec: Any, config: dict[str, Any], out: Path) -> None:
    """One Ray task with the spec's resources (retried as a trial is, ``max_failures``)."""
    import math

    import ray

    from .trainable import driver_import_paths

    task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu,
                      max_retries=spec.max_failures)(_train)
    try:  # as many torch threads as the spec gives a trial
        ray.get(task.remote(config, str(out), driver_import_paths(), max(1, math.floor(spec.resources.cpu))))
    except ray.exceptions.RayTaskError as e:
        cause = str(e.cause) if getattr(e, "cause", None) is not None else str(e).strip().splitlines()[-1]
        raise RuntimeError(f"the search's start (the dense network of base, {spec.start.epochs} epochs) "
                           f"failed: {cause}") from None


def ensure_start(spec: Any, search_dir: Path, *, train: Callable[[Any, dict, Path], None] = train_on_ray,
                 say: Callable[[str], None] = print) -> Start:
    """The search's start: reused when ``<search_dir>/start`` holds a finished one, else trained
    (into a temporary folder, renamed into place when whole) with ``train``."""
    folder = search_dir / START_DIR
    found = finished_start(folder)
    if found is not None:
        say(f"  start: reused {folder} ({found.epochs} epochs trained once, {found.seconds:.1f}s); "
            "every trial starts from it")
        return found
    search_dir.mkdir(parents=True, exist_ok=True)
    for stale in search_dir.glob(".start-*"):  # left by a driver killed while it trained
        shutil.rmtree(stale, ignore_errors=True)
    if folder.exists():  # not whole (its hash does not match its weights): trained again
        shutil.rmtree(folder)
    tmp = search_dir / f".start-{secrets.token_hex(4)}"
    tmp.mkdir()  # from now on the search is resumable (started_only), before tuner.pkl exists
    train(spec, start_config(spec), tmp)
    faults.point("start_trained")
    os.replace(tmp, folder)
    start = finished_start(folder)
    if start is None:
        raise RuntimeError(f"the search's start in {folder} is incomplete after training")
    start = Start(start.path, start.sha256, start.epochs, start.seconds, trained=True)
    say(f"  start: trained {start.epochs} epochs once ({start.seconds:.1f}s), every trial starts from it "
        f"({start.weights})")
    return start


def started_only(path: str) -> bool:
    """Whether ``path`` is a search whose driver died while it trained (or just after) its start,
    before Ray made its ``Tuner`` (no ``tuner.pkl`` yet): ``--resume`` runs it again from its spec
    under its id (local storage only, like the start)."""
    if "://" in path:
        return False
    folder = Path(path)
    return folder.is_dir() and ((folder / START_DIR).is_dir() or any(folder.glob(".start-*")))


def with_start(spec: Any, start: Start) -> Any:
    """The spec whose ``base.model`` names the start's weights and their hash (what every trial loads)."""
    base = copy.deepcopy(spec.base)
    base["model"] = {**(base.get("model") or {}), "weights": str(start.weights), "weights_sha256": start.sha256}
    return spec.model_copy(update={"base": base})


def record_start(tracker: Any, spec: Any, start: Start) -> None:
    """The start as a child run of the search (trial id ``start``), recorded as a complete trial;
    ``start_epochs`` / ``start_seconds`` on the parent. Idempotent: a start already recorded
    (a resumed search) is left as it is."""
    from mlflow.entities import Metric, RunTag

    from .store import TAG

    rid = tracker.run_for(START_TRIAL_ID, START_TRIAL_ID, "none", start_config(spec))
    if tracker.recorded(rid):
        return
    tracker.client.log_batch(rid, tags=[RunTag(f"{TAG}.role", "start"), RunTag(f"{TAG}.start_weights", str(start.weights)),
                                        RunTag(f"{TAG}.start_sha256", start.sha256)])
    payload = json.loads((start.path / RESULT_FILE).read_text())
    history = payload.pop("history", [])
    for epoch in history[:-1]:
        tracker.log_result(rid, epoch)
    tracker.log_result(rid, {**(history[-1] if history else {}), **payload, "final": 1.0})
    ts = int(time.time() * 1000)
    tracker.client.log_batch(tracker.parent_id, metrics=[Metric("start_epochs", float(start.epochs), ts, 0),
                                                          Metric("start_seconds", float(start.seconds), ts, 0)])
    tracker.complete(rid, START_TRIAL_ID, start.path)  # its state, last: the record that it is there
    faults.point("start_recorded")
