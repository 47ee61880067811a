"""The search spec: YAML -> validated ``SearchSpec``, every error found before Ray starts.

(Over 400 lines on purpose: the whole schema of a spec and its checks, in the one place a user's
field is looked up.)

```yaml
name: quickstart
base: {data: {name: digits}, optim: {epochs: 10}}     # a partial TrialConfig shared by all trials
space:                                                   # config field path -> distribution
  optim/lr: {type: loguniform, low: 0.02, high: 0.3}
regularizers:                                            # families compared, each with its own space
  cges:  {lam: {type: loguniform, low: 1e-3, high: 3e-2}, mu/last: {type: uniform, low: 0.5, high: 1}}
  growl: {lambda1: {type: loguniform, low: 0.05, high: 1}, p: {type: uniform, low: 0.1, high: 1}}
objectives: [{metric: val_accuracy, mode: max}, {metric: params_nonzero, mode: min}]
trials: 12
```

A distribution is a mapping with ``type`` (``loguniform``, ``uniform``, ``int``, ``categorical``);
anything else is a constant. Paths are config field paths joined by ``/`` (or ``.``); inside a
family's space they are relative to ``regularizer`` unless they start with a config section
(``optim/lr``, ``tying/enabled``). Conditional by construction: GrOWL's knobs never appear on a
CGES trial. Validation builds every family's config at the low and high ends of its space (and each
categorical choice) and checks it against the data and the model (the real network is built, loaded
with its trained weights and run once per distinct model: ``trainables.check_trial``), so a path
that is not a config field, a parameter the family does not have, or a value out of range is
reported with the spec location and the value, before anything starts.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.config import REGULARIZER_PARAMS, ConfigError, TrialConfig, FieldError, from_validation_error, flatten
from trainables.configbase import StrictModel as _ClosedConfig
from trainables.schema import DENSE_REFERENCE, EPOCH_COUNTERPART, EPOCH_METRICS, RESULT_METRICS
from trainables.yamlio import load_yaml

from .frontier import Objective
from .locations import resolve_optuna_storage, resolve_storage, resolve_tracking_uri

__all__ = [
    "resolve_storage",
    "resolve_tracking_uri",
    "resolve_optuna_storage",
    "resolve_paths",
    "SpecError",
    "Distribution",
    "Objective",
    "SearchSpec",
    "Start",
    "load_spec",
    "SECTIONS",
]

SECTIONS = tuple(TrialConfig.model_fields)  # a family entry outside these is a regularizer knob
DEFAULT_OBJECTIVES = [
    {"metric": "val_accuracy", "mode": "max"},
    {"metric": "params_nonzero", "mode": "min"},
    {"metric": "flops_compact", "mode": "min"},
]

class SpecError(ConfigError):
    """An invalid search spec (a ``ConfigError``: same message format, exit status 2)."""

    what = "search spec"


class StrictModel(_ClosedConfig):
    """Frozen, strict and closed like the trial config: an unknown key lists the valid fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=False)


