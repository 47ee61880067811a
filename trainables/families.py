"""Families: one pydantic model per choice, registered beside its implementation.

(Over 400 lines on purpose: the base class of every family kind and its registry live together,
so a new dataset, model, regularizer, optimizer or schedule reads one file to learn the contract.)

A *family* is one choice of a config section that is picked by name: a dataset source
(``data.name``), a model (``model.name``), a regularizer (``regularizer.name``), an optimizer
(``optim.name``) and a learning-rate schedule (``optim.lr_schedule``). Each family is one class,
declared in the module that implements it::

    @MODELS.register
    class MLPConfig(ModelConfig):
        name: Literal["mlp"] = "mlp"
        hidden: list[int] = Field([300], description="hidden layer widths")

        def build(self, spec: DataSpec) -> nn.Module: ...

The class is the family's whole declaration: its fields are its parameters, their defaults the
family's defaults, their descriptions the documentation (``docs/CONFIG.md``), its validators its
checks. :class:`Registry` collects the classes of one kind; :mod:`trainables.config` joins them
into a discriminated union per section, so validation, ``to_dict()``, the search-space paths and
the documentation all come from these declarations, with no parallel table to keep in step.

A family's base class (``ModelConfig``, ``DataConfig``, ...) holds the fields every family of its
kind has. ``ModelConfig.model_validate(d)`` on a base picks the family named in ``d``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union, get_args, get_origin

import re

from pydantic import AfterValidator, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator, model_validator

from .configbase import UNION_TAGS, absolute_path, FieldError, check_finite, from_validation_error, StrictModel

__all__ = [
    "Family",
    "Registry",
    "DataConfig",
    "ModelConfig",
    "RegularizerConfig",
    "OptimizerConfig",
    "LRScheduleConfig",
    "DATASETS",
    "MODELS",
    "REGULARIZERS",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "REGISTRIES",
    "LAYER_SELECTIONS",
    "AbsolutePath",
    "family_params",
]


class Family(StrictModel):
    """Base of every family declaration. Subclasses set ``name: Literal["..."] = "..."``.

    Before validation a family drops the keys given as ``None`` (a parameter left out gets the
    family's default) and rejects a parameter that belongs to another family of its kind, naming
    the chosen family and its own parameters."""

    registry: ClassVar[Registry[Any] | None] = None  # set by Registry.register on the family class

    name: str

    @model_validator(mode="before")
    @classmethod
    def _family(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None}
        registry = cls.registry
        if registry is not None and cls is not registry.base:
            own = set(cls.model_fields)
            for key, value in data.items():
                if key not in own and registry.owns(key):
                    params = ", ".join(sorted(registry.params(cls.family_name()))) or "none"
                    raise FieldError(key, f"not a parameter of {registry.kind} {cls.family_name()!r} "
                                           f"(its parameters: {params})", value)
        return data

    @classmethod
    def family_name(cls) -> str:
        """The name this family is registered under (its ``name`` literal)."""
        args = get_args(cls.model_fields["name"].annotation)
        if get_origin(cls.model_fields["name"].annotation) is not Literal or len(args) != 1:
            raise TypeError(f"{cls.__name__}.name must be a one-value Literal, "
                            f"e.g. name: Literal['mlp'] = 'mlp'")
        return args[0]

    def __new__(cls, *args: Any, **data: Any) -> Any:
        # ``DataConfig(name="mnist", path=...)`` on a kind's base class builds the named family
        # (Python then runs the family's __init__ on it with the same fields, which is idempotent)
        registry = cls.registry
        if data and registry is not None and cls is registry.base:
            return registry.adapter().validate_python(data)
        return super().__new__(cls)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        """On a kind's base class (``ModelConfig.model_validate(d)``): the family named in ``d``."""
        registry = cls.registry
        if registry is not None and cls is registry.base:
            return registry.adapter().validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)


F = TypeVar("F", bound=Family)


