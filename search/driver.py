"""The search driver's guards: a unique search id, one process at a time creating the stores, and
SIGTERM stopping a search as a first Ctrl-C does.

- **Search ids** are ``<name>-<YYYYmmdd-HHMMSS>-<4 hex>``: sortable by start time to the second,
  and two searches started in the same second (two terminals, a job array) get two ids, so two
  Ray experiments, two parent runs and two Optuna studies, never one merged search. Ids made
  before the suffix (``<name>-<YYYYmmdd-HHMMSS>``) are still found and resumed.
- **Stores:** MLflow's SQLite store and Optuna's RDB storage create their tables (and run their
  migrations) when first opened; two drivers doing that at once on a fresh file crash one of them.
  :func:`prepare_stores` opens both under a file lock beside each SQLite file (no lock for a
  server or another database: it serialises its own writers).
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
           "restore_sigterm"]

_STAMP = re.compile(r"(\d{8}-\d{6})(?:-([0-9a-f]{4}))?")


def new_search_id(name: str, now: float | None = None) -> str:
    """``<name>-<YYYYmmdd-HHMMSS>-<4 random hex digits>`` (local time, like the ids before it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


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

    from .tracking import _artifact_location

    with store_lock(tracking_uri, optuna_url):
        client = MlflowClient(tracking_uri)
        if client.get_experiment_by_name(experiment) is None:  # creates the store's tables first
            client.create_experiment(experiment, _artifact_location(tracking_uri, experiment))
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
