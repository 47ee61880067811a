"""The regularizer interface, the registry, and the per-layer plan built from a config.

(Over 400 lines on purpose: the interface a family implements and the plan that calls it —
layers, groups, schedules — change together.)

A regularizer family is two classes in one module: its parameters (a
:class:`~trainables.families.RegularizerConfig` subclass with a ``name`` literal) and its
implementation (a :class:`Regularizer` subclass, built per layer from those parameters), joined by
``@register``, which adds the config to the one registry of regularizers,
:data:`~trainables.families.REGULARIZERS`, with the implementation as its ``impl``. The
implementation's constructor arguments are config fields of the same names (checked there); a
field declared ``Schedule`` is resolved per layer before the constructor sees it.
"""

from __future__ import annotations

import fnmatch
import math
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from pydantic import Field, model_validator

from ..configbase import ConfigError, Schedule, check_schedule, is_schedule, resolve_schedule
from ..families import LAYER_SELECTIONS, REGULARIZERS, RegularizerConfig
from ..groups import conv_groups, from_groups, member_dims, to_groups

__all__ = [
    "Regularizer",
    "implementations",
    "register",
    "get_regularizer",
    "LayerRegularizer",
    "ChannelLayerRegularizer",
    "Pruner",
    "select_layers",
    "build_layer_regularizers",
    "LamConfig",
    "mask_pruned",
    "row_scale",
    "scale_factor",
    "scheduled_params",
]


class Regularizer(ABC):
    """What a regularizer does to one layer's group matrix ``W`` (``[groups, members]``).

    The training loop calls ``update(W, lr=..., step=..., epoch=...)`` right after the optimizer
    step (every step, or once per epoch with ``prox_every: epoch``) and writes the result back.
    For a penalty ``Omega`` that is the proximal step with step size = the current learning
    rate: ``prox(W, lr) = argmin_X 1/2||X - W||^2 + lr * Omega(X)``, and ``penalty(W)`` is
    ``Omega(W)``, strengths included (logged each epoch). A family that is no penalty but a
    mask driven by a schedule over steps (gradual magnitude pruning, which may rank weights
    across layers) is a :class:`Pruner` instead, with the zero ``penalty``. All are pure (never
    modify ``W``). Subclasses are built with their per-layer parameter values as keyword
    arguments (``params``: the config field names they take).

    Where ``in_place`` is true, ``prox_(W, dims, step, scratch)`` does the same step in place on
    the layer's weight itself (members spanning ``dims``, ``trainables.groups.member_dims``;
    ``scratch`` a weight-sized buffer the caller keeps): the per-step fast path (ungrouped layers).
    """

    name: ClassVar[str]
    config: ClassVar[type[RegularizerConfig]]  # the family's parameters
    # constructor arguments (config field names): read from ``__init__``'s signature by
    # ``@register``; a class whose constructor takes ``**kwargs`` declares them
    params: ClassVar[tuple[str, ...]] = ()
    in_place: bool = False

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        return W.new_zeros(())

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        raise NotImplementedError(f"regularizer {self.name!r} has no proximal operator")

    def update(self, W: torch.Tensor, *, lr: float, step: int, epoch: int) -> torch.Tensor:
        """``W`` after optimizer step number ``step`` (counted from 0 over the run) in ``epoch``
        (from 0): the proximal step with step size ``lr`` unless a family says otherwise."""
        return self.prox(W, lr)

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self.params)
        return f"{type(self).__name__}({args})"


class Pruner(Regularizer):
    """A family that is no penalty but a mask driven by a schedule over optimizer steps (gradual
    magnitude pruning). It has no penalty and no proximal step; after optimizer step number
    ``step`` (counted from 0 over the run) the training loop calls :meth:`prune` once with every
    selected layer's weight, since a pruner may rank weights across layers, keeps the masks it
    returns in the run's checkpoints and multiplies them into the weights after every later step:
    pruned weights stay zero whatever momentum or Adam would do to them. Every layer's instance
    holds the same settings; the loop asks the first layer's. A ``structured`` pruner ranks
    whole groups: with ``groups: channel`` it is handed each layer's channel-group matrix (rows =
    channels) instead of the weight."""

    structured: ClassVar[bool] = False

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return W.clone()  # no proximal step: the masks do the work

    def prune(self, weights: list[torch.Tensor], keep: list[torch.Tensor | None], *, step: int,
              steps_per_epoch: int, conv_groups: list[int] | None = None) -> list[torch.Tensor] | None:
        """The new keep masks (bool, one per weight, its shape) after optimizer step ``step``, or
        ``None`` when this step prunes nothing. ``keep`` holds the current masks (non-zero = kept;
        ``None`` = nothing pruned yet); a pruned weight is never kept again. ``conv_groups`` is
        each weight's layer's ``groups`` (``trainables.groups.conv_groups``; ``None``: all 1)."""
        raise NotImplementedError(f"pruner {self.name!r} does not implement prune()")


