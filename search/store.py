"""Reading a search back from MLflow: its parent run, its trials' runs, their artifacts.

``sparsetune frontier`` and ``export`` only read, and should start in a second or two. The MLflow
client cannot: ``import mlflow`` alone takes ~2 s on an idle machine (its package ``__init__``
loads pandas, FastAPI, SQLAlchemy, alembic and the GenAI modules, whichever submodule is asked
for), and opening a SQLite store checks its schema with alembic (~1 s more). So a
``sqlite:///`` store is read directly with :mod:`sqlite3`, from the tables MLflow itself reads
(``experiments``, ``runs``, ``tags``, ``params``, ``latest_metrics``), read-only; any other
store (an MLflow server, a database server) is read with the MLflow client. Both readers return
the same :class:`RunRecord` values for the same store (``tests/test_store.py`` compares
them), and everything above them (the frontier, its hypervolume, the export) is shared.

A SQLite store whose tables are not what this reader knows (another MLflow schema, several
workspaces) falls back to the MLflow client, which upgrades or rejects it as MLflow does.

Standard library at import time: nothing here loads MLflow unless the client is used.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from .frontier import Frontier, Objective

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["RunRecord", "ClientReader", "SqliteReader", "NotAStore", "open_store", "load_frontier",
           "failure_summary", "row_of", "candidate_of", "TAG"]

TAG = "sparsetune"


@dataclass(frozen=True)
class RunRecord:
    """What the readers need of an MLflow run (``run.info`` and ``run.data``, flattened)."""

    run_id: str
    run_name: str
    experiment_id: str
    status: str  # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    start_time: int  # ms since the epoch
    artifact_uri: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # each metric's latest value
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, run: Any) -> RunRecord:
        """From an ``mlflow.entities.Run``."""
        info, data = run.info, run.data
        return cls(info.run_id, info.run_name or "", str(info.experiment_id), info.status, int(info.start_time or 0),
                   info.artifact_uri or "", dict(data.params), dict(data.metrics), dict(data.tags))


def _search_filter(search_id: str | None) -> str:
    filt = f"tags.`{TAG}.kind` = 'search'"
    return filt + (f" and tags.`{TAG}.search_id` = '{search_id}'" if search_id else "")


class ClientReader:
    """Any MLflow store, through the MLflow client."""

    def __init__(self, client: MlflowClient | str):
        self._client = client  # a tracking URI: the client is made (and the store opened) on first use

    @property
    def client(self) -> MlflowClient:
        if isinstance(self._client, str):
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self._client)
        return self._client

    def find_search(self, experiment: str, search_id: str | None = None) -> tuple[str | None, RunRecord | None]:
        """(experiment id, the search's parent run): the latest search of the experiment unless
        ``search_id``; (None, None) without such an experiment."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return None, None
        runs = self.client.search_runs([exp.experiment_id], _search_filter(search_id),
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return exp.experiment_id, (RunRecord.of(runs[0]) if runs else None)

    def _all(self, experiment_id: str, filter_string: str) -> list[RunRecord]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(RunRecord.of(r) for r in page)
            token = page.token
            if not token:
                return runs

    def children(self, experiment_id: str, parent_id: str) -> list[RunRecord]:
        """The child runs of a parent (the trials of a search), latest started first."""
        return self._all(experiment_id, f"tags.mlflow.parentRunId = '{parent_id}'")

    def points(self, experiment_id: str, parent_id: str) -> list[RunRecord]:
        """The point runs of a search's path trials (each nested under its trial's run)."""
        return self._all(experiment_id, f"tags.`{TAG}.search_parent` = '{parent_id}'")

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        """A run's artifact ``path``, copied into the folder ``dst``."""
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))


class NotAStore(ValueError):
    """The file is not an MLflow SQLite store (not a database, or no MLflow tables in it)."""


class SchemaMismatch(Exception):
    """An MLflow SQLite store whose tables are not the ones this reader reads."""


