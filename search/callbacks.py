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

from .budget import ResumableBudget
from .frontier import Frontier, finite
from .progress import duration, eta, summary, trial_family, trial_label
from .tracking import Tracker

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
        self._settled: set[str] = set()  # trials whose end is recorded (or was, before a restore)

    def __getstate__(self) -> dict:
        keep = ("tracker", "total", "concurrency", "quiet", "time_budget_s", "progress_s")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.search_alg = None
        self._fresh_state()

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def _run(self, trial) -> str:
        return self.tracker.run_for(trial.trial_id, str(trial), trial_family(trial), trial.config)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self._reconciled:  # after a restore: settle trials that ended before the interruption
            self._reconciled = True
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self._settled.add(trial.trial_id)
                    if not self._settle(trial, replay=True):
                        self.done += 1  # recorded before the interruption: keep counting from it

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._run(trial)
        self._started[trial.trial_id] = time.monotonic()
        self._said[trial.trial_id] = time.monotonic()
        running = sum(t.status == "RUNNING" or t is trial for t in trials)  # Tune marks it RUNNING after this hook
        self._say(f"  start  {trial_label(trial)}  ({running} running, {self.done}/{self.total} done)")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.tracker.log_result(self._run(trial), result)
        now = time.monotonic()
        if now - self._said.get(trial.trial_id, now) >= self.progress_s and result.get("final") != 1.0:
            self._said[trial.trial_id] = now
            acc = result.get("val_accuracy")
            self._say(f"  ...    {trial_label(trial)}  epoch {int(result.get('epoch', 0))}/{self._total_epochs(trial)}"
                      + (f"  val acc {acc:.3f}" if finite(acc) else "")
                      + f"  ({duration(now - self._started.get(trial.trial_id, now))})")

    def _total_epochs(self, trial) -> int:
        if trial.trial_id not in self._epochs:
            cfg = TrialConfig.from_dict(trial.config)
            self._epochs[trial.trial_id] = cfg.optim.epochs + (cfg.tying.retrain_epochs if cfg.tying.enabled else 0)
        return self._epochs[trial.trial_id]

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
        if replay and self.tracker.recorded(run):
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
        return eta(self._durations, self.total - self.done, self.concurrency)

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
        self.complete = len(trials) >= self.total and all(t.status in ("TERMINATED", "ERROR") for t in trials)
        self.budget_hit = self.budget_hit or (not self.complete and self._budget_reached())
        if self.complete:
            outcome = "complete"
        elif self.budget_hit:
            outcome = (f"time budget of {duration(self.time_budget_s)} reached: {self.total - len(trials)} trials "
                       "not started (continue with --resume)")
        else:
            outcome = "interrupted (continue with --resume)"
        self.frontier = self.tracker.finish("FINISHED" if self.complete else "KILLED", outcome)



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