def _init_params(cls: type[Regularizer]) -> tuple[str, ...]:
    """The named constructor arguments of ``cls`` (what a config passes it, per layer)."""
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    signature = inspect.signature(cls.__init__)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()) and cls.params:
        return cls.params  # a constructor taking **kwargs: the class declares them
    return tuple(n for n, p in list(signature.parameters.items())[1:] if p.kind in kinds)


def register(cls: type[Regularizer]) -> type[Regularizer]:
    """Class decorator: register a :class:`Regularizer`'s ``config`` family in
    :data:`~trainables.families.REGULARIZERS` (a second family of one name is an error there),
    with ``cls`` as its implementation."""
    if cls.config.family_name() != cls.name:
        raise ValueError(f"regularizer {cls.name!r} has the config of {cls.config.family_name()!r}")
    cls.params = _init_params(cls)
    unknown = [p for p in cls.params if p not in cls.config.model_fields]
    if unknown:
        raise ValueError(f"regularizer {cls.name!r} takes {unknown}, which its config does not declare")
    REGULARIZERS.register(cls.config)
    cls.config.impl = cls
    return cls


def implementations() -> dict[str, type[Regularizer]]:
    """Every registered regularizer's implementation, by name (in registration order)."""
    return {name: config.impl for name, config in REGULARIZERS.items()}


def scheduled_params(cfg: RegularizerConfig | type[RegularizerConfig]) -> tuple[str, ...]:
    """The fields of a regularizer config given as a schedule over depth (number, list, {first, last})."""
    cls = cfg if isinstance(cfg, type) else type(cfg)
    return tuple(f for f, info in cls.model_fields.items() if is_schedule(info))


def mask_pruned(default: bool) -> Any:
    """The ``mask_pruned`` field of a sparsifying family, with that family's default."""
    return Field(default, description="keep groups that reached zero at zero for the rest of training")


def row_scale() -> Any:
    """The ``scale`` field of a row-group penalty (group lasso, GrOWL)."""
    return Field("absolute", description=(
        "`absolute` (the papers'): strengths are thresholds on row norms. `relative`: they are "
        "multiplied at each prox by the layer's RMS row norm (||W||_F / sqrt(rows)), so a row is pruned "
        "when small relative to the layer (prox(cW) = c prox(W)); for a layer followed by BatchNorm, "
        "which absolute thresholds shrink until it collapses"))


def scale_factor(W: torch.Tensor, scale: str) -> float:
    """What a row-group penalty's strengths are multiplied by for the group matrix ``W``: 1 for
    ``absolute``, ``||W||_F / sqrt(rows)`` (the RMS row norm, a constant of the step) for ``relative``."""
    if scale != "relative":
        return 1.0
    return float(torch.linalg.vector_norm(W.detach())) / math.sqrt(max(W.shape[0], 1))


class LamConfig(RegularizerConfig):
    """A family with one strength schedule ``lam`` (families override its default)."""

    lam: Schedule = Field(1e-3, description="the strength: a number, one per regularized layer, or "
                                            "{first, last} linear in depth")

    @model_validator(mode="after")
    def _check_lam(self) -> LamConfig:
        check_schedule(self.lam, "lam", 0)
        return self


def get_regularizer(name: str) -> type[Regularizer]:
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; valid: {sorted(REGULARIZERS)}")
    return REGULARIZERS.get(name).impl


