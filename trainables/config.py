"""The one config tree: ``TrialConfig`` = data, model, optim, regularizer, tying, seed.

Pydantic models, frozen, strict (no bool-as-number, no string-as-number) and closed (unknown keys
are rejected). ``TrialConfig.from_dict(d)`` raises :class:`ConfigError`, whose message names every
bad field with its value. ``cfg.to_dict()`` is exactly what a run used and exactly what gets
exported: family defaults are filled in when the config is built, so ``from_dict(cfg.to_dict())
== cfg`` and re-running an exported file runs the same thing.

Some sections choose a *family* by name (the dataset, model, optimizer, learning-rate schedule and
regularizer). Each family has its own parameters: a parameter that the chosen family does not have
is an error (GrOWL's ``lambda1`` on a CGES config, say), and a parameter left out gets the family's
default (the papers' values where there is one).

Search parameter names are field paths joined by ``/`` (``regularizer/lam``); Ray's
``unflatten_dict`` turns a sample into this nested dict with no mapping layer.
"""

from __future__ import annotations

import math
import re
import reprlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .yamlio import dump_yaml, load_yaml, loads_yaml

__all__ = [
    "ConfigError",
    "Ends",
    "Schedule",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RegularizerConfig",
    "TyingConfig",
    "TrialConfig",
    "resolve_schedule",
    "parse_override",
    "set_path",
    "flatten",
    "REGULARIZER_PARAMS",
    "LAYER_SELECTIONS",
]


class ConfigError(ValueError):
    """Invalid configuration. ``problems`` holds ``(field path, message, value)`` triples."""

    what = "config"

    def __init__(self, problems: list[tuple[str, str, Any]] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [("", problems, _NO_VALUE)]
        self.problems = problems
        self.source = source
        lines = []
        for path, msg, value in problems:
            where = f"{path}: " if path else ""
            got = "" if value is _NO_VALUE else f" (got {_show(value)})"
            lines.append(f"{where}{msg}{got}")
        head = f"invalid {self.what} {source}" if source else f"invalid {self.what}"
        self._args = (problems, source)
        if len(lines) == 1:
            super().__init__(f"{head}: {lines[0]}")
        else:
            super().__init__(head + ":\n" + "\n".join(f"  - {line}" for line in lines))


def _reduce_config_error(self):
    # pickled across processes (Ray workers): rebuild from the problems, not from the message
    return (type(self), self._args)


ConfigError.__reduce__ = _reduce_config_error


class _NoValue:
    def __repr__(self) -> str:
        return "<none>"

    def __reduce__(self) -> str:  # one instance, also after pickling (``value is _NO_VALUE``)
        return "_NO_VALUE"


_NO_VALUE = _NoValue()


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, 80, 80


def _show(value: Any) -> str:
    # a full repr of a small value; a bounded one of a big value (a YAML "billion laughs" document
    # is small on disk and shares its nodes, but its repr would never end)
    text = repr(value) if _small(value) else _SHORT_REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _small(value: Any, budget: int = 200) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            return False
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, (str, bytes)) and len(item) > 10_000:
            return False
    return True


class _FieldError(ValueError):
    """Raised by validators: names the field (relative to the model) and the offending value."""

    def __init__(self, field: str, msg: str, value: Any = _NO_VALUE):
        super().__init__(msg)
        self.field, self.msg, self.value = field, msg, value


_KIND_WORDS = {"float": "a number", "int": "an integer", "str": "a string", "bool": "true/false",
               "Ends": "{first: a, last: b}", "list[float]": "a list of numbers",
               "list[union[int,str]]": "a list of layer indices or names"}