class Distribution(StrictModel):
    type: Literal["loguniform", "uniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None  # uniform / int
    log: bool = False  # int on a log scale
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical distribution needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical distribution takes `choices`, not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"`choices` belongs to categorical distributions, not {self.type!r}")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} distribution needs `low` and `high`")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"bounds must be finite, but got low={self.low!r}, high={self.high!r}")
        if self.low > self.high:
            raise ValueError(f"`low <= high` must hold, but got low={self.low!r}, high={self.high!r}")
        if (self.type == "loguniform" or self.log) and self.low <= 0:
            raise ValueError(f"a log-scale distribution needs `low > 0`, but got low={self.low!r}")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"int bounds must be integers, but got low={self.low!r}, high={self.high!r}")
        if self.step is not None and (not (math.isfinite(self.step) and self.step > 0)
                                      or self.type == "loguniform" or self.log):
            raise ValueError(f"`step` must be > 0 and not on a log scale, but got step={self.step!r}")
        return self

    def extremes(self) -> list[Any]:
        """The values that bound what this distribution can draw (used for validation)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class Resources(StrictModel):
    cpu: float = 1.0
    gpu: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> Resources:
        if not (math.isfinite(self.cpu) and self.cpu > 0):
            raise ValueError(f"`cpu > 0` must hold, but got cpu={self.cpu!r}")
        if not (math.isfinite(self.gpu) and self.gpu >= 0):
            raise ValueError(f"`gpu >= 0` must hold, but got gpu={self.gpu!r}")
        return self


class Scheduler(StrictModel):
    """Early stopping; trials it stops are told to Optuna as PRUNED and never reach the frontier
    (multi-objective Optuna cannot prune; ecosystem.md §1.2).

    - ``asha``: ASHA on one per-epoch ``metric`` (default ``val_accuracy``, ``max``).
    - ``moasha``: multi-objective ASHA (``search/schedulers.py``) on the spec's ``objectives``,
      each read every epoch through its per-epoch counterpart; ``max_t`` is the full budget in
      epochs (default: the most epochs a trial of the spec runs), rungs lie below it.

    In a search whose trials walk sparsity paths (``path``), ``grace_period`` and ``max_t`` count
    path stages, not epochs: a trial is ranked at its points, by the objectives themselves, and
    one that is stopped keeps the points it measured on the frontier.
    """

    type: Literal["asha", "moasha"] = "asha"
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    grace_period: int = 1
    reduction_factor: float = 3.0
    max_t: int | None = None

    @model_validator(mode="after")
    def _check(self) -> Scheduler:
        if self.type == "asha":
            if self.max_t is not None:
                raise ValueError(f"`max_t` is for moasha (ASHA runs to the trials' epochs), got max_t={self.max_t!r}")
            object.__setattr__(self, "metric", self.metric or "val_accuracy")
            object.__setattr__(self, "mode", self.mode or "max")
            if self.metric not in EPOCH_METRICS:
                raise ValueError(f"the scheduler needs a per-epoch metric {list(EPOCH_METRICS)}, got {self.metric!r}")
        elif self.metric is not None or self.mode is not None:
            raise ValueError("moasha ranks trials by the spec's `objectives`; remove scheduler.metric/mode "
                             f"(got metric={self.metric!r}, mode={self.mode!r})")
        if self.grace_period < 1:
            raise ValueError(f"`grace_period >= 1` must hold, but got {self.grace_period!r}")
        if not (math.isfinite(self.reduction_factor) and self.reduction_factor > 1):
            raise ValueError(f"`reduction_factor > 1` must hold, but got {self.reduction_factor!r}")
        if self.max_t is not None and self.max_t <= self.grace_period:
            raise ValueError(f"`max_t > grace_period` must hold, but got max_t={self.max_t!r}, "
                             f"grace_period={self.grace_period!r}")
        return self


class Start(StrictModel):
    """A shared dense start (``search/start.py``): the dense network of ``base`` (no regularizer,
    no tying) trained once for ``epochs`` before the trials, each of which then starts from it
    (``model.weights``)."""

    epochs: int
    lr: float | None = None  # the start's optim.lr (default: base's)

    @model_validator(mode="after")
    def _check(self) -> Start:
        if self.epochs < 1:
            raise FieldError("epochs", "`epochs >= 1` must hold", self.epochs)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise FieldError("lr", "`lr > 0` (finite) must hold", self.lr)
        return self


class SearchSpec(StrictModel):
    name: str
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Distribution | Any] = Field(default_factory=dict)
    regularizers: dict[str, dict[str, Distribution | Any]] | None = None
    allocation: Literal["round_robin", "sampler"] = "round_robin"
    objectives: list[Objective] = Field(default_factory=lambda: [Objective(**o) for o in DEFAULT_OBJECTIVES])
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    # TPE models the study's best trials (those dominated by fewer than 25 others) and this many
    # recent finished ones, so an ask costs about the same at 10,000 trials as at 1,000;
    # null = every trial, plain TPE (search/history.py)
    sampler_history: int | None = 1000
    trials: int
    concurrency: int = 1
    resources: Resources = Field(default_factory=Resources)
    scheduler: Scheduler | None = None
    seed: int = 0
    storage: str | None = None  # Ray storage path (absolute, or a URI); default ./ray_results
    tracking_uri: str | None = None  # default sqlite:///<absolute path>/mlflow.db
    max_failures: int = 1  # retries of a trial whose worker died (it resumes from its checkpoint)
    # a trial checkpoints when this many seconds have passed since its last checkpoint (and on
    # its last epoch): at most this much work is lost with a worker; 0 = every epoch
    checkpoint_every_s: float = 10.0
    # stop starting and running trials after this many seconds (Tune's time_budget_s); trials not
    # started are not failures, and the search can be resumed with --resume
    time_budget_s: float | None = None
    # the Optuna study's RDB storage (optuna-dashboard reads it); default: optuna.db beside a
    # SQLite MLflow store (or in the working directory)
    optuna_storage: str | None = None
    # train the dense network of base once before the trials and start every trial from it
    start: Start | None = None

    @field_validator("space", "regularizers", mode="before")
    @classmethod
    def _distributions(cls, value: Any) -> Any:
        return _parse_entries(value)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError("use letters, digits, '_', '.', '-' (at most 100), starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _check(self) -> SearchSpec:
        for field, low in (("trials", 1), ("concurrency", 1), ("max_failures", 0)):
            if getattr(self, field) < low:
                raise FieldError(field, f"`{field} >= {low}` must hold", getattr(self, field))
        if not (math.isfinite(self.checkpoint_every_s) and self.checkpoint_every_s >= 0):
            raise FieldError("checkpoint_every_s", "`checkpoint_every_s >= 0` (finite) must hold",
                              self.checkpoint_every_s)
        if self.time_budget_s is not None and not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise FieldError("time_budget_s", "`time_budget_s > 0` (finite, seconds) must hold", self.time_budget_s)
        if not 0 <= self.seed <= 2**32 - 1:  # what Optuna's samplers accept
            raise FieldError("seed", "`0 <= seed <= 2**32 - 1` must hold (Optuna's sampler seed)", self.seed)
        if self.sampler_history is not None:
            from .history import MIN_HISTORY

            if self.sampler_history < MIN_HISTORY:
                raise FieldError("sampler_history", f"`sampler_history >= {MIN_HISTORY}` (or null: every trial) "
                                 "must hold (fewer recent trials leave TPE too little to model)",
                                 self.sampler_history)
            if self.sampler != "tpe" and "sampler_history" in self.model_fields_set:
                raise FieldError("sampler_history", f"applies to `sampler: tpe` only, not {self.sampler!r}",
                                 self.sampler_history)
        return self

    # -- derived views --------------------------------------------------------------------------

    @property
    def families(self) -> list[str]:
        return list(self.regularizers) if self.regularizers else []

    def family_entries(self, family: str | None) -> dict[str, Any]:
        """Absolute config path -> distribution or constant, for one family (or none)."""
        entries = {_canonical(k): v for k, v in self.space.items()}
        if family is not None:
            entries["regularizer/name"] = family
            for key, value in (self.regularizers or {}).get(family, {}).items():
                entries[_absolute(key)] = value
        return entries

    @property
    def reproducible(self) -> bool:
        """Whether the same spec and seed give the same trials: only when one trial runs at a
        time (with more, the order in which trials finish decides what the sampler knows when it
        suggests the next one) and no time budget cuts the search at a moment that depends on
        the machine's speed."""
        return self.concurrency == 1 and self.time_budget_s is None

    def objective_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    def objective_modes(self) -> list[str]:
        return [o.mode for o in self.objectives]


