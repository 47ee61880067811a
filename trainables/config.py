"""The one config tree: ``TrialConfig`` = data, model, optim, regularizer, tying, path, seed.

(Over 400 lines on purpose: the tree and the checks that link its sections — a path with its
regularizer, a schedule with its layers — are one schema, read in one place.)

Pydantic models, frozen, strict (no bool-as-number, no string-as-number) and closed (an unknown
key is an error that lists the valid fields). ``TrialConfig.from_dict(d)`` raises
:class:`ConfigError`, whose message names every bad field with its value. ``cfg.to_dict()`` is
exactly what a run used and exactly what gets exported: family defaults are filled in when the
config is built, so ``from_dict(cfg.to_dict()) == cfg`` and re-running an exported file runs the
same thing.

Some sections choose a *family* by name: the dataset (``data.name``), model (``model.name``),
regularizer (``regularizer.name``), optimizer (``optim.name``) and learning-rate schedule
(``optim.lr_schedule``). Each family declares its parameters once, beside its implementation (see
:mod:`trainables.families`); this module joins the registered declarations: ``data``, ``model``
and ``regularizer`` are discriminated unions of their families, and ``optim`` holds the chosen
optimizer's and schedule's parameters flat. A parameter that the chosen family does not have is
an error (GrOWL's ``lambda1`` on a CGES config, say), and a parameter left out gets the family's
default (the papers' values where there is one). ``docs/CONFIG.md`` is generated from the same
declarations (``python -m trainables.configdoc``).

Search parameter names are field paths joined by ``/`` (``regularizer/lam``); Ray's
``unflatten_dict`` turns a sample into this nested dict with no mapping layer.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

# Importing the family packages registers the built-in families (before the unions are built).
from . import datasets, models, optim, regularizers  # noqa: F401
from .configbase import (  # noqa: F401 (re-exported: the public names of the config tree)
    NO_VALUE,
    SEED_RANGE,
    MAX_SIZE,
    ConfigError,
    Ends,
    FieldError,
    Schedule,
    check_finite,
    from_validation_error,
    check_size,
    StrictModel,
    choices,
    resolve_schedule,
)
from .families import (
    DATASETS,
    LAYER_SELECTIONS,
    LR_SCHEDULES,
    MODELS,
    OPTIMIZERS,
    REGISTRIES,
    REGULARIZERS,
    DataConfig,
    LRScheduleConfig,
    ModelConfig,
    OptimizerConfig,
    RegularizerConfig,
    family_params,
)
from .yamlio import dump_yaml, load_yaml, loads_yaml

__all__ = [
    "ConfigError",
    "FieldError",
    "Ends",
    "Schedule",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RegularizerConfig",
    "TyingConfig",
    "PathConfig",
    "TrialConfig",
    "resolve_schedule",
    "parse_override",
    "set_path",
    "flatten",
    "family_params",
    "REGULARIZER_PARAMS",
    "LAYER_SELECTIONS",
]


# ----------------------------------------------------------------------------- family sections

DataUnion = DATASETS.union()
ModelUnion = MODELS.union()
RegularizerUnion = REGULARIZERS.union()


class _OptimBase(StrictModel):
    """Optimizer and schedule. ``weight_decay`` is the papers' "+l2": ordinary weight decay in the
    gradient of every parameter, separate from the proximal regularizer.

    The chosen optimizer's (``name``) and schedule's (``lr_schedule``) parameters sit flat in this
    section; the fields for them are derived from the registered families (:class:`OptimConfig`),
    and ``optimizer`` / ``schedule`` are the chosen families' configs."""

    name: str = Field("sgd", description="the optimizer (one of the optimizer families below)")
    lr: float = Field(0.1, description="the learning rate (also the prox's step size)")
    weight_decay: float = Field(0.0, description="weight decay on every parameter, in the gradient "
                                                 "(the papers' \"+l2\")")
    epochs: int = Field(10, description="training epochs (before any tying retraining); 0 evaluates the "
                                        "network as given (`model.weights`) on the same splits, training nothing")
    batch_size: int = Field(64, description="examples per optimizer step")
    lr_schedule: str = Field("constant", description="the learning-rate schedule (one of the schedule "
                                                     "families below)")
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="mixed precision: forward and loss under autocast in this dtype (fp16 adds a "
                           "gradient scaler); parameters, optimizer state, prox and masks stay float32")

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="before")
    @classmethod
    def _families(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None}
        out = dict(data)
        for registry in (OPTIMIZERS, LR_SCHEDULES):
            name = data.get(registry.key, registry.default)
            if not isinstance(name, str) or name not in registry:
                raise FieldError(registry.key, f"Input should be {choices(registry.names())}", name)
            family = registry.get(name)
            for key, value in data.items():
                if registry.owns(key) and key not in family.model_fields:
                    params = ", ".join(sorted(registry.params(name))) or "none"
                    raise FieldError(key, f"not a parameter of {registry.kind} {name!r} "
                                           f"(its parameters: {params})", value)
            own = {k: v for k, v in data.items() if k in family.model_fields and k != "name"}
            try:
                chosen = family.model_validate({"name": name, **own})
            except ValidationError as e:
                path, msg, value = from_validation_error(e).problems[0]
                raise FieldError(path, msg, value) from None
            out.update(chosen.model_dump(exclude={"name"}))  # the family's defaults, filled in
        return out

    @model_validator(mode="after")
    def _check(self) -> _OptimBase:
        check_finite(self.lr, "lr", 0, lo_open=True)
        check_finite(self.weight_decay, "weight_decay", 0)
        if self.epochs < 0:
            raise FieldError("epochs", "`epochs >= 0` must hold (0: evaluate the weights as given)", self.epochs)
        check_size(self.batch_size, "batch_size")
        return self

    @property
    def optimizer(self) -> OptimizerConfig:
        """The chosen optimizer family's config (``build(params, lr, weight_decay)``)."""
        family = OPTIMIZERS.get(self.name)
        return family.model_validate({f: getattr(self, f) for f in family.model_fields})

    @property
    def schedule(self) -> LRScheduleConfig:
        """The chosen learning-rate schedule's config (``build(optimizer, epochs)``)."""
        family = LR_SCHEDULES.get(self.lr_schedule)
        return family.model_validate({"name": self.lr_schedule,
                                      **{f: getattr(self, f) for f in family.model_fields if f != "name"}})