def _from_validation_error(e: ValidationError, prefix: str = "", source: str | None = None) -> ConfigError:
    """One line per bad field; union alternatives are merged into one message."""
    problems: dict[str, tuple[str, Any]] = {}
    unions: dict[str, tuple[list[str], Any]] = {}
    for err in e.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        if loc and loc[-1] == "[key]":  # a mapping key that is not a string (a number, a date, ...)
            loc.pop()
            err = {**err, "type": "invalid_key"}
        tags = [p for p in loc if p in _KIND_WORDS or p.startswith(("literal[", "list[", "function-"))]
        loc = [p for p in loc if p not in tags]
        path = ".".join(([prefix] if prefix else []) + loc)
        value = err.get("input", _NO_VALUE)
        msg = err["msg"]
        exc = (err.get("ctx") or {}).get("error")
        if isinstance(exc, _FieldError):
            path = ".".join(p for p in (path, exc.field) if p)
            msg, value = exc.msg, exc.value
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "invalid_key":
            msg = "a key must be a string (quote it)"
        elif err["type"] == "model_type" and not tags:  # "a valid dictionary or instance of OptimConfig"
            msg = "expected a mapping of fields"
        elif err["type"] == "missing":
            msg, value = "required field is missing", _NO_VALUE
        elif tags and err["type"] not in ("value_error", "assertion_error"):
            kinds, _ = unions.get(path, ([], value))
            word = _KIND_WORDS.get(tags[0]) or tags[0].replace("literal[", "one of [")
            if word not in kinds:
                kinds.append(word)
            unions[path] = (kinds, value)
            continue
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        problems.setdefault(path, (msg, value))
    for path in list(unions):
        outer = [u for u in unions if path.startswith(u + ".")]
        if outer:  # an element inside one alternative of an enclosing union: report the union
            kinds = unions.pop(path)[0]
            unions[outer[0]][0].extend(k for k in kinds if k not in unions[outer[0]][0])
    for path, (kinds, value) in unions.items():
        if not any(p == path or p.startswith(path + ".") for p in problems):
            problems[path] = ("expected " + " or ".join(kinds), value)
    return ConfigError([(p, m, v) for p, (m, v) in problems.items()], source)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)


