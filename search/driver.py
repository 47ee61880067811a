"""The search driver's guards: a unique search id, one process at a time creating the stores, a
resume of a search whose driver died before Ray saved it, and SIGTERM stopping a search as a first
Ctrl-C does.

- **Search ids** are ``<name>-<YYYYmmdd-HHMMSS>-<6 hex>``: sortable by start time to the second,
  and two searches started in the same second (two terminals, a job array) get two ids, so two
  Ray experiments, two parent runs and two Optuna studies, never one merged search. Ids made
  before the suffix (``<name>-<YYYYmmdd-HHMMSS>``) are still found and resumed.
- **Stores:** MLflow's SQLite store and Optuna's RDB storage create their tables (and run their
  migrations) when first opened; two drivers doing that at once on a fresh file crash one of them.
  :func:`prepare_stores` opens both under a file lock beside each SQLite file (no lock for a
  server or another database: it serialises its own writers).
- **A search whose driver died before Ray saved it** (``kill -9`` in its first seconds): Ray
  writes ``tuner.pkl`` when the ``Tuner`` is made, which is all ``Tuner.can_restore`` looks for,
  but the search space (the spec's ``base``) and the searcher's state are saved only with the
  experiment state (``experiment_state-*.json``, ``searcher-state-*.pkl``), the first time Tune
  checkpoints the experiment. ``Tuner.restore`` of such a directory logs "Failed to restore the
  run state", restarts the experiment with an empty ``param_space`` and so trains networks of
  the built-in defaults (``hidden [300]``, 10 epochs, ``device auto``). :func:`ray_saved_state`
  tells the two apart; a search Ray saved nothing of is run again from its spec under the same id
  (its parent run and Optuna study go on), after :func:`settle_lost_start` checked that the spec
  is the one it was started with; what the dead driver left open is reconciled as after any
  killed driver (``TrackingCallback._reconcile``).
- **SIGTERM** (``kill``, ``timeout``, a scheduler, systemd): Ray's core worker, loaded into the
  driver by ``ray.init``, installs abseil's failure-signal handler for SIGTERM at the C level; it
  prints a C++ stack dump and aborts the driver (exit status 134), so Tune saves nothing and the
  MLflow runs stay RUNNING. :func:`sigterm_as_ctrl_c` (installed after ``ray.init``) turns SIGTERM
  into what Ctrl-C does at that moment: Tune's graceful stop during ``Tuner.fit`` (Tune installs a
  SIGINT handler there), else ``KeyboardInterrupt``; a second SIGTERM stops at once, like a second
  Ctrl-C. The command then exits 130 with the resume hint.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["new_search_id", "search_id_stamp", "prepare_stores", "store_lock", "sigterm_as_ctrl_c",
           "restore_sigterm", "check_run_dir", "ray_saved_state", "settle_lost_start"]

_STAMP = re.compile(r"(\d{8}-\d{6})(?:-([0-9a-f]{6}))?")


def new_search_id(name: str, now: float | None = None) -> str:
    """``<name>-<YYYYmmdd-HHMMSS>-<6 random hex digits>`` (local time, like the ids before it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


def search_id_stamp(name: str, search_id: str) -> str | None:
    """The ``YYYYmmdd-HHMMSS`` start of a search id of spec ``name`` (with or without the random
    suffix); None when ``search_id`` is not an id of that spec (e.g. of a spec named
    ``<name>-big``)."""
    if not search_id.startswith(name + "-"):
        return None
    m = _STAMP.fullmatch(search_id[len(name) + 1:])
    return m.group(1) if m else None


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(*urls: str, timeout_s: float = 300.0) -> Iterator[None]:
    """Holds a file lock (``<file>.lock``, beside it) for each SQLite URL among ``urls``."""
    from filelock import FileLock

    paths = sorted({p for p in map(_sqlite_path, urls) if p is not None})  # one order: no deadlock
    with contextlib.ExitStack() as stack:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(FileLock(f"{path}.lock", timeout=timeout_s))
        yield


def prepare_stores(tracking_uri: str, optuna_url: str, experiment: str) -> None:
    """Create the MLflow store (its tables, and the spec's experiment) and the Optuna storage's
    tables, one process at a time (:func:`store_lock`); a no-op but for the checks on stores that
    exist."""
    import optuna
    from mlflow.tracking import MlflowClient

    from .tracking import experiment_artifact_location

    with store_lock(tracking_uri, optuna_url):
        client = MlflowClient(tracking_uri)
        if client.get_experiment_by_name(experiment) is None:  # creates the store's tables first
            client.create_experiment(experiment, experiment_artifact_location(tracking_uri, experiment))
        optuna.storages.RDBStorage(optuna_url)  # creates (or checks) its tables


def sigterm_as_ctrl_c() -> Any:
    """SIGTERM does what Ctrl-C would do now (see the module doc); returns the handler it replaced,
    for :func:`restore_sigterm` (None outside the main thread, where no handler can be set). Call
    it after ``ray.init``."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):  # Tune's graceful stop inside Tuner.fit, else default_int_handler
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored or not Python's: stop as a second Ctrl-C would
            raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, on_sigterm)


def restore_sigterm(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _fs(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path) if "://" in path else (pyarrow.fs.LocalFileSystem(), path)


def check_run_dir(path: str) -> str:
    """``--resume RUN_DIR``: a search's Ray directory (``SpecError`` naming ``--resume`` if not)."""
    from ray import tune

    from .spec import SpecError

    from .start import started_only

    if not tune.Tuner.can_restore(path) and not started_only(path):
        raise SpecError([("--resume", "not the Ray directory of a search (no tuner.pkl in it): give the "
                                      "directory the interrupted search printed after 'Ray storage:'", path)])
    return path


def ray_saved_state(path: str) -> bool:
    """Whether Tune saved the experiment in ``path`` (an ``experiment_state-*.json``): only then
    does ``Tuner.restore`` bring back its search space, searcher and trials."""
    import pyarrow.fs

    fs, root = _fs(path)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    return any(i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json") for i in infos)


def settle_lost_start(tracking_uri: str, optuna_url: str, experiment: str, search_id: str, trials: int,
                      spec_yaml: str) -> None:
    """Before a search that Ray saved nothing of runs again under its id: refuse (``SpecError``,
    exit 2) a spec other than the one it was started with (its ``spec.yaml`` on the parent run;
    the trial count as the parent's ``trials`` param). What the dead driver left open is then made
    to agree by the tracking callback, as after any killed driver (``TrackingCallback._reconcile``):
    the study's unfinished trials run again under new Tune trials, their runs deleted."""
    import yaml

    from .spec import SpecError
    from .store import ClientReader

    reader = ClientReader(tracking_uri)
    exp_id, parent = reader.find_search(experiment, search_id)
    if parent is not None:
        started_with = parent.params.get("trials")
        if started_with is not None and int(started_with) != trials:
            raise SpecError([("trials", f"a resumed search runs the {started_with} trials it was started with; "
                                        f"start a new search for {trials}", trials)])
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            try:
                recorded = Path(reader.download(parent.run_id, "spec.yaml", Path(tmp))).read_text()
            except Exception:  # killed before the parent's spec.yaml was written
                recorded = None
        if recorded is not None and _without_trials(yaml.safe_load(recorded)) != _without_trials(
                yaml.safe_load(spec_yaml)):
            raise SpecError([("--resume", f"the spec is not the one search {search_id} was started with (its "
                                          "spec.yaml on the parent run); resume with that spec or start a new "
                                          "search", search_id)])


def _without_trials(spec: Any) -> Any:
    return {k: v for k, v in spec.items() if k != "trials"} if isinstance(spec, dict) else spec