def _parse_entries(value: Any, prefix: str = "") -> Any:
    """Turn ``{type: ...}`` mappings into ``Distribution`` (and a family's sub-space, one level down)."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, entry in value.items():
        if isinstance(entry, dict) and "type" in entry:
            try:
                out[key] = Distribution.model_validate(entry)
            except ValidationError as e:
                err = from_validation_error(e)
                path, msg, _ = err.problems[0]
                raise FieldError(prefix + str(key), f"{path + ': ' if path else ''}{msg}", entry) from None
        elif isinstance(entry, dict) and not prefix and not ({"first", "last"} & set(entry)):
            out[key] = _parse_entries(entry, prefix=f"{key}.")  # a family's sub-space
        else:
            out[key] = entry
    return out


def _canonical(path: str) -> str:
    return "/".join(p for p in path.replace(".", "/").split("/"))


def _absolute(path: str) -> str:
    path = _canonical(path)
    return path if path.split("/")[0] in SECTIONS else f"regularizer/{path}"


def _set(data: dict, path: str, value: Any) -> None:
    parts = path.split("/")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# ----------------------------------------------------------------------------- loading


def load_spec(path: str | Path, *, trials: int | None = None) -> SearchSpec:
    """Read, parse and fully validate a spec file (``SpecError`` on any problem)."""
    source = str(path)
    raw = load_yaml(path)
    if raw is None:
        raise SpecError("the file is empty: a search spec must be a mapping (see examples/quickstart.yaml)",
                        source)
    if not isinstance(raw, dict):
        raise SpecError([("", "a search spec must be a mapping", raw)], source)
    if trials is not None:
        raw = {**raw, "trials": trials}
    try:
        spec = SearchSpec.model_validate(raw)
    except ValidationError as e:
        err = from_validation_error(e, source=source)
        raise SpecError(err.problems, source) from None
    validate_spec(spec, source)
    return resolve_paths(spec)


def resolve_paths(spec: SearchSpec) -> SearchSpec:
    """The spec with every relative path made absolute, here on the driver, before Ray starts.

    Ray runs each trial in its own working directory, so a relative ``data.path`` would be looked
    up there. Which fields are paths is the config's to say, not a list kept here: a field is a
    path when ``TrialConfig`` turns the relative string it was given into an absolute one. Every
    value the spec can put in a trial (base, space and family constants, categorical choices) is
    in some candidate config, so each one is resolved exactly as the config resolves it now.
    """
    resolved: dict[tuple[str, str], str] = {}
    for _, data, _ in candidate_configs(spec):
        try:
            full = flatten(TrialConfig.from_dict(data).to_dict())
        except ConfigError:  # validate_spec reports it
            continue
        for path, given in flatten(data).items():
            out = full.get(path)
            if (isinstance(given, str) and isinstance(out, str) and out != given
                    and not Path(given).is_absolute() and Path(out).is_absolute()):
                resolved[(path, given)] = out
    if not resolved:
        return spec

    def fix(path: str, value: Any) -> Any:
        if isinstance(value, Distribution) and value.type == "categorical":
            return value.model_copy(update={"choices": [fix(path, c) for c in value.choices]})
        return resolved.get((path, value), value) if isinstance(value, str) else value

    def walk(node: Any, prefix: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{prefix}/{k}" if prefix else str(k)) for k, v in node.items()}
        return fix(prefix, node)

    families = {f: {k: fix(_absolute(k), v) for k, v in entries.items()}
                for f, entries in (spec.regularizers or {}).items()}
    return spec.model_copy(update={
        "base": walk(spec.base, ""),
        "space": {k: fix(_canonical(k), v) for k, v in spec.space.items()},
        "regularizers": families if spec.regularizers is not None else None})


def candidate_configs(spec: SearchSpec) -> list[tuple[str | None, dict[str, Any], dict[str, str]]]:
    """Configs at the ends of each family's space: (family, config dict, config path -> spec location)."""
    out = []
    for family in spec.families or [None]:
        entries = spec.family_entries(family)
        dists = {p: d for p, d in entries.items() if isinstance(d, Distribution)}
        where = {p: _location(spec, family, p) for p in entries}
        picks = [{p: d.extremes()[0] for p, d in dists.items()}, {p: d.extremes()[-1] for p, d in dists.items()}]
        for p, d in dists.items():  # every categorical choice, the others at their low end
            picks += [{**picks[0], p: c} for c in d.extremes()[1:-1]]
        for pick in picks:
            data = copy.deepcopy(spec.base)
            for path, value in entries.items():
                _set(data, path, pick.get(path, value) if isinstance(value, Distribution) else copy.deepcopy(value))
            out.append((family, data, where))
    return out