def _finite(value: float, name: str, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> float:
    field = name.split("[")[0]
    if not math.isfinite(value):
        raise _FieldError(field, f"`{name}` must be finite", value)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise _FieldError(field, f"`{name} {'>' if lo_open else '>='} {lo}` must hold", value)
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise _FieldError(field, f"`{name} {'<' if hi_open else '<='} {hi}` must hold", value)
    return value


# The largest layer width, class count or example count: sizes become tensor dimensions, and
# anything larger cannot be built (torch sizes are C longs) long before it fits in memory.
MAX_SIZE = 2**31 - 1
# torch.manual_seed accepts exactly the 64-bit seeds
_SEED_RANGE = (-(2**63), 2**64 - 1)


def _size(value: int | None, name: str, lo: int = 1) -> None:
    if value is not None and value < lo:
        raise _FieldError(name, f"`{name} >= {lo}` must hold", value)
    if value is not None and value > MAX_SIZE:
        raise _FieldError(name, f"`{name} <= {MAX_SIZE}` must hold", value)


def _fill_family(data: Any, *, key: str, default: str, table: dict[str, dict[str, Any]],
                 what: str) -> Any:
    """Check that only the chosen family's parameters are given, and fill in its defaults."""
    if not isinstance(data, dict):
        return data
    family = data.get(key, default)
    if not isinstance(family, str) or family not in table:
        return data  # the Literal field reports the bad name with the valid ones
    params = table[family]
    owned = set().union(*(set(p) for p in table.values()))
    for field, value in data.items():
        if field in owned and field not in params and value is not None:
            valid = ", ".join(sorted(params)) or "none"
            raise _FieldError(
                field, f"not a parameter of {what} {family!r} (its parameters: {valid})", value
            )
    filled = {k: v for k, v in params.items()}
    filled.update({k: v for k, v in data.items() if v is not None})
    return filled


# ----------------------------------------------------------------------------- schedules


class Ends(_Strict):
    """A per-layer value linear in depth, from ``first`` (first regularized layer) to ``last``."""

    first: float
    last: float


Schedule = float | list[float] | Ends


def _schedule_values(value: Schedule) -> list[float]:
    if isinstance(value, Ends):
        return [value.first, value.last]
    if isinstance(value, list):
        return list(value)
    return [value]


def _check_schedule(value: Schedule | None, name: str, lo: float, hi: float | None = None) -> None:
    if value is None:
        return
    if isinstance(value, list) and not value:
        raise _FieldError(name, "an empty list; give one value per regularized layer", value)
    if isinstance(value, Ends):  # name the end that is wrong: mu.last, not all of mu
        for end in ("first", "last"):
            try:
                _finite(getattr(value, end), name, lo, hi)
            except _FieldError as e:
                raise _FieldError(f"{name}.{end}", e.msg, e.value) from None
        return
    for v in _schedule_values(value):
        try:
            _finite(v, name, lo, hi)
        except _FieldError as e:
            raise _FieldError(name, e.msg, value) from None


def resolve_schedule(value: Schedule, n_layers: int, name: str) -> list[float]:
    """The per-layer values of a schedule over ``n_layers`` regularized layers, first to last."""
    if isinstance(value, Ends):
        if n_layers == 1:
            return [value.first]
        step = (value.last - value.first) / (n_layers - 1)
        return [value.first + i * step for i in range(n_layers)]
    if isinstance(value, list):
        if len(value) != n_layers:
            raise ConfigError([(
                f"regularizer.{name}",
                f"a list needs one value per regularized layer: {n_layers} for this model and "
                f"layer selection, but it has {len(value)}",
                value,
            )])
        return list(value)
    return [value] * n_layers


# ----------------------------------------------------------------------------- sections

DATASET_PARAMS: dict[str, dict[str, Any]] = {
    "digits": {},
    "correlated_blocks": {
        "n_samples": 2000, "n_features": 784, "n_blocks": 10, "block_size": 50, "block_gap": 28,
        "rho": 0.96, "num_classes": 10,
    },
    "mnist": {"path": None, "augment": False},
    "fashion_mnist": {"path": None, "augment": False},
    "cifar10": {"path": None, "augment": True},
    "cifar100": {"path": None, "augment": True},
    "idx": {"path": None},
    "arrays": {"path": None, "target": None},
}


class DataConfig(_Strict):
    """Which data, and how it is split. Splits depend only on ``split_seed``, not on ``seed``."""

    name: Literal[
        "digits", "correlated_blocks", "mnist", "fashion_mnist", "cifar10", "cifar100", "idx", "arrays"
    ] = "digits"
    # idx: a folder of MNIST-format IDX files; arrays: a .npz (X, y) or .csv file;
    # torchvision datasets: the download/cache folder (default ~/.cache/sparsetune/<name>)
    path: str | None = None
    target: str | None = None  # arrays from .csv: the label column
    val_fraction: float = 0.1  # of the training part
    test_fraction: float = 0.2  # only for data without an official test split
    test_split: Literal["random", "last"] = "random"  # "last": the last examples in file order
    split_seed: int = 0
    train_subset: int | None = None  # keep at most this many training examples
    augment: bool | None = None  # random crop + flip (CIFAR); shift (MNIST-like)
    # correlated_blocks (GrOWL §4.1)
    n_samples: int | None = None
    n_features: int | None = None
    n_blocks: int | None = None
    block_size: int | None = None
    block_gap: int | None = None
    rho: float | None = None
    num_classes: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _family(cls, data: Any) -> Any:
        return _fill_family(data, key="name", default="digits", table=DATASET_PARAMS, what="dataset")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # Ray moves each trial into its own working directory: keep only absolute paths.
        if v is None:
            return None
        if "\0" in v:
            raise ValueError("a path cannot contain a NUL character")
        try:
            return str(Path(v).expanduser().absolute())
        except RuntimeError:  # "~user" for a user that does not exist
            raise ValueError(f"cannot expand {v.split('/')[0]!r}: no such user") from None

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        _finite(self.val_fraction, "val_fraction", 0, 1, hi_open=True)
        _finite(self.test_fraction, "test_fraction", 0, 1, lo_open=True, hi_open=True)
        if self.train_subset is not None and self.train_subset < 1:
            raise _FieldError("train_subset", "`train_subset >= 1` must hold", self.train_subset)
        if self.split_seed < 0:  # numpy's default_rng takes non-negative seeds only
            raise _FieldError("split_seed", "`split_seed >= 0` must hold", self.split_seed)
        if self.name in ("idx", "arrays") and self.path is None:
            kind = "a folder of IDX files" if self.name == "idx" else "a .npz or .csv file"
            raise _FieldError("path", f"dataset {self.name!r} needs `path` ({kind})")
        if self.name == "correlated_blocks":
            for f in ("n_samples", "n_features", "n_blocks", "block_size", "num_classes"):
                _size(getattr(self, f), f)
            if self.num_classes < 2:
                raise _FieldError("num_classes", "`num_classes >= 2` must hold", self.num_classes)
            _size(self.block_gap, "block_gap", lo=0)
            _finite(self.rho, "rho", -1, 1, lo_open=True, hi_open=True)
            span = self.n_blocks * self.block_size + (self.n_blocks - 1) * self.block_gap
            if span > self.n_features:
                raise _FieldError(
                    "n_features",
                    f"{self.n_blocks} blocks of {self.block_size} with gaps of {self.block_gap} "
                    f"need {span} features", self.n_features,
                )
        return self


MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": [300], "batch_norm": False, "dropout": 0.0},
    "lenet_cges": {"dropout": 0.5},
    "vgg16_cifar": {"dropout": 0.0},
    "resnet20": {},
}


