"""Hyperparameter importances of a finished search (Optuna's default evaluator), logged to MLflow."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from .spec import SearchSpec
from .tracking import Tracker

__all__ = ["log_importances"]


def log_importances(tracker: Tracker, optuna_url: str, search_id: str, spec: SearchSpec,
                    say: Callable[[str], None]) -> None:
    """Per-objective hyperparameter importances (Optuna's default evaluator) over the complete
    trials, for the parameters every trial has, and per family for its own parameters."""
    import warnings

    study = optuna.load_study(study_name=search_id, storage=optuna_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    groups = {"all": done}
    for family in spec.families:
        groups[family] = [t for t in done if t.user_attrs.get("regularizer") == family]
    out: dict[str, dict[str, float]] = {}
    skipped = []
    for group, trials in groups.items():
        if len(trials) < 3:
            continue
        sub = optuna.create_study(directions=study.directions)
        sub.add_trials(trials)
        for i, name in enumerate(spec.objective_names()):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values = optuna.importance.get_param_importances(sub, target=lambda t, i=i: t.values[i])
            except (ValueError, RuntimeError) as e:  # e.g. no parameter shared by every trial
                skipped.append(f"{group}/{name}: {e}")
                continue
            if values:
                out[f"{group}/{name}"] = {k: float(v) for k, v in values.items()}
    if out:
        tracker.log_importances(out)
    for line in skipped[:3]:
        say(f"  importances not computed for {line}")