@dataclass
class LayerRegularizer:
    """One regularized layer: its module, its grouping and its regularizer instance."""

    name: str
    module: nn.Module
    grouping: str
    regularizer: Regularizer
    scratch: torch.Tensor | None = field(default=None, repr=False)  # for an in-place prox_
    _dims: tuple[int, ...] | None = field(default=None, repr=False)  # member_dims, once per layer

    def groups(self) -> torch.Tensor:
        return to_groups(self.module.weight.detach(), self.grouping, conv_groups(self.module))

    def penalty(self) -> torch.Tensor:
        return self.regularizer.penalty(to_groups(self.module.weight, self.grouping, conv_groups(self.module)))

    @torch.no_grad()
    def apply_prox(self, step: float) -> None:
        if self._fast():  # the fast path, on the weight itself
            self._prox_in_place(step)
            return
        self._write(self.regularizer.prox(to_groups(self.module.weight.detach(), self.grouping, conv_groups(self.module)), step))

    @torch.no_grad()
    def apply_update(self, *, lr: float, step: int, epoch: int) -> None:
        """The regularizer's step after the optimizer's (see :meth:`Regularizer.update`)."""
        if self._fast() and type(self.regularizer).update is Regularizer.update:  # the prox with step lr
            self._prox_in_place(lr)
            return
        G = to_groups(self.module.weight.detach(), self.grouping, conv_groups(self.module))
        self._write(self.regularizer.update(G, lr=lr, step=step, epoch=epoch))

    def _fast(self) -> bool:
        # member_dims describes ungrouped layers only; grouped convs take the group-matrix path
        return bool(self.regularizer.in_place) and conv_groups(self.module) == 1

    def _prox_in_place(self, step: float) -> None:
        W = self.module.weight
        if self.scratch is None or self.scratch.shape != W.shape or self.scratch.device != W.device:
            self.scratch = torch.empty_like(W)
        if self._dims is None:
            self._dims = member_dims(W.ndim, self.grouping)
        self.regularizer.prox_(W.detach(), self._dims, step, self.scratch)

    def _write(self, new: torch.Tensor) -> None:
        W = self.module.weight
        W.copy_(from_groups(new, W.shape, self.grouping, conv_groups(self.module)))

    def write(self, new: torch.Tensor) -> None:
        """Set the layer's group matrix (what :meth:`groups` reads) to ``new``."""
        self._write(new)


@dataclass
class ChannelLayerRegularizer:
    """``groups: channel``: one layer's channel groups (:class:`trainables.channels.ChannelGroup`,
    rows = its output channels over every parameter compaction removes with them) and the
    regularizer on that matrix. Same interface as :class:`LayerRegularizer`."""

    name: str
    module: nn.Module
    grouping: str
    regularizer: Regularizer
    group: Any = field(default=None, repr=False)

    def groups(self) -> torch.Tensor:
        return self.group.matrix().detach()

    def penalty(self) -> torch.Tensor:
        return self.regularizer.penalty(self.group.matrix())

    def write(self, new: torch.Tensor) -> None:
        """Set the channel rows (every parameter of each group) to ``new``."""
        self.group.write(new)

    @torch.no_grad()
    def apply_prox(self, step: float) -> None:
        self.group.write(self.regularizer.prox(self.groups(), step))

    @torch.no_grad()
    def apply_update(self, *, lr: float, step: int, epoch: int) -> None:
        self.group.write(self.regularizer.update(self.groups(), lr=lr, step=step, epoch=epoch))

    @torch.no_grad()
    def zero(self, dead: torch.Tensor) -> None:
        """Zero the channels ``dead`` (bool, one per row) in every parameter of their group."""
        self.group.zero(dead)


def select_layers(layers: list[tuple[str, nn.Module]], selection: str | list[int | str],
                  model: nn.Module | None = None) -> list[tuple[str, nn.Module]]:
    """The layers chosen by a ``regularizer.layers`` value, in model order.

    A list holds indices (0 = first, -1 = last), qualified layer names and ``fnmatch`` patterns
    on them (``layer3.*``: ``*`` also matches dots). A pattern or name that matches no Conv2d/Linear
    layer is an error naming it (and, with ``model``, the other modules it does match)."""
    n = len(layers)
    if isinstance(selection, str):
        if selection not in LAYER_SELECTIONS:
            raise ConfigError([("regularizer.layers", f"expected one of {list(LAYER_SELECTIONS)}", selection)])
        lo = 1 if selection in ("all_but_first", "inner") else 0
        hi = n - 1 if selection in ("all_but_last", "inner") else n
        return layers[lo:hi]
    names = [name for name, _ in layers]
    chosen: set[int] = set()
    explicit: set[int] = set()  # chosen by index or exact name
    for item in selection:
        if isinstance(item, int):
            if not -n <= item < n:
                raise ConfigError([("regularizer.layers",
                                    f"layer index out of range: the model has {n} Conv2d/Linear layers", item)])
            index = item % n
        elif item in names:
            index = names.index(item)
        else:
            matches = [i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, item)]
            if not matches:
                raise ConfigError([("regularizer.layers", _no_match(item, names, model), item)])
            chosen.update(matches)  # patterns may overlap each other and named layers
            continue
        if index in explicit:  # the same index or name twice is a typo; overlapping patterns are not
            raise ConfigError([("regularizer.layers", "layer selected twice", item)])
        explicit.add(index)
        chosen.add(index)
    return [layers[i] for i in sorted(chosen)]