class Registry(Generic[F]):
    """The registered families of one kind, by name.

    ``kind`` names the family in messages ("model"), ``section`` is the config section that holds
    it and ``key`` the field that names it there, ``default`` the family used when ``key`` is
    left out. Registration happens when the family's module is imported; the config tree is built
    from the registries when :mod:`trainables.config` is imported, which imports every built-in."""

    def __init__(self, kind: str, base: type[F], *, section: str, key: str = "name", default: str):
        self.kind, self.base, self.section, self.key, self.default = kind, base, section, key, default
        self._families: dict[str, type[F]] = {}
        self._adapter: TypeAdapter | None = None
        self.frozen = False  # set once the config tree has been built from this registry
        base.registry = self

    # -- registration ------------------------------------------------------------------------------

    def register(self, cls: type[F]) -> type[F]:
        """Class decorator: add a family (its ``name`` literal is its name; duplicates are an error)."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)) or cls is self.base:
            raise TypeError(f"a {self.kind} family must subclass {self.base.__name__}, got {cls!r}")
        name = cls.family_name()
        if name in self._families:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._families[name].__name__})")
        if self.frozen:
            raise RuntimeError(f"{self.kind} {name!r} is registered after the config tree was built: "
                               f"import its module before trainables.config")
        self._families[name] = cls
        self._adapter = None
        UNION_TAGS.add(self.tag(name))
        return cls

    # -- lookup ------------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._families

    def __iter__(self) -> Iterator[str]:
        return iter(self._families)

    def __len__(self) -> int:
        return len(self._families)

    def names(self) -> list[str]:
        return list(self._families)

    def items(self) -> list[tuple[str, type[F]]]:
        return list(self._families.items())

    def get(self, name: str) -> type[F]:
        try:
            return self._families[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {sorted(self._families)}") from None

    __getitem__ = get

    def params(self, name: str) -> dict[str, Any]:
        """The parameters of family ``name`` with their defaults (every field but ``name``)."""
        cls = self.get(name)
        return {f: info.get_default(call_default_factory=True)
                for f, info in cls.model_fields.items() if f != "name"}

    def owns(self, field: str) -> bool:
        """Whether ``field`` is a parameter of some family of this kind (but not of the base)."""
        return field not in self.base.model_fields and any(
            field in cls.model_fields for cls in self._families.values())

    # -- the union ---------------------------------------------------------------------------------

    def tag(self, name: str) -> str:
        return f"{self.kind}:{name}"

    def _discriminate(self, value: Any) -> str:
        if isinstance(value, dict):
            name = value.get(self.key, self.default)
        else:  # a family instance; anything else fails as "expected a mapping" on the default
            name = getattr(value, self.key, self.default)
        return self.tag(name) if isinstance(name, str) else f"{self.kind}:{name!r}"

    def union(self) -> Any:
        """``Annotated[Union[family classes], Discriminator]`` over the registered families."""
        if not self._families:
            raise RuntimeError(f"no {self.kind} family is registered")
        members = tuple(Annotated[cls, Tag(self.tag(name))] for name, cls in self._families.items())
        return Annotated[Union[members], Discriminator(self._discriminate)]  # noqa: UP007

    def adapter(self) -> TypeAdapter:
        if self._adapter is None:
            self._adapter = TypeAdapter(self.union())
        return self._adapter

    def validate(self, data: Any) -> F:
        """The family config for ``data`` (``ConfigError`` naming ``section.field`` on a problem)."""
        try:
            return self.adapter().validate_python(data)
        except ValidationError as e:
            raise from_validation_error(e, prefix=self.section) from None

    def default_factory(self) -> F:
        return self.get(self.default)()


def family_params(kind: str, name: str) -> dict[str, Any]:
    """The parameters of one family with their defaults, e.g. ``family_params("regularizer", "cges")``."""
    for registry in REGISTRIES:
        if registry.kind == kind:
            return registry.params(name)
    raise ValueError(f"unknown family kind {kind!r}; valid: {[r.kind for r in REGISTRIES]}")


# ----------------------------------------------------------------------------- the kinds


class DataConfig(Family):
    """Which data, and how it is split. Splits depend only on ``split_seed``, not on ``seed``.

    A dataset family implements ``describe() -> DataSpec`` (cheap: shapes and classes, every
    problem as a ``ConfigError``) and ``load(device) -> Dataset`` (see :mod:`trainables.data`)."""

    name: str = Field("digits", description="the dataset source (one of the families below)")
    val_fraction: float = Field(0.1, description="fraction of the training part held out for validation")
    test_fraction: float = Field(0.2, description="fraction held out for testing, only for data "
                                                  "without an official test split")
    test_split: Literal["random", "last"] = Field(
        "random", description="which examples are the test set: a random subset, or the last ones in "
                              "file order")
    split_seed: int = Field(0, description="seed of the splits (not the trial's `seed`)")
    train_subset: int | None = Field(None, description="keep at most this many training examples")
    # how batches reach the model (trainables.data: whole tensors on the device, or a DataLoader)
    in_memory: Literal["auto"] | bool = Field(
        "auto", description="`true`: every split as one tensor on the training device; `false`: "
                            "batches streamed through a torch DataLoader; `auto`: in memory when all "
                            "splits take at most 1 GiB as float32")
    num_workers: int | None = Field(None, description="DataLoader worker processes when streaming "
                                                      "(default: the trial's CPU threads - 1, at most 4)")
    pin_memory: bool | None = Field(None, description="pinned host memory for streamed batches "
                                                      "(default: on when training on CUDA)")
    persistent_workers: bool | None = Field(None, description="keep DataLoader workers between epochs "
                                                              "(default: on when there are workers)")
    prefetch_factor: int | None = Field(None, description="batches each DataLoader worker loads ahead "
                                                          "(default: torch's, 2)")

    @model_validator(mode="after")
    def check_split(self) -> DataConfig:
        check_finite(self.val_fraction, "val_fraction", 0, 1, hi_open=True)
        check_finite(self.test_fraction, "test_fraction", 0, 1, lo_open=True, hi_open=True)
        if self.train_subset is not None and self.train_subset < 1:
            raise FieldError("train_subset", "`train_subset >= 1` must hold", self.train_subset)
        if self.split_seed < 0:  # numpy's default_rng takes non-negative seeds only
            raise FieldError("split_seed", "`split_seed >= 0` must hold", self.split_seed)
        if self.num_workers is not None and self.num_workers < 0:
            raise FieldError("num_workers", "`num_workers >= 0` must hold", self.num_workers)
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise FieldError("prefetch_factor", "`prefetch_factor >= 1` must hold", self.prefetch_factor)
        if self.prefetch_factor is not None and self.num_workers == 0:
            raise FieldError("prefetch_factor", "needs worker processes (num_workers is 0)",
                              self.prefetch_factor)
        return self

    def describe(self) -> Any:  # -> DataSpec
        raise NotImplementedError(f"dataset {self.name!r} does not implement describe()")

    def load(self, device: Any = "cpu") -> Any:  # -> Dataset
        raise NotImplementedError(f"dataset {self.name!r} does not implement load()")


# A path field of a family: made absolute when the config is built (Ray moves each trial into its
# own working directory).
AbsolutePath = Annotated[str | None, AfterValidator(absolute_path)]


WEIGHTS_NAME = re.compile(r"[A-Za-z0-9_]+")  # a named-weights tag; anything else is a file path
SHA256 = re.compile(r"[0-9a-f]{64}")


def is_weights_name(value: str) -> bool:
    """``IMAGENET1K_V1``, ``DEFAULT``, ``pretrained``: a name, not a file (a file path has a ``/``,
    a ``.`` or some other character a tag never has)."""
    return bool(WEIGHTS_NAME.fullmatch(value))


class ModelConfig(Family):
    """The network. A model family implements ``build(spec: DataSpec) -> nn.Module``: a plain
    module for inputs of shape ``spec.input_shape`` that returns ``[batch, spec.num_classes]``.

    Every family may start from trained weights (``weights``: a state-dict file, loaded by
    ``build_model`` after building, every key and shape checked; a family with named weights,
    such as ``torchvision``, resolves its names in ``named_weights``)."""

    name: str = Field("mlp", description="the model (one of the families below)")
    weights: str | None = Field(
        None, description="trained weights to start from: a state-dict file "
                          "(`torch.save(model.state_dict(), path)`; every key and shape must match the "
                          "model). `torchvision` also takes a weights name (`IMAGENET1K_V1`, `DEFAULT`) "
                          "and `timm` `pretrained` / a pretrained tag, read from the local cache")
    weights_sha256: str | None = Field(
        None, description="the sha256 of the `weights` file (64 hex digits): a file with other "
                          "contents is an error (an exported search config names its shared start "
                          "this way)")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        # a family with named weights (the sources) overrides this validator (same name)
        if v is not None and is_weights_name(v):
            raise ValueError(f"model {cls.family_name()!r} has no named weights: give a state-dict "
                             f"file path (with a `/` or a file suffix, e.g. ./{v}.pt)")
        return absolute_path(v)

    @field_validator("weights_sha256")
    @classmethod
    def _sha256(cls, v: str | None) -> str | None:
        if v is not None and not SHA256.fullmatch(v.lower()):
            raise ValueError("expected 64 hexadecimal digits (`sha256sum FILE`)")
        return None if v is None else v.lower()

    @model_validator(mode="after")
    def _check_weights_sha256(self) -> ModelConfig:
        if self.weights_sha256 is not None and (self.weights is None or is_weights_name(self.weights)):
            raise FieldError("weights_sha256", "checks the `model.weights` file, but model.weights is "
                                               f"{self.weights!r}", self.weights_sha256)
        return self

    def build(self, spec: Any) -> Any:  # -> nn.Module
        raise NotImplementedError(f"model {self.name!r} does not implement build()")

    def load_weights(self, model: Any, spec: Any) -> None:
        """Load ``self.weights`` into ``model`` (``build_model`` calls it after building)."""
        if self.weights is None:
            return
        from .models.sources import load_weights_file  # torch: only when weights are loaded

        load_weights_file(self, model, spec)

    def adapt_state(self, model: Any, state: Any) -> Any:
        """Trained weights made to fit what :meth:`build` changed (none here)."""
        return state


LAYER_SELECTIONS = ("all", "all_but_first", "all_but_last", "inner")


class RegularizerConfig(Family):
    """The structured-sparsity regularizer, with its papers' parameters.

    Schedules (``lam``, ``mu``, ``lambda1``, ...) take a number (every regularized layer), a list
    (one value per regularized layer, in model order) or ``{first: a, last: b}`` (linear in
    depth). A regularizer family names its implementation in ``impl`` (a
    :class:`trainables.regularizers.Regularizer` subclass built per layer from the family's
    parameters); families override the defaults of the common fields where their papers differ."""

    impl: ClassVar[type | None] = None  # set by trainables.regularizers.register
    sparsifies: ClassVar[bool] = True  # whether the family zeroes weights (not none, not l2)
    # what ``target_sparsity`` counts: whole groups (rows), or single weights (l1, exclusive lasso)
    target_unit: ClassVar[Literal["groups", "elements"]] = "groups"

    # what ``groups: auto`` means where it does not mean ``channel`` (the family's paper's grouping)
    paper_groups: ClassVar[Literal["input", "input_position"]] = "input"
    auto_channel: ClassVar[bool] = True  # whether ``groups: auto`` is ``channel`` on a conv net

    name: str = Field("none", description="the regularizer (one of the families below)")
    groups: Literal["auto", "input", "input_position", "filter", "channel"] = Field(
        "auto", description="the groups (rows) of a layer's weight: `input` (one per input neuron or "
                            "channel, GrOWL), `input_position` (one per input channel and position, "
                            "CGES), `filter` (one per output filter; a zeroed filter also zeroes its bias and following "
                            "norm channel), `channel` (one per removable channel: its filter, bias, norm "
                            "entries and every consumer's input slice, the dependency group compaction "
                            "removes; trainables.channels). `auto`: `channel` for a family that zeroes whole "
                            "groups on a network with a Conv2d among the regularized layers (without tying), "
                            "else the family's paper grouping (`input`; `input_position` for CGES and "
                            "exclusive lasso). CGES stays on its paper's grouping: its exclusive term "
                            "spreads zeros inside a channel group (a filter's weights go, its norm "
                            "entries do not), so few whole channels would go")
    layers: Literal[LAYER_SELECTIONS] | list[int | str] = Field(  # type: ignore[valid-type]
        "all", description="which Conv2d/Linear layers are regularized: a keyword, or a list of "
                           "indices (0 = first, -1 = last), qualified layer names and fnmatch patterns "
                           "on them (`layer3.*`)")
    prox_every: Literal["step", "epoch"] = Field(
        "step", description="when the proximal step runs: after every optimizer step, or once per epoch "
                            "(step size = the current learning rate)")

    target_sparsity: float | None = Field(
        None, description="the fraction of the regularized groups (weights, for `l1` and "
                          "`exclusive_lasso`) that are zero at the end of training, in [0, 1): the "
                          "strength is adapted to reach it, starting from the configured one "
                          "(trainables.target); row families then default to `scale: relative`")

    @model_validator(mode="before")
    @classmethod
    def _target_scale(cls, data: Any) -> Any:
        # with a target, a row family's strength is relative to the layer's row norms by default
        if (isinstance(data, dict) and data.get("target_sparsity") is not None
                and "scale" in cls.model_fields and data.get("scale") is None):
            data = {**data, "scale": "relative"}
        return data

    @model_validator(mode="after")
    def _check_layers(self) -> RegularizerConfig:
        if isinstance(self.layers, list) and not self.layers:
            raise FieldError("layers", "an empty list; name at least one layer or use 'all'", [])
        if self.target_sparsity is not None:
            check_finite(self.target_sparsity, "target_sparsity", 0, 1, hi_open=True)
            if "final" in type(self).model_fields:  # a pruner: its schedule reaches `final`
                raise FieldError("target_sparsity", f"regularizer {self.name!r} prunes to its own "
                                  "`final` sparsity; set `final`, not target_sparsity", self.target_sparsity)
            if not self.sparsifies:
                raise FieldError("target_sparsity", f"regularizer {self.name!r} zeroes no groups, so it "
                                  "has no sparsity to target (use l1, group_lasso, exclusive_lasso, cges "
                                  "or growl)", self.target_sparsity)
        return self

    @property
    def sparsifying(self) -> bool:
        return self.sparsifies

    def link(self, trial: Any) -> RegularizerConfig:
        """This config completed and checked against the rest of the trial (``trial``: the
        ``TrialConfig`` being built), for a family whose parameters depend on another section
        (gradual pruning's epochs on ``optim.epochs``). Returns the config to use; a problem is a
        ``FieldError`` naming ``regularizer.<field>``."""
        return self


class OptimizerConfig(Family):
    """An optimizer family (``optim.name``): its parameters sit flat in the ``optim`` section.
    Implements ``build(params, lr, weight_decay) -> torch.optim.Optimizer``."""

    name: str = Field("sgd", description="the optimizer")

    def build(self, params: Any, lr: float, weight_decay: float) -> Any:
        raise NotImplementedError(f"optimizer {self.name!r} does not implement build()")


class LRScheduleConfig(Family):
    """A learning-rate schedule family (``optim.lr_schedule``): its parameters sit flat in the
    ``optim`` section. Implements ``build(optimizer, epochs)`` -> an LR scheduler stepped once per
    epoch, or ``None`` for a constant rate."""

    name: str = Field("constant", description="the learning-rate schedule")

    def build(self, optimizer: Any, epochs: int) -> Any:
        raise NotImplementedError(f"lr_schedule {self.name!r} does not implement build()")


DATASETS: Registry[DataConfig] = Registry("dataset", DataConfig, section="data", default="digits")
MODELS: Registry[ModelConfig] = Registry("model", ModelConfig, section="model", default="mlp")
REGULARIZERS: Registry[RegularizerConfig] = Registry("regularizer", RegularizerConfig,
                                                     section="regularizer", default="none")
OPTIMIZERS: Registry[OptimizerConfig] = Registry("optimizer", OptimizerConfig, section="optim",
                                                 default="sgd")
LR_SCHEDULES: Registry[LRScheduleConfig] = Registry("lr_schedule", LRScheduleConfig, section="optim",
                                                    key="lr_schedule", default="constant")
REGISTRIES = (DATASETS, MODELS, REGULARIZERS, OPTIMIZERS, LR_SCHEDULES)