def _flat_fields() -> dict[str, Any]:
    """One optional field per parameter of any optimizer or schedule family (None = not this family's)."""
    fields: dict[str, Any] = {}
    for registry in (OPTIMIZERS, LR_SCHEDULES):
        for _, family in registry.items():
            for f, info in family.model_fields.items():
                if f != "name" and f not in fields and f not in _OptimBase.model_fields:
                    fields[f] = (info.annotation | None, Field(None, description=info.description))
    return fields


OptimConfig = create_model("OptimConfig", __base__=_OptimBase, __module__=__name__,
                           __doc__=_OptimBase.__doc__, **_flat_fields())


class TyingConfig(StrictModel):
    """GrOWL's second stage: cluster the rows of each regularized layer by affinity propagation
    on the similarity of GrOWL Eq. 10, then retrain with each cluster's rows tied to their mean."""

    enabled: bool = Field(False, description="cluster and tie rows after training, then retrain")
    preference: float = Field(0.6, description="affinity-propagation preference: higher gives more "
                                               "clusters, so less tying (GrOWL: MNIST 0.6, VGG 0.8)")
    damping: float = Field(0.9, description="affinity-propagation damping, in [0.5, 1); scikit-learn's "
                                            "0.5 oscillates on GrOWL's near-equal rows")
    max_iter: int = Field(1000, description="affinity-propagation iterations of the first attempt "
                                            "(each retry doubles it)")
    convergence_iter: int = Field(15, description="converged when the exemplars stay the same this many "
                                                  "iterations, at damping 0.5 (scaled by 0.5 / (1 - damping))")
    retries: int = Field(2, description="attempts after a non-converged one, each halving 1 - damping")
    fallback: Literal["complete_linkage", "none"] = Field(
        "complete_linkage", description="where affinity propagation still does not converge (on one connected "
                                        "component of the rows more similar than `preference`): cluster those "
                                        "rows so that every pair in a cluster is, or `none`: leave the layer untied")
    retrain_epochs: int = Field(10, description="retraining epochs with the tied rows, without the prox")
    retrain_lr: float | None = Field(None, description="retraining learning rate (default: `optim.lr`)")
    every: Literal["step", "epoch"] = Field("step", description="re-tie after every optimizer step or "
                                                                "every epoch")
    max_cluster_ratio: float = Field(0.95, description="no tying in a layer whose clusters/rows "
                                                       "exceeds this")

    @model_validator(mode="after")
    def _check(self) -> TyingConfig:
        check_finite(self.preference, "preference")
        check_finite(self.damping, "damping", 0.5, 1, hi_open=True)
        if self.max_iter < 1:
            raise FieldError("max_iter", "`max_iter >= 1` must hold", self.max_iter)
        scaled = math.ceil(self.convergence_iter * 0.5 / (1 - self.damping) - 1e-9)
        if not (self.convergence_iter >= 1 and scaled < self.max_iter):
            raise FieldError("convergence_iter", f"`convergence_iter >= 1` and `convergence_iter * 0.5 / "
                                                  f"(1 - damping) < max_iter` must hold (damping={self.damping}, "
                                                  f"max_iter={self.max_iter})", self.convergence_iter)
        if self.retries < 0:
            raise FieldError("retries", "`retries >= 0` must hold", self.retries)
        if self.retrain_epochs < 0:
            raise FieldError("retrain_epochs", "`retrain_epochs >= 0` must hold", self.retrain_epochs)
        if self.retrain_lr is not None:
            check_finite(self.retrain_lr, "retrain_lr", 0, lo_open=True)
        check_finite(self.max_cluster_ratio, "max_cluster_ratio", 0, 1, lo_open=True)
        return self