class SqliteReader:
    """A ``sqlite:///`` MLflow store, read directly (no MLflow import, no schema check on open).

    The same answers as the client's: experiments by name in any lifecycle stage
    (``get_experiment_by_name``), runs only while active (``search_runs``' default view), runs
    ordered by start time (latest first) then run id, and each metric's latest value as MLflow
    keeps it in ``latest_metrics`` (NaN stored as ``is_nan``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # read-only: never creates or migrates anything, and waits for a search that is writing
        self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        self._check_schema()

    _NEEDS = {"experiments": {"experiment_id", "name", "lifecycle_stage"},
              "runs": {"run_uuid", "name", "status", "start_time", "artifact_uri", "lifecycle_stage",
                       "experiment_id"},
              "tags": {"key", "value", "run_uuid"}, "params": {"key", "value", "run_uuid"},
              "latest_metrics": {"key", "value", "is_nan", "run_uuid"}}

    def _check_schema(self) -> None:
        try:
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"alembic_version", "experiments", "runs"} <= tables:
                raise NotAStore(f"{self.path} holds no MLflow tables")
            for table, columns in self._NEEDS.items():
                have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
                if not columns <= have:
                    raise SchemaMismatch(f"table {table} lacks {sorted(columns - have)}")
        except sqlite3.DatabaseError as e:
            raise NotAStore(f"{self.path} is not an SQLite database ({e})") from None

    def close(self) -> None:
        self.db.close()

    def _runs(self, where: str, args: tuple, limit: int | None = None) -> list[RunRecord]:
        sql = ("SELECT run_uuid, name, experiment_id, status, start_time, artifact_uri FROM runs "
               f"WHERE lifecycle_stage = 'active' AND {where} ORDER BY start_time DESC, run_uuid")
        infos = self.db.execute(sql + (f" LIMIT {int(limit)}" if limit else ""), args).fetchall()
        if not infos:
            return []
        ids = [i[0] for i in infos]
        params: dict[str, dict] = {i: {} for i in ids}
        metrics: dict[str, dict] = {i: {} for i in ids}
        tags: dict[str, dict] = {i: {} for i in ids}
        for start in range(0, len(ids), 500):  # SQLite's limit on bound variables
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value, rid in self.db.execute(f"SELECT key, value, run_uuid FROM params WHERE run_uuid IN ({marks})",
                                                   chunk):
                params[rid][key] = value
            for key, value, rid in self.db.execute(f"SELECT key, value, run_uuid FROM tags WHERE run_uuid IN ({marks})",
                                                   chunk):
                tags[rid][key] = value
            for key, value, is_nan, rid in self.db.execute(
                    f"SELECT key, value, is_nan, run_uuid FROM latest_metrics WHERE run_uuid IN ({marks})", chunk):
                metrics[rid][key] = math.nan if is_nan else float(value)
        return [RunRecord(rid, name or "", str(exp), status, int(start or 0), uri or "", params[rid], metrics[rid],
                          tags[rid]) for rid, name, exp, status, start, uri in infos]

    def find_search(self, experiment: str, search_id: str | None = None) -> tuple[str | None, RunRecord | None]:
        found = self.db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)).fetchall()
        if not found:
            return None, None
        if len(found) > 1:  # one name in several workspaces: MLflow's rules decide
            return ClientReader(f"sqlite:///{self.path}").find_search(experiment, search_id)
        exp = str(found[0][0])
        where = (f"experiment_id = ? AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = '{TAG}.kind' "
                 "AND value = 'search')")
        args: tuple = (exp,)
        if search_id:
            where += f" AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = '{TAG}.search_id' AND value = ?)"
            args += (search_id,)
        runs = self._runs(where, args, limit=1)
        return exp, (runs[0] if runs else None)

    def children(self, experiment_id: str, parent_id: str) -> list[RunRecord]:
        return self._runs("experiment_id = ? AND run_uuid IN (SELECT run_uuid FROM tags WHERE "
                          "key = 'mlflow.parentRunId' AND value = ?)", (experiment_id, parent_id))

    def points(self, experiment_id: str, parent_id: str) -> list[RunRecord]:
        return self._runs(f"experiment_id = ? AND run_uuid IN (SELECT run_uuid FROM tags WHERE "
                          f"key = '{TAG}.search_parent' AND value = ?)", (experiment_id, parent_id))

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        """A local artifact store is copied from; any other (``s3://``, ``mlflow-artifacts:``)
        goes through the MLflow client."""
        found = self.db.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        uri = (found[0] if found else None) or ""
        parsed = urlparse(uri)
        if found and parsed.scheme in ("", "file"):
            source = Path(unquote(parsed.path) if parsed.scheme else uri) / path
            if not source.is_file():
                raise FileNotFoundError(f"run {run_id} has no artifact {path!r} (looked in {source})")
            (dst / path).parent.mkdir(parents=True, exist_ok=True)
            return Path(shutil.copy(source, dst / path))
        return ClientReader(f"sqlite:///{self.path}").download(run_id, path, dst)


def open_store(uri: str) -> SqliteReader | ClientReader:
    """The reader for a tracking URI: direct for a SQLite file MLflow wrote, else the client.
    Raises :class:`NotAStore` for a file that is not an MLflow store (rather than letting MLflow
    create its tables in it)."""
    if uri.startswith("sqlite:///"):
        try:
            return SqliteReader(uri[len("sqlite:///"):])
        except SchemaMismatch:
            pass
    return ClientReader(uri)


def candidate_of(trial_id: str, point: Any = None) -> str:
    """A frontier candidate's id: the trial's, or ``<trial>/p<k>`` for point ``k`` of a path trial."""
    return trial_id if point is None or point == "" else f"{trial_id}/p{int(float(point)):03d}"


def row_of(run: RunRecord) -> dict:
    """A candidate's row: ids (``candidate``: the trial, or one point of a path trial), family, its
    metrics, and its params as ``param:<path>``."""
    trial_id, point = run.tags.get(f"{TAG}.trial_id", ""), run.tags.get(f"{TAG}.point")
    row = {"run_id": run.run_id, "trial_id": trial_id, "candidate": candidate_of(trial_id, point),
           "regularizer": run.tags.get(f"{TAG}.regularizer", ""), **run.metrics}
    if point is None:  # a trial's own run: its last report may carry a path's point metrics
        row.pop("point", None)
        row.pop("target", None)
    row.update({f"param:{k}": v for k, v in run.params.items()})
    return row


def load_frontier(reader: SqliteReader | ClientReader, experiment_id: str, parent_id: str,
                  objectives: list[Objective]) -> Frontier:
    """The frontier over a search's complete (finished, full-budget) trials; the pruned, stopped
    and failed trials come along in ``others`` (with their ``state`` and ``cause``)."""
    rows, others = [], []
    for r in [*reader.children(experiment_id, parent_id), *reader.points(experiment_id, parent_id)]:
        state = r.tags.get(f"{TAG}.state", "running")
        if r.status == "FINISHED" and state == "complete":
            if r.tags.get(f"{TAG}.path") != "true":  # a path trial's candidates are its points
                rows.append(row_of(r))
        else:
            others.append({**row_of(r), "state": state, "cause": r.tags.get(f"{TAG}.cause", "")})
    rows.sort(key=lambda r: r["candidate"])
    others.sort(key=lambda r: (r["state"], r["candidate"]))
    return Frontier.of(rows, objectives, others)


def failure_summary(others: list[dict]) -> list[tuple[int, str]]:
    """(count, cause) per distinct cause of the failed trials, most frequent first."""
    counts: dict[str, int] = {}
    for row in others:
        if row.get("state") == "failed":
            cause = row.get("cause") or "unknown error"
            counts[cause] = counts.get(cause, 0) + 1
    return sorted(((n, c) for c, n in counts.items()), key=lambda x: (-x[0], x[1]))
