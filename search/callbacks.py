"""The driver's Tune callback: Ray's trial events become MLflow runs and progress lines.

One writer, in the driver: trials only ``tune.report``; :class:`TrackingCallback` turns their
reports into child runs through :class:`~search.tracking.Tracker`, and prints progress
(:mod:`search.progress`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ray import tune

from trainables.config import TrialConfig

from . import _compat, faults
from .budget import ResumableBudget
from .frontier import Frontier, finite
from .progress import duration, eta, summary, trial_family, trial_label
from .samplers import TRIAL_ATTR, FullBudgetOptunaSearch
from .store import TAG
from .tracking import ENDED, Tracker
from .trainable import STAGES_KEY

__all__ = ["TrackingCallback"]


class TrackingCallback(tune.Callback):
    """Turns Ray's trial events into MLflow runs (via :class:`Tracker`) and progress lines: one
    when a trial starts, one at most every ``progress_s`` seconds while it runs (epoch k/N and
    validation accuracy, so a long trial is never silent), and one when it ends, with the
    frontier so far and an ETA from the finished trials' durations."""

    def __init__(self, tracker: Tracker, total: int, concurrency: int = 1, quiet: bool = False,
                 time_budget_s: float | None = None, progress_s: float = 30.0):
        self.tracker = tracker
        self.total = total
        self.concurrency = concurrency
        self.quiet = quiet
        self.time_budget_s = time_budget_s
        self.progress_s = progress_s
        self.search_alg = None  # the search algorithm (set by run_search; not pickled)
        self.restored = False  # set by run_search when it resumes a search
        self.experiment_path = ""  # Ray's directory of the experiment (set by run_search)
        self._fresh_state()

    def _fresh_state(self) -> None:
        self.done = 0
        self.frontier: Frontier | None = None
        self.complete = False
        self.budget_hit = False
        self._reconciled = False
        self._started: dict[str, float] = {}  # trial_id -> when it (re)started
        self._durations: list[float] = []
        self._said: dict[str, float] = {}  # trial_id -> time of its last progress line
        self._epochs: dict[str, int] = {}  # trial_id -> epochs it runs
        self._stages: dict[str, int] = {}  # trial_id -> stages of its path (0: not a path)
        self._stages_done: dict[str, int] = {}  # trial_id -> points measured so far (this run)
        self._stage_mark: dict[str, float] = {}  # trial_id -> when its last stage ended (or it started)
        self._stage_seconds: list[float] = []  # each stage trained while this driver watched
        self._settled: set[str] = set()  # trials whose end is recorded (or was, before a restore)
        self._restored_ids: set[str] = set()  # trials Ray restored (their end may be recorded already)
        self.adopted = 0  # trials that ended after Ray last saved its state (they count toward the total)

    def get_state(self) -> None:
        """Nothing to save with Ray's experiment state: what this callback knows is rebuilt from
        MLflow and the restored trials (``_reconcile``). Ray calls it last when it saves that state."""
        faults.point("saving")
        return None

    def __getstate__(self) -> dict:
        keep = ("tracker", "total", "concurrency", "quiet", "time_budget_s", "progress_s", "experiment_path")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.search_alg = None
        self.restored = False
        self.experiment_path = state.get("experiment_path", "")
        self._fresh_state()

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def _run(self, trial) -> str:
        return self.tracker.run_for(trial.trial_id, str(trial), trial_family(trial), trial.config)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self._reconciled:  # Tune calls this before it starts any trial
            self._reconciled = True
            if self.restored:
                self._reconcile(trials)

    def _reconcile(self, trials: list) -> None:
        """A restored search: Ray's experiment state, the Optuna study and MLflow made to agree.

        Ray saves its state every few seconds; the study and MLflow are written as things happen.
        After a Ctrl-C all three agree; after a killed driver Ray's state can be older than the
        others (docs/ARCHITECTURE.md, "one completion, in order"), so:

        - a trial Ray holds as ended but MLflow does not is recorded from Ray's last result;
        - a trial Ray will run again keeps its checkpoints findable: one that Ray names but that
          was deleted since becomes an empty directory (Ray deletes it again when newer ones
          arrive, and a restore from it falls back to the newest loadable one: the trainable's
          ``newest_state``); a trial that had finished only reports its last epoch again, and what
          the study and MLflow already hold of it stands;
        - trials the study holds but Ray never recorded: finished ones count toward the trial
          count and are recorded in MLflow if they are not; unfinished ones are run again (their
          parameters, under a new Tune trial), their MLflow run deleted.
        """
        ray_ids = set()
        for trial in trials:
            ray_ids.add(trial.trial_id)
            self._restored_ids.add(trial.trial_id)
            if trial.status in ("TERMINATED", "ERROR"):
                self._settled.add(trial.trial_id)
                if not self._settle(trial, replay=True):
                    self.done += 1  # recorded before the interruption: keep counting from it
            else:
                for checkpoint in _compat.kept_checkpoints(trial):
                    _tombstone(checkpoint)
        searcher = _optuna_searcher(self.search_alg)
        if searcher is None:
            return
        finished = searcher.reconcile()
        adopted = {t.user_attrs[TRIAL_ATTR]: t for t in finished if TRIAL_ATTR in t.user_attrs}
        runs = self.tracker.trial_runs()
        for trial_id, run in runs.items():
            if trial_id in ray_ids or run.tags.get(f"{TAG}.state") in ENDED:
                continue
            if trial_id in adopted:
                ot = adopted[trial_id]
                state = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(ot.state.name, "failed")
                values = dict(zip(searcher.metric, ot.values or []))
                self.tracker.adopt(run.run_id, trial_id, state, values, self._final_checkpoint(trial_id))
            else:
                self.tracker.discard(run.run_id)
        self.adopted = len(finished)
        self.done += len(finished)
        if finished or searcher.reusable:
            self._say(f"  reconciled: {len(finished)} trials that ended after Ray last saved its state count as done; "
                      f"{searcher.reusable} started then run again")

    def _final_checkpoint(self, trial_id: str) -> Path | None:
        """The final checkpoint (with ``result.json``) of a trial Ray never recorded, found in its
        directory of the experiment (local storage only; None if there is none). The newest whose
        ``result.json`` reads whole and is the run's end, not a path's point (``point`` without
        ``points``): a trial run again after the kill may have left a half-copied one behind."""
        if not self.experiment_path or "://" in self.experiment_path:
            return None
        import json

        from trainables.schema import RESULT_FILE

        for found in sorted(Path(self.experiment_path).glob(f"*_{trial_id}/checkpoint_*/{RESULT_FILE}"),
                            reverse=True):
            try:
                payload = json.loads(found.read_text())
            except (OSError, ValueError):  # torn: the copy was killed part way
                continue
            if isinstance(payload, dict) and ("point" not in payload or "points" in payload):
                return found.parent
        return None

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._run(trial)
        self._started[trial.trial_id] = time.monotonic()
        self._said[trial.trial_id] = time.monotonic()
        self._stage_mark[trial.trial_id] = time.monotonic()
        self._sizes(trial)  # its epochs and its path's stages (the ETA counts them)
        running = sum(t.status == "RUNNING" or t is trial for t in trials)  # Tune marks it RUNNING after this hook
        self._say(f"  start  {trial_label(trial)}  ({running} running, {self.done}/{self.total} done)")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.tracker.log_result(self._run(trial), result)
        faults.point("reported")
        now = time.monotonic()
        if finite(result.get(STAGES_KEY)):  # a path's point: one stage more (the ETA counts stages)
            self._stage_seconds.append(now - self._stage_mark.get(trial.trial_id, self._started.get(trial.trial_id, now)))
            self._stage_mark[trial.trial_id] = now
            self._stages_done[trial.trial_id] = int(result[STAGES_KEY])
        if now - self._said.get(trial.trial_id, now) >= self.progress_s and result.get("final") != 1.0:
            self._said[trial.trial_id] = now
            acc = result.get("val_accuracy")
            self._say(f"  ...    {trial_label(trial)}  epoch {int(result.get('epoch', 0))}/{self._sizes(trial)[0]}"
                      + (f"  val acc {acc:.3f}" if finite(acc) else "")
                      + f"  ({duration(now - self._started.get(trial.trial_id, now))})")

    def _sizes(self, trial) -> tuple[int, int]:
        """The epochs a trial runs and its path's stages (0: not a path), from its config parsed
        once; kept in ``_epochs`` and ``_stages``."""
        if trial.trial_id not in self._epochs:
            cfg = TrialConfig.from_dict(trial.config)
            self._epochs[trial.trial_id] = cfg.total_epochs
            self._stages[trial.trial_id] = len(cfg.path.targets) if cfg.path is not None else 0
        return self._epochs[trial.trial_id], self._stages[trial.trial_id]

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        """A path trial's point (a checkpoint holding its saved run, at a report with ``point``):
        recorded at once as a frontier candidate (``Tracker.point``). The last one is recorded
        with the trial's end (``_settle``)."""
        result = trial.last_result or {}
        if result.get("point") is None or result.get("final") == 1.0:
            return
        from trainables.schema import RESULT_FILE

        with checkpoint.as_directory() as d:
            if not (Path(d) / RESULT_FILE).exists():
                return
            import json

            metrics = {k: v for k, v in json.loads((Path(d) / RESULT_FILE).read_text()).items()
                       if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
            frontier = self.tracker.point(self._run(trial), trial.trial_id, metrics, Path(d))
        if frontier is not None:
            self.frontier = frontier
            self._say(f"  point  {trial_label(trial)}  p{int(result['point'])} target {result['target']:g}: "
                      f"{summary(result)}  | frontier {int(frontier.mask.sum())} points, "
                      f"hypervolume {frontier.hypervolume:.4f}")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._settle(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._settle(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self.tracker.retried(self._run(trial), _error_text(trial))
        self._say(f"        {trial_label(trial)} lost its worker and is retried from its last checkpoint")

    def _budget_reached(self) -> bool:
        """Whether Tune's time-budget stopper has stopped the experiment: its decision, not a clock
        of this callback's own (which would start at another moment and disagree with it for a
        few seconds, labelling trials as stopped by the budget while Tune went on)."""
        return self.time_budget_s is not None and ResumableBudget.reached

    def _settle(self, trial, replay: bool = False) -> bool:
        """Record how the trial ended; False if a replayed trial was already recorded."""
        run = self._run(trial)
        if (replay or trial.trial_id in self._restored_ids) and self.tracker.recorded(run):
            if not replay:  # run again after a killed driver, its end already recorded: counted, not rewritten
                self._settled.add(trial.trial_id)
                self.done += 1
                self._started.pop(trial.trial_id, None)
                self._say(f"[{self.done:>3}/{self.total}] {trial_label(trial)} recorded before the interruption")
            return False
        result = trial.last_result or {}
        self._settled.add(trial.trial_id)
        self.done += 1
        if trial.trial_id in self._started:
            self._durations.append(time.monotonic() - self._started.pop(trial.trial_id))
        head = f"[{self.done:>3}/{self.total}] {trial_label(trial)}"
        if trial.status == "ERROR":
            error = _error_text(trial)
            self.tracker.failed(run, error)
            self._say(f"{head} FAILED: {error.strip().splitlines()[-1][:200]}")
        elif result.get("trial_failed"):
            self.tracker.failed(run, str(result.get("error", "")), str(result.get("cause", "")) or None)
            self._say(f"{head} FAILED: {str(result.get('cause') or result.get('error', ''))[:200]}")
        elif result.get("final") == 1.0 and trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as d:
                self.frontier = self.tracker.complete(run, trial.trial_id, Path(d))
            faults.point("recorded")
            self._say(f"{head} {summary(result)}  | frontier {int(self.frontier.mask.sum())} trials,"
                      f" hypervolume {self.frontier.hypervolume:.4f}{self._eta()}")
        elif self._budget_reached():
            self.budget_hit = True
            self.tracker.stopped(run, int(result.get("epoch", 0)))
            self._say(f"{head} stopped by the time budget at epoch {result.get('epoch', 0)}")
        else:
            self.tracker.pruned(run, int(result.get("epoch", 0)))
            self._say(f"{head} stopped early at epoch {result.get('epoch', 0)} (not on the frontier)")
        return True

    def _eta(self) -> str:
        """From the finished trials' mean duration; in a path search from the mean stage instead,
        over the stages left: those of the running trials, and a whole path for each trial not
        started (an upper bound when a scheduler stops paths early)."""
        if not self._stage_seconds:
            return eta(self._durations, self.total - self.done, self.concurrency)
        known = [n for n in self._stages.values() if n]
        waiting = max(self.total - self.done - len(self._started), 0)
        left = sum(max(self._stages.get(t, 0) - self._stages_done.get(t, 0), 0) for t in self._started)
        left += waiting * round(sum(known) / len(known)) if known else 0
        return eta(self._stage_seconds, left, self.concurrency)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        """When the time budget runs out, Tune stops the trials still running (or waiting for a
        worker) without calling any trial hook or telling the searcher
        (``TuneController._stop_experiment_if_needed``; checked in tests/test_compat.py). They are
        recorded here, in the step that stopped them: stopped (or complete, if their last epoch was in), and told to the searcher
        as Ray would have, so that the experiment state Tune saves next does not hold them as
        live: the concurrency limiter of a resumed search would wait for them forever."""
        if not self._budget_reached():
            return
        for trial in trials:
            if trial.status == "TERMINATED" and trial.trial_id not in self._settled:
                self._settle(trial)
                if self.search_alg is not None:
                    self.search_alg.on_trial_complete(trial.trial_id, result=trial.last_result or {"final": 0.0})

    def on_experiment_end(self, trials: list, **info) -> None:
        self.complete = (len(trials) + self.adopted >= self.total
                         and all(t.status in ("TERMINATED", "ERROR") for t in trials))
        self.budget_hit = self.budget_hit or (not self.complete and self._budget_reached())
        if self.complete:
            outcome = "complete"
        elif self.budget_hit:
            outcome = (f"time budget of {duration(self.time_budget_s)} reached: {self.total - len(trials) - self.adopted} trials "
                       "not started (continue with --resume)")
        else:
            outcome = "interrupted (continue with --resume)"
        self.frontier = self.tracker.finish("FINISHED" if self.complete else "KILLED", outcome)



def _optuna_searcher(search_alg) -> FullBudgetOptunaSearch | None:
    """The Optuna searcher behind Tune's search algorithm (a generator around a concurrency limiter)."""
    searcher = search_alg
    while searcher is not None and not isinstance(searcher, FullBudgetOptunaSearch):
        searcher = getattr(searcher, "searcher", None)
    return searcher


def _tombstone(checkpoint) -> None:
    """An empty directory where a checkpoint Ray still names was deleted: Ray deletes it (again)
    when newer checkpoints arrive, and fails on one that does not exist."""
    import pyarrow.fs

    fs = checkpoint.filesystem
    if fs.get_file_info(checkpoint.path).type == pyarrow.fs.FileType.NotFound:
        fs.create_dir(checkpoint.path)


def _error_text(trial) -> str:
    """The trial's error as Ray recorded it.

    Ray writes ``error.txt`` into the driver's staging directory first and copies it to the
    storage path later, so the staging copy is read first; the storage copy (read through the
    storage filesystem, so remote too) covers a driver that restored the trial from storage.
    """
    local = trial.error_file
    try:
        if local and os.path.isfile(local):
            with open(local, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if text.strip():
                return text
        error = trial.get_error()
    except OSError as e:
        return f"(the error file could not be read: {e})"
    return str(error) if error is not None else "unknown error (Ray recorded none)"

