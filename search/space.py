"""The define-by-run search space of a spec (Optuna's ``trial.suggest_*``; suggestions only)."""

from __future__ import annotations

import json
from typing import Any

from trainables.config import TrialConfig

from .spec import Distribution, SearchSpec, candidate_configs

from .trainable import STAGES_KEY

__all__ = ["SpaceDefinition", "max_epochs", "rung_unit", "rungs"]


class SpaceDefinition:
    """The define-by-run space of a spec. A plain callable object, because Ray saves the searcher
    (and this with it) with pickle when it checkpoints the experiment."""

    def __init__(self, spec: SearchSpec):
        self.families = spec.families
        self.allocation = spec.allocation
        self.entries = {f: spec.family_entries(f) for f in (spec.families or [None])}

    def __call__(self, trial) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        family = None
        if self.families:
            if self.allocation == "round_robin":
                family = self.families[trial.number % len(self.families)]
                fixed["regularizer/name"] = family
            else:
                family = trial.suggest_categorical("regularizer/name", self.families)
            trial.set_user_attr("regularizer", family)  # shown by optuna-dashboard, used for importances
        for path, entry in self.entries[family].items():
            if path == "regularizer/name":
                continue
            if isinstance(entry, Distribution):
                value = _suggest(trial, path, entry)
                if entry.type == "categorical" and not _primitive(entry.choices):
                    fixed[path] = json.loads(value)  # Optuna keeps the JSON text, the trial the value
            else:
                fixed[path] = entry
        return fixed


def _primitive(choices: list) -> bool:
    return all(c is None or isinstance(c, (bool, int, float, str)) for c in choices)


def _suggest(trial, path: str, d: Distribution) -> Any:
    if d.type == "loguniform":
        return trial.suggest_float(path, d.low, d.high, log=True)
    if d.type == "uniform":
        return trial.suggest_float(path, d.low, d.high, step=d.step)
    if d.type == "int":
        return trial.suggest_int(path, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
    choices = d.choices if _primitive(d.choices) else [json.dumps(c) for c in d.choices]
    return trial.suggest_categorical(path, choices)


def max_epochs(spec: SearchSpec) -> int:
    """The most epochs (training + retraining) any trial of the spec can run: ASHA's ``max_t``."""
    return _most(spec)[0]


def _most(spec: SearchSpec) -> tuple[int, set[int]]:
    """The most epochs a trial runs, and the stages (path targets; 0 for a plain trial) of each."""
    epochs, stages = 1, set()
    for _, data, _ in candidate_configs(spec):
        cfg = TrialConfig.from_dict(data)
        epochs = max(epochs, cfg.total_epochs)
        stages.add(len(cfg.path.targets) if cfg.path is not None else 0)
    return epochs, stages


def rung_unit(spec: SearchSpec) -> tuple[str, int]:
    """What a scheduler's rungs count and the full budget in it (:func:`rungs` of the spec's
    candidate trials)."""
    return rungs(*_most(spec))


def rungs(epochs: int, stages: set[int]) -> tuple[str, int]:
    """``("epoch", epochs)`` for plain trials, or for trials that walk sparsity paths
    ``(STAGES_KEY, most stages)``: a path trial is ranked at its points, where it is measured like
    a finished run, never in the middle of a stage. ``stages`` holds each trial's number of path
    targets (0: a plain trial); path and plain trials together have no one unit (``ValueError``)."""
    if stages <= {0}:
        return "epoch", epochs
    if 0 in stages:
        raise ValueError("rungs are epochs for plain trials and stages for path trials: "
                         "give every family a `path`, or none")
    return STAGES_KEY, max(stages)