class PathConfig(StrictModel):
    """A sparsity path: one run walks ``targets`` in order, each stage regularizing (or pruning)
    from the previous target to the next in ``epochs`` epochs, then fine-tuning ``finetune_epochs``
    epochs with the zeroed groups masked (and tying, if on), then measuring the point: compacted,
    evaluated, every metric of a run (``trainables.train``, "Sparsity paths")."""

    targets: list[float] = Field(description="the sparsities of the points, strictly increasing, each in "
                                             "(0, 1): the proximal families' `target_sparsity`, the pruners' "
                                             "`final`, one per stage")
    epochs: int | None = Field(None, description="epochs of each stage, from the previous point to the next "
                                                 "target (default, filled in: `optim.epochs`)")
    finetune_epochs: int = Field(0, description="epochs of fine-tuning after each stage, before its point is "
                                                "measured: no prox, zeroed groups masked, constant `finetune_lr`")
    finetune_lr: float | None = Field(None, description="the fine-tuning learning rate (default, filled in: "
                                                        "`optim.lr`)")
    continue_from: Literal["finetuned", "stage"] = Field(
        "finetuned", description="where the next stage starts: the fine-tuned point (`finetuned`) or the "
                                 "weights before fine-tuning (`stage`); docs/RESULTS.md measures both")

    @model_validator(mode="after")
    def _check(self) -> PathConfig:
        if not self.targets:
            raise FieldError("targets", "at least one target", self.targets)
        for i, t in enumerate(self.targets):
            check_finite(t, f"targets[{i}]", 0, 1, lo_open=True, hi_open=True)
            if i and t <= self.targets[i - 1]:
                raise FieldError("targets", f"targets must be strictly increasing (targets[{i}] = {t} after "
                                            f"{self.targets[i - 1]})", self.targets)
        if self.epochs is not None and self.epochs < 1:
            raise FieldError("epochs", "`epochs >= 1` must hold", self.epochs)
        if self.finetune_epochs < 0:
            raise FieldError("finetune_epochs", "`finetune_epochs >= 0` must hold", self.finetune_epochs)
        if self.finetune_lr is not None:
            check_finite(self.finetune_lr, "finetune_lr", 0, lo_open=True)
        return self

    @property
    def stage_epochs(self) -> int:
        """Epochs per stage, fine-tuning included."""
        return int(self.epochs) + self.finetune_epochs

    def truncated(self, points: int) -> PathConfig:
        """The path up to its point ``points - 1`` (what re-runs to exactly that point)."""
        return self.model_copy(update={"targets": list(self.targets[:points])})