def _location(spec: SearchSpec, family: str | None, path: str) -> str:
    if family is not None:
        for key in (spec.regularizers or {}).get(family, {}):
            if _absolute(key) == path:
                return f"regularizers.{family}.{key}"
        if path == "regularizer/name":
            return f"regularizers.{family}"
    for key in spec.space:
        if _canonical(key) == path:
            return f"space.{key}"
    return "base." + path.replace("/", ".")


def validate_spec(spec: SearchSpec, source: str | None = None) -> None:
    """Everything that can be checked without running: raises ``SpecError``."""
    problems: list[tuple[str, str, Any]] = []
    _check_structure(spec, problems)
    device = spec.base.get("device", "auto")  # a trial sees only its own GPUs, as cuda:0, cuda:1, ...
    if isinstance(device, str) and re.fullmatch(r"cuda(:[0-9]+)?", device):
        gpus, index = math.ceil(spec.resources.gpu), int(device.partition(":")[2] or 0)
        if index >= gpus:
            problems.append(("base.device", f"a trial sees {gpus} GPU(s) (resources.gpu={spec.resources.gpu:g}); "
                                            "use device: auto or cuda", device))
    if problems:
        raise SpecError(problems, source)
    from trainables import check_config, check_trial

    epochs = 1  # the most epochs a trial runs (training + retraining): the scheduler's budget
    stages: set[int] = set()  # each trial's path stages (0: no path); with paths, rungs are stages
    networks: set[str] = set()  # (data, model) pairs whose real network was built and run
    for family, data, where in candidate_configs(spec):
        try:
            cfg = TrialConfig.from_dict(data)
            network = json.dumps([cfg.data.model_dump(mode="json"), cfg.model.model_dump(mode="json")],
                                 sort_keys=True, default=str)
            if network not in networks:  # building a real network is costly: once per model
                networks.add(network)
                check_trial(cfg)
            check_config(cfg)
        except ConfigError as e:
            for path, msg, value in e.problems:
                problems.append((_spec_location(path, where), msg, value))
            break
        if cfg.optim.epochs == 0:
            problems.append((_spec_location("optim.epochs", where), "a search trains its trials; 0 epochs "
                             "only scores given weights (sparsetune train)", 0))
            break
        if "val_accuracy" in spec.objective_names() + ([spec.scheduler.metric] if spec.scheduler else []) \
                and cfg.data.val_fraction == 0:
            problems.append(("base.data.val_fraction", "val_accuracy is an objective, so it must be > 0", 0.0))
        epochs = max(epochs, cfg.total_epochs)
        stages.add(len(cfg.path.targets) if cfg.path is not None else 0)
    if spec.start is not None and not problems:
        from .start import start_config

        try:
            check_config(TrialConfig.from_dict(start_config(spec)))
        except ConfigError as e:
            problems += [(f"start ({path})", msg, value) for path, msg, value in e.problems]
    if spec.scheduler is not None and not problems:
        from .space import rungs

        try:
            unit, budget = rungs(epochs, stages)
        except ValueError as e:
            problems.append(("scheduler", str(e), spec.scheduler.type))
        else:
            if spec.scheduler.grace_period >= (spec.scheduler.max_t or budget):
                unit = "epochs" if unit == "epoch" else "path stages"
                problems.append(("scheduler.grace_period", f"must be below the trials' {unit} ({budget}) "
                                                           "(or scheduler.max_t): no trial could be stopped",
                                 spec.scheduler.grace_period))
    if problems:
        raise SpecError(problems[:1] if len(problems) > 5 else problems, source)