class ModelConfig(_Strict):
    name: Literal["mlp", "lenet_cges", "vgg16_cifar", "resnet20"] = "mlp"
    hidden: list[int] | None = None  # mlp: hidden layer widths (784-300-10 is hidden=[300])
    batch_norm: bool | None = None  # mlp: BatchNorm after each hidden ReLU (GrOWL's MNIST net)
    dropout: float | None = None  # before the last layer

    @model_validator(mode="before")
    @classmethod
    def _family(cls, data: Any) -> Any:
        return _fill_family(data, key="name", default="mlp", table=MODEL_PARAMS, what="model")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.hidden is not None and any(h < 1 for h in self.hidden):
            raise _FieldError("hidden", "hidden layer widths must be >= 1", self.hidden)
        if self.hidden is not None and any(h > MAX_SIZE for h in self.hidden):
            raise _FieldError("hidden", f"hidden layer widths must be <= {MAX_SIZE}", self.hidden)
        if self.dropout is not None:
            _finite(self.dropout, "dropout", 0, 1, hi_open=True)
        return self


OPTIMIZER_PARAMS: dict[str, dict[str, Any]] = {
    "sgd": {},
    "momentum": {"momentum": 0.9, "nesterov": False},
    "adam": {},
}
LR_SCHEDULE_PARAMS: dict[str, dict[str, Any]] = {
    "constant": {},
    "step": {"lr_step": 10, "lr_gamma": 0.1},
    "cosine": {},
}


class OptimConfig(_Strict):
    """Optimizer and schedule. ``weight_decay`` is the papers' "+l2": ordinary weight decay in the
    gradient of every parameter, separate from the proximal regularizer."""

    name: Literal["sgd", "momentum", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 64
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    lr_step: int | None = None  # step: multiply the lr by lr_gamma every lr_step epochs
    lr_gamma: float | None = None
    # mixed precision: forward and loss under autocast in this dtype (fp16 adds a gradient scaler);
    # parameters, optimizer state, prox and masks stay float32
    amp: Literal["off", "bf16", "fp16"] = "off"

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="before")
    @classmethod
    def _family(cls, data: Any) -> Any:
        data = _fill_family(data, key="name", default="sgd", table=OPTIMIZER_PARAMS, what="optimizer")
        return _fill_family(data, key="lr_schedule", default="constant", table=LR_SCHEDULE_PARAMS,
                            what="lr_schedule")

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        _finite(self.lr, "lr", 0, lo_open=True)
        _finite(self.weight_decay, "weight_decay", 0)
        if self.momentum is not None:
            _finite(self.momentum, "momentum", 0, 1, hi_open=True)
        if self.epochs < 1:
            raise _FieldError("epochs", "`epochs >= 1` must hold", self.epochs)
        _size(self.batch_size, "batch_size")
        if self.lr_step is not None and self.lr_step < 1:
            raise _FieldError("lr_step", "`lr_step >= 1` must hold", self.lr_step)
        if self.lr_gamma is not None:
            _finite(self.lr_gamma, "lr_gamma", 0, 1, lo_open=True)
        return self


LAYER_SELECTIONS = ("all", "all_but_first", "all_but_last", "inner")

_COMMON = {"layers": "all", "prox_every": "step"}
REGULARIZER_PARAMS: dict[str, dict[str, Any]] = {
    "none": {**_COMMON, "groups": "input"},
    # default strengths suit the embedded default (digits, mlp, sgd lr 0.1); tune them per problem
    "l2": {**_COMMON, "groups": "input", "lam": 1e-3},
    "l1": {**_COMMON, "groups": "input", "lam": 1e-3, "mask_pruned": False},
    # group lasso as GrOWL's baseline: per-epoch prox and masking, like the official code
    "group_lasso": {**_COMMON, "groups": "input", "prox_every": "epoch", "lam": 0.1, "mask_pruned": True},
    "exclusive_lasso": {**_COMMON, "groups": "input_position", "lam": 3e-3, "mask_pruned": False},
    # CGES (Yoon & Hwang 2017): mu is the per-layer weight of the exclusive term, rising with
    # depth in the official code (0.2 -> 0.8 over its four layers)
    "cges": {
        **_COMMON, "groups": "input_position", "lam": 1e-2, "mu": Ends(first=0.2, last=0.8),
        "exact": False, "group_scale": 1.0, "exclusive_scale": 1.0, "mask_pruned": False,
    },
    # GrOWL (Zhang et al. 2018): p is the fraction of rows with a decreasing weight (Eq. 9);
    # p = 1 is OSCAR. The official code applies the prox once per epoch and masks pruned rows.
    "growl": {
        **_COMMON, "groups": "input", "prox_every": "epoch", "layers": "all_but_last",
        "p": 0.5, "lambda1": 0.1, "lambda2": 1e-3, "mask_pruned": True,
    },
}