class TrialConfig(StrictModel):
    """Everything one training run depends on."""

    seed: int = Field(0, description="the trial's seed: initialisation, batch order, augmentation "
                                     "(not the data splits: `data.split_seed`)")
    device: str = Field("auto", description="`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`")
    data: DataUnion = Field(default_factory=DATASETS.default_factory,
                            description="the data and its splits")
    model: ModelUnion = Field(default_factory=MODELS.default_factory, description="the network")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimizer and schedule")
    regularizer: RegularizerUnion = Field(default_factory=REGULARIZERS.default_factory,
                                          description="the structured-sparsity regularizer")
    tying: TyingConfig = Field(default_factory=TyingConfig, description="GrOWL's parameter tying")
    path: PathConfig | None = Field(None, description="a sparsity path: one point per target from one run "
                                                      "(`trainables.train`); none: one point")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,4})?", v):  # ASCII digits: torch.device's syntax
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        lo, hi = SEED_RANGE
        if not lo <= v <= hi:
            raise ValueError("`-2**63 <= seed < 2**64` must hold (torch.manual_seed's range)")
        return v

    @model_validator(mode="after")
    def _link(self) -> TrialConfig:
        if self.tying.enabled and self.tying.retrain_lr is None:
            tying = self.tying.model_copy(update={"retrain_lr": self.optim.lr})
            object.__setattr__(self, "tying", tying)
        if self.path is not None:
            self._link_path()
        if self.tying.enabled and self.regularizer.groups == "channel":
            raise FieldError("regularizer.groups", "parameter tying clusters the rows of one layer's "
                                                    "weight; use input, input_position or filter", "channel")
        if self.optim.epochs == 0 and self.regularizer.name != "none":
            raise FieldError("regularizer.name", "optim.epochs: 0 evaluates the weights as given and trains "
                                                  "nothing; it takes regularizer none", self.regularizer.name)
        if self.optim.epochs == 0 and self.tying.enabled:
            raise FieldError("tying.enabled", "optim.epochs: 0 evaluates the weights as given and trains "
                                              "nothing; it takes no tying", True)
        regularizer = self.regularizer.link(self)  # e.g. pruning epochs within optim.epochs
        if regularizer is not self.regularizer:
            object.__setattr__(self, "regularizer", regularizer)
        return self

    def _link_path(self) -> None:
        path, reg = self.path, self.regularizer
        if self.optim.epochs == 0:
            raise FieldError("optim.epochs", "optim.epochs: 0 evaluates the weights as given; a path trains "
                                             "`path.epochs` per stage (leave optim.epochs >= 1 or drop path)", 0)
        if not reg.sparsifying:
            raise FieldError("path.targets", f"regularizer {reg.name!r} zeroes no groups, so it has no sparsity to "
                                             "walk (use a proximal family with a target: l1, group_lasso, "
                                             "exclusive_lasso, cges, growl; or a pruner: magnitude, "
                                             "channel_magnitude)", path.targets)
        if getattr(reg, "target_sparsity", None) is not None:
            raise FieldError("regularizer.target_sparsity", "a path sets each stage's target (path.targets); "
                                                            "leave target_sparsity out", reg.target_sparsity)
        fill = {}
        if path.epochs is None:
            fill["epochs"] = self.optim.epochs
        if path.finetune_lr is None:
            fill["finetune_lr"] = self.optim.lr
        if fill:
            object.__setattr__(self, "path", path.model_copy(update=fill))

    @property
    def total_epochs(self) -> int:
        """Every epoch the run trains: regularized, tying retraining, or a path's stages with their
        fine-tuning."""
        if self.path is not None:
            return len(self.path.targets) * self.path.stage_epochs
        return self.optim.epochs + (self.tying.retrain_epochs if self.tying.enabled else 0)

    def at_point(self, point: int) -> TrialConfig:
        """The config that re-runs this path to exactly its point ``point`` (from 0): the same
        run with the path truncated after that target."""
        if self.path is None or not 0 <= point < len(self.path.targets):
            raise ValueError(f"no point {point} in this config's path")
        return self.model_copy(update={"path": self.path.truncated(point + 1)})

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> TrialConfig:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError([("", "a config must be a mapping of sections", data)], source)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise from_validation_error(e, source=source) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrialConfig:
        data = load_yaml(path)
        if data is None:  # an empty file (or only comments): surely not what was meant
            raise ConfigError([("", "the file is empty: a config must be a mapping of sections "
                                    "(write {} for every default)", NO_VALUE)], str(path))
        if isinstance(data, dict):
            for item in overrides or []:
                key, value = parse_override(item)
                data = set_path(data, key, value)
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def replace(self, **paths: Any) -> TrialConfig:
        """A new config with ``section__field=value`` changes (validated again)."""
        data = self.to_dict()
        for key, value in paths.items():
            data = set_path(data, key.replace("__", "."), value)
        return TrialConfig.from_dict(data)


# ----------------------------------------------------------------------------- helpers


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)``; the value is read as YAML (numbers, lists, ...)."""
    if "=" not in item:
        raise ConfigError([("--set", "expected KEY=VALUE, e.g. regularizer.lam=1e-3", item)])
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([("--set", "expected KEY=VALUE with a dotted KEY", item)])
    return key, loads_yaml(text, f"--set {key}")


def set_path(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of the nested dict ``data`` with ``dotted`` (``a.b.c`` or ``a/b/c``) set to ``value``."""
    parts = dotted.replace("/", ".").split(".")
    out = dict(data)
    node = out
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value
    return out


def flatten(data: dict[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, sep, path))
        else:
            out[path] = value
    return out


# ----------------------------------------------------------------------------- derived tables

for _registry in REGISTRIES:
    _registry.frozen = True  # the unions above are built: a later registration would not be seen

# {family: {parameter: default}} of every regularizer, derived from the declarations (the search
# spec checks a family's sub-space against it)
REGULARIZER_PARAMS: dict[str, dict[str, Any]] = {name: REGULARIZERS.params(name) for name in REGULARIZERS}
