"""Where a search keeps things: Ray storage, the MLflow store, the Optuna study, the UI's URL.

Light on purpose (standard library only): ``sparsetune frontier`` and ``export`` import it and
must start without torch or ray.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

__all__ = ["InputError", "resolve_storage", "resolve_tracking_uri", "resolve_optuna_storage", "runs_url",
           "run_url"]


class InputError(ValueError):
    """Bad input to a command that does not load the training side (exit status 2): the message
    names the option and the value, like ``trainables.ConfigError``."""

    def __init__(self, option: str, msg: str, value: object):
        super().__init__(f"{option}: {msg} (got {value!r})")


def resolve_storage(storage: str | None) -> str:
    """Ray's storage path: a URI (``s3://``, ``gs://``, ``file://``...) or an absolute path."""
    if storage is None:
        return str(Path("ray_results").absolute())
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().absolute())


def resolve_tracking_uri(uri: str | None) -> str:
    """An MLflow tracking URI with no relative path in it (Ray moves trials' working dirs).

    Default: ``sqlite:///<absolute cwd>/mlflow.db``. MLflow 3 refuses its old file store, so
    ``file:`` URIs and bare folders are rejected here rather than at the first logged metric.
    """
    if uri is None:
        return f"sqlite:///{Path('mlflow.db').absolute()}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return uri if path.startswith("/") else f"sqlite:///{Path(path).expanduser().absolute()}"
    if uri.startswith(("http://", "https://", "postgresql", "mysql", "mssql", "databricks")):
        return uri
    raise ValueError("use sqlite:///<path>.db, an http(s):// MLflow server or a database URI "
                     "(MLflow 3 no longer accepts the file store)")


def resolve_optuna_storage(storage: str | None, tracking_uri: str) -> str:
    """The Optuna study's RDB storage URL (what ``optuna-dashboard`` opens).

    Default: ``optuna.db`` next to a SQLite MLflow store, or in the working directory when MLflow
    is a server (on a cluster the driver runs on the head node: it is the only writer). A SQLite
    URL is made absolute like the tracking URI; other database URLs are kept.
    """
    if storage is None:
        folder = Path(tracking_uri[len("sqlite:///"):]).parent if tracking_uri.startswith("sqlite:///") \
            else Path.cwd()
        return f"sqlite:///{folder / 'optuna.db'}"
    if storage.startswith("sqlite:///"):
        path = storage[len("sqlite:///"):]
        return storage if path.startswith("/") else f"sqlite:///{Path(path).expanduser().absolute()}"
    if "://" in storage:
        return storage
    raise ValueError("use sqlite:///<path>.db or a database URL (postgresql://..., mysql://...)")


def _ui_base(tracking_uri: str) -> str:
    """A SQLite store is browsed with ``mlflow ui``, which serves on 127.0.0.1:5000; a server is
    browsed at its own address."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def runs_url(tracking_uri: str, experiment_id: str, order_by: str | None = None, ascending: bool = False,
             search_filter: str | None = None) -> str:
    """The MLflow UI's runs table of an experiment (the training view, not the GenAI overview),
    sorted by ``order_by`` and showing only the runs that ``search_filter`` (MLflow's search
    syntax, e.g. one search's tag) selects."""
    url = f"{_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?compareRunsMode=TABLE"
    if search_filter:
        url += f"&searchFilter={quote(search_filter)}"
    if order_by:
        url += f"&orderByKey={quote(f'metrics.`{order_by}`')}&orderByAsc={str(ascending).lower()}"
    return url


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of one run (a search's parent: its description and frontier)."""
    return f"{_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"