class RegularizerConfig(_Strict):
    """The structured-sparsity regularizer, with its papers' parameters.

    Schedules (``lam``, ``mu``, ``lambda1``, ``lambda2``, ``group_scale``, ``exclusive_scale``)
    take a number (every regularized layer), a list (one value per regularized layer, in model
    order) or ``{first: a, last: b}`` (linear in depth).
    """

    name: Literal["none", "l2", "l1", "group_lasso", "exclusive_lasso", "cges", "growl"] = "none"
    lam: Schedule | None = None
    mu: Schedule | None = None
    exact: bool | None = None  # cges: exact exclusive prox instead of the official one-shot step
    group_scale: Schedule | None = None  # cges: per-layer factor on the group term
    exclusive_scale: Schedule | None = None  # cges: per-layer factor on the exclusive term
    p: float | None = None
    lambda1: Schedule | None = None
    lambda2: Schedule | None = None
    mask_pruned: bool | None = None  # keep zeroed groups at zero for the rest of training
    prox_every: Literal["step", "epoch"] | None = None
    groups: Literal["input", "input_position", "filter"] | None = None
    # which Conv2d/Linear layers: a keyword, or a list of indices (0 = first, -1 = last) or names
    layers: Literal["all", "all_but_first", "all_but_last", "inner"] | list[int | str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _family(cls, data: Any) -> Any:
        return _fill_family(data, key="name", default="none", table=REGULARIZER_PARAMS,
                            what="regularizer")

    @model_validator(mode="after")
    def _check(self) -> RegularizerConfig:
        _check_schedule(self.lam, "lam", 0)
        _check_schedule(self.mu, "mu", 0, 1)
        _check_schedule(self.lambda1, "lambda1", 0)
        _check_schedule(self.lambda2, "lambda2", 0)
        _check_schedule(self.group_scale, "group_scale", 0)
        _check_schedule(self.exclusive_scale, "exclusive_scale", 0)
        if self.p is not None:
            _finite(self.p, "p", 0, 1, lo_open=True)
        if isinstance(self.layers, list) and not self.layers:
            raise _FieldError("layers", "an empty list; name at least one layer or use 'all'", [])
        return self

    @property
    def sparsifying(self) -> bool:
        return self.name not in ("none", "l2")


class TyingConfig(_Strict):
    """GrOWL's second stage: cluster the rows of each regularized layer by affinity propagation
    on the similarity of GrOWL Eq. 10, then retrain with each cluster's rows tied to their mean."""

    enabled: bool = False
    preference: float = 0.6  # AP preference: higher -> more clusters -> less tying (MNIST 0.6, VGG 0.8)
    damping: float = 0.5
    retrain_epochs: int = 10
    retrain_lr: float | None = None  # default: optim.lr
    every: Literal["step", "epoch"] = "step"  # re-tie after every optimizer step or every epoch
    max_cluster_ratio: float = 0.95  # no tying in a layer whose clusters/rows exceeds this

    @model_validator(mode="after")
    def _check(self) -> TyingConfig:
        _finite(self.preference, "preference")
        _finite(self.damping, "damping", 0.5, 1, hi_open=True)
        if self.retrain_epochs < 0:
            raise _FieldError("retrain_epochs", "`retrain_epochs >= 0` must hold", self.retrain_epochs)
        if self.retrain_lr is not None:
            _finite(self.retrain_lr, "retrain_lr", 0, lo_open=True)
        _finite(self.max_cluster_ratio, "max_cluster_ratio", 0, 1, lo_open=True)
        return self


class TrialConfig(_Strict):
    """Everything one training run depends on."""

    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    regularizer: RegularizerConfig = Field(default_factory=RegularizerConfig)
    tying: TyingConfig = Field(default_factory=TyingConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,4})?", v):  # ASCII digits: torch.device's syntax
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        lo, hi = _SEED_RANGE
        if not lo <= v <= hi:
            raise ValueError("`-2**63 <= seed < 2**64` must hold (torch.manual_seed's range)")
        return v

    @model_validator(mode="after")
    def _link(self) -> TrialConfig:
        if self.tying.enabled and self.tying.retrain_lr is None:
            tying = self.tying.model_copy(update={"retrain_lr": self.optim.lr})
            object.__setattr__(self, "tying", tying)
        return self

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
            raise _from_validation_error(e, source=source) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrialConfig:
        data = load_yaml(path)
        if data is None:  # an empty file (or only comments): surely not what was meant
            raise ConfigError([("", "the file is empty: a config must be a mapping of sections "
                                    "(write {} for every default)", _NO_VALUE)], str(path))
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