def _no_match(item: str, names: list[str], model: nn.Module | None) -> str:
    shown = names if len(names) <= 12 else names[:6] + ["..."] + names[-5:]
    msg = f"matches no Conv2d/Linear layer of this model (its {len(names)} layers: {', '.join(shown)})"
    others = [(q, type(m).__name__) for q, m in (model.named_modules() if model is not None else [])
              if q and fnmatch.fnmatchcase(q, item)]
    if others:
        listed = ", ".join(f"{q} ({kind})" for q, kind in others[:4]) + (" ..." if len(others) > 4 else "")
        msg += f"; it matches {listed}, not a Conv2d/Linear layer"
        if any(name.startswith(item + ".") for name in names):
            msg += f" (for the layers inside, write {item + '.*'!r})"
    return msg


def build_layer_regularizers(cfg: RegularizerConfig, model: nn.Module,
                             input_shape: tuple[int, ...] | None = None, *,
                             tying: bool = False) -> list[LayerRegularizer]:
    """Resolve the config against a model: chosen layers, grouping, per-layer schedule values,
    instances.

    ``groups: channel`` traces the model (``input_shape``, default ``model.input_shape``); a chosen
    layer whose channels form no channel group (the logits, a layer feeding a LayerNorm, ...) is
    left out, and a selection left with no layer is a ConfigError naming why. ``groups: auto``
    (the default) is ``channel`` for a family that zeroes whole groups on a network with a Conv2d
    among the chosen layers, unless ``tying`` (which clusters one layer's rows) is on; otherwise,
    and where the network cannot be traced (with a warning) or forms no channel group, it is the
    family's paper grouping (``paper_groups``)."""
    from ..models import prunable_layers

    cls = get_regularizer(cfg.name)
    layers = select_layers(prunable_layers(model), cfg.layers, model)
    grouping = cfg.groups
    if grouping == "auto":
        grouping = cfg.paper_groups
        if _zeroes_groups(cfg, cls) and not tying and any(isinstance(m, nn.Conv2d) for _, m in layers):
            try:
                layers, found = _channel_layers(model, layers, input_shape, cfg)
                grouping = "channel"
            except ConfigError as e:
                import warnings

                warnings.warn(f"regularizer.groups: auto: {e.problems[0][1]}; using `{grouping}` groups, "
                              "which compaction may not remove whole", stacklevel=2)
    elif grouping == "channel" and cfg.name != "none":
        layers, found = _channel_layers(model, layers, input_shape, cfg)
    if not layers and cfg.name != "none":
        raise ConfigError([("regularizer.layers", "selects no layer of this model", cfg.layers)])
    per_layer: list[dict[str, Any]] = [{} for _ in layers]
    scheduled = scheduled_params(cfg)
    for param in cls.params:
        value = grouping if param == "groups" else getattr(cfg, param)
        values = resolve_schedule(value, len(layers), param) if param in scheduled else [value] * len(layers)
        for kwargs, v in zip(per_layer, values):
            kwargs[param] = v
    if grouping == "channel" and cfg.name != "none":
        return [ChannelLayerRegularizer(name, module, "channel", cls(**kwargs), found[module])
                for (name, module), kwargs in zip(layers, per_layer)]
    return [LayerRegularizer(name, module, grouping, cls(**kwargs))
            for (name, module), kwargs in zip(layers, per_layer)]


def _zeroes_groups(cfg: RegularizerConfig, cls: type[Regularizer]) -> bool:
    """Whether the family removes whole groups (what ``groups: auto`` makes channels): a row
    penalty that opts in (group lasso, GrOWL; not CGES: ``auto_channel``) or a structured pruner."""
    if issubclass(cls, Pruner):
        return cls.structured
    return cfg.sparsifies and cfg.target_unit == "groups" and cfg.auto_channel


def _channel_layers(model: nn.Module, layers: list[tuple[str, nn.Module]], input_shape: Any,
                    cfg: RegularizerConfig) -> tuple[list[tuple[str, nn.Module]], dict[nn.Module, Any]]:
    from ..channels import channel_groups

    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if not shape:
        raise ConfigError([("regularizer.groups", f"needs the model's input shape to trace "
                                                  f"{type(model).__name__}", "channel")])
    try:
        found, skipped = channel_groups(model, tuple(shape), roots=[m for _, m in layers])
    except Exception as e:  # noqa: BLE001 - untraceable model
        raise ConfigError([("regularizer.groups", f"Torch-Pruning cannot trace {type(model).__name__} "
                                                  f"({type(e).__name__}: {e})", "channel")]) from e
    by_root = {g.root: g for g in found}
    kept = [(name, m) for name, m in layers if m in by_root]
    if not kept:
        why = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]) or "no channel groups"
        raise ConfigError([("regularizer.groups", f"the selected layers form no channel group ({why})",
                            "channel")])
    return kept, by_root


def growl_rank(p: float, n: int) -> int:
    """The integer p of GrOWL Eq. 9 for a fraction ``p`` of ``n`` rows: floor(p n), at least 1."""
    return max(1, min(n, math.floor(p * n + 1e-9)))
