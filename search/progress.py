"""Console progress of a search: the lines a running search prints, and its ETA."""

from __future__ import annotations

import math
from collections.abc import Callable

from .frontier import at_chance, finite
from .spec import SearchSpec

__all__ = ["duration", "eta", "say_start", "summary", "trial_family", "trial_label"]


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta(durations: list[float], left: int, concurrency: int) -> str:
    """`` | ETA ...`` from the finished trials' mean duration; empty when none is left or known."""
    if not left or not durations:
        return ""
    mean = sum(durations) / len(durations)
    return f" | ETA {duration(mean * math.ceil(left / concurrency))}"


def trial_family(trial) -> str:
    return (trial.config.get("regularizer") or {}).get("name", "none")


def trial_label(trial) -> str:
    return f"{trial_family(trial):<16} {trial.trial_id}"


def summary(r: dict) -> str:
    parts = []
    for key, fmt in (("val_accuracy", "val acc {:.3f}"), ("params_nonzero", "params {:,.0f}"),
                     ("flops_compact", "FLOPs {:,.0f}"), ("sparsity", "sparsity {:.0%}")):
        if finite(r.get(key)):
            parts.append(fmt.format(r[key]))
    return "  ".join(parts) + ("  (at chance level)" if at_chance(r) else "")


def say_start(say: Callable[[str], None], spec: SearchSpec, search_id: str, storage: str, uri: str,
              optuna_url: str, runs_url: str, resumed: bool, budget: float | None) -> None:
    verb = "resuming" if resumed else "starting"
    say(f"{verb} search {search_id}: {spec.trials} trials, {spec.concurrency} at a time, "
        f"sampler {spec.sampler}, families {', '.join(spec.families) or '-'}"
        + (f", time budget {duration(budget)}" if budget else ""))
    say(f"  reproducible: {'yes (one trial at a time, no time budget)' if spec.reproducible else 'no: '}"
        + ("" if spec.reproducible else "with concurrency > 1 or a time budget, which trials finish "
           "first depends on the machine, and so does what the sampler suggests next"))
    say(f"  Ray storage: {storage}/{search_id}")
    say(f"  MLflow: {uri} (experiment {spec.name!r}); browse with: mlflow ui --backend-store-uri {uri}")
    say(f"  runs: {runs_url}")
    say(f"  Optuna study {search_id!r}: optuna-dashboard {optuna_url}")
    if spec.sampler == "nsga2" and len(spec.families) > 1:
        say("  note: NSGA-II evolves only the parameters every trial shares; each family's own "
            "parameters are sampled at random (use sampler: tpe to model them)")