def _spec_location(config_path: str, where: dict[str, str]) -> str:
    """Map a config error path (``regularizer.lam``) to where the spec set it."""
    path = config_path.replace(".", "/")
    for candidate in sorted(where, key=len, reverse=True):
        if path == candidate or path.startswith(candidate + "/"):
            rest = path[len(candidate):].replace("/", ".")
            return where[candidate] + rest
    parts = [where[c] for c in where if c.startswith(path + "/")]  # e.g. mu/first and mu/last
    return " / ".join(parts) if parts else "base." + config_path


def _check_structure(spec: SearchSpec, problems: list) -> None:
    for family in spec.families:
        if family not in REGULARIZER_PARAMS:
            problems.append((f"regularizers.{family}", f"unknown regularizer; valid: {sorted(REGULARIZER_PARAMS)}", family))
    base_reg = spec.base.get("regularizer")
    if spec.families and isinstance(base_reg, dict):
        owned = {"name"} | {k for p in REGULARIZER_PARAMS.values() for k in p} - {"groups", "layers", "prox_every", "mask_pruned",
                                                                         "target_sparsity"}
        for key in base_reg:
            if key in owned:
                problems.append((f"base.regularizer.{key}",
                                 "set per family under `regularizers` when several families are compared", base_reg[key]))
    for section, entries in [("space", spec.space)] + [
            (f"regularizers.{f}", e) for f, e in (spec.regularizers or {}).items()]:
        for key in entries:
            if any(not part for part in _canonical(key).split("/")):
                problems.append((f"{section}.{key}", "a config field path with an empty part "
                                                     "(write e.g. optim/lr)", key))
    if problems:
        return
    for family in spec.families or [None]:
        for path in spec.family_entries(family):
            node, parts = spec.base, path.split("/")
            for i, part in enumerate(parts[:-1]):
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
                where = "base." + ".".join(parts[:i + 1])
                if not isinstance(node, dict):
                    if all(p[0] != where for p in problems):
                        problems.append((where, f"must be a mapping: {_location(spec, family, path)} "
                                                "sets a field inside it", node))
                    break
        paths = sorted(spec.family_entries(family))
        for a, b in zip(paths, paths[1:]):
            if b.startswith(a + "/"):
                problems.append((_location(spec, family, b), f"conflicts with {_location(spec, family, a)}",
                                 spec.family_entries(family)[b]))
    for key in spec.space:
        if _canonical(key).startswith("regularizer/name"):
            problems.append((f"space.{key}", "compare regularizer families with `regularizers:`", spec.space[key]))
    has_distribution = any(isinstance(v, Distribution) for f in spec.families or [None]
                           for v in spec.family_entries(f).values())
    if not has_distribution and len(spec.families) < 2:
        problems.append(("space", "the search space is empty: give at least one distribution "
                                  "(or compare two or more regularizer families)", spec.space))
    names = spec.objective_names()
    if not 1 <= len(names) <= 3:
        problems.append(("objectives", "give 1 to 3 objectives", names))
    for i, o in enumerate(spec.objectives):
        if o.metric.startswith("test_"):
            problems.append((f"objectives.{i}.metric", "the search never sees the test set; use a val_ metric", o.metric))
        elif o.metric not in RESULT_METRICS:
            problems.append((f"objectives.{i}.metric", f"not a result metric; valid: {list(RESULT_METRICS)}", o.metric))
        elif o.reference is None and o.mode == "min" and o.metric not in DENSE_REFERENCE:
            problems.append((f"objectives.{i}.reference", "give a hypervolume reference for this objective", None))
    if len(set(names)) != len(names):
        problems.append(("objectives", "an objective is listed twice", names))
    if spec.scheduler is not None and spec.scheduler.type == "moasha":

        for i, o in enumerate(spec.objectives):
            if o.metric in RESULT_METRICS and o.metric not in EPOCH_COUNTERPART:
                problems.append((f"objectives.{i}.metric", "scheduler moasha needs objectives with a per-epoch "
                                                           f"counterpart; valid: {sorted(EPOCH_COUNTERPART)}", o.metric))
    if spec.start is not None:
        _check_start(spec, problems)
    if spec.tracking_uri is not None:
        try:
            resolve_tracking_uri(spec.tracking_uri)
        except ValueError as e:
            problems.append(("tracking_uri", str(e), spec.tracking_uri))
    if spec.optuna_storage is not None:
        try:
            resolve_optuna_storage(spec.optuna_storage, "")
        except ValueError as e:
            problems.append(("optuna_storage", str(e), spec.optuna_storage))


def _check_start(spec: SearchSpec, problems: list) -> None:
    """``start``: one dense network every trial starts from, so the trials' model is fixed, has no
    weights of its own, and the start's file lives where every trial reads it (a filesystem path)."""
    model = spec.base.get("model")
    if isinstance(model, dict) and model.get("weights") is not None:
        problems.append(("start / base.model.weights", "a search starts either from its own trained start "
                         "or from given weights, not both (remove one)", model["weights"]))
    if isinstance(model, dict) and model.get("weights_sha256") is not None:
        problems.append(("start / base.model.weights_sha256", "set by the start (remove it)",
                         model["weights_sha256"]))
    for family in spec.families or [None]:
        for path in spec.family_entries(family):
            if path.split("/")[0] == "model":
                problems.append((_location(spec, family, path), "the start is one dense network for every trial: "
                                 "the model cannot vary across trials with `start`", path))
    storage = spec.storage
    if storage is not None and "://" in storage:
        problems.append(("start", "the trials load the start's weights from a file in the storage path: "
                                  f"use a filesystem path (shared by every node) as storage, not {storage}",
                         spec.start.model_dump()))
