"""What the model *sources* share (``torchvision``, ``timm``, ``python``): calling a builder with the
data's ``num_classes`` / ``input_shape``, importing a user's ``module:attribute``, and loading trained
weights into the built network.

Every problem is a :class:`~trainables.configbase.ConfigError` naming the field (``model.arch``,
``model.factory``, ``model.kwargs``, ``model.weights``) and the value, so the CLI reports it with
exit status 2 before any work starts. Nothing here downloads: named weights (torchvision's
``IMAGENET1K_V1``, timm's ``pretrained``) are read from the local cache or refused.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import model_validator
from torch import nn

from ..configbase import ConfigError, absolute_path, FieldError
from ..data import DataSpec
from ..families import WEIGHTS_NAME, ModelConfig, is_weights_name
from ..imports import import_object

__all__ = ["SourceConfig", "DATA_ARGS", "call_builder", "import_factory", "load_state_dict",
           "load_weights_into", "load_weights_file", "file_sha256", "is_weights_name", "weights_field",
           "WEIGHTS_NAME"]

DATA_ARGS = ("num_classes", "input_shape")  # what a builder is given from the data, if it names them


class SourceConfig(ModelConfig):
    """Shared behaviour of the model sources (no fields: each family declares its own)."""

    source_field: ClassVar[str] = "name"  # the field that names the network: "arch" or "factory"

    @model_validator(mode="after")
    def _check_kwargs(self) -> SourceConfig:
        for key in DATA_ARGS:
            if key in self.kwargs:
                raise FieldError(f"kwargs.{key}", f"set from the data (leave `{key}` out of "
                                                   "model.kwargs)", self.kwargs[key])
        return self

    def load_weights(self, model: nn.Module, spec: DataSpec) -> None:
        """Load ``self.weights`` into ``model`` (a file, or a named tag the family resolves)."""
        if self.weights is None:
            return
        if not is_weights_name(self.weights):
            load_weights_file(self, model, spec)
            return
        load_weights_into(model, self.adapt_state(model, self.named_weights(spec)), self.weights, spec,
                          reinit_head=True)

    def named_weights(self, spec: DataSpec) -> Mapping[str, torch.Tensor]:
        raise ConfigError([("model.weights", "a path to a state-dict file (with a `/` or a file "
                                             "suffix, e.g. ./weights.pt)", self.weights)])


def weights_field(value: str | None, *, names: bool) -> str | None:
    """``model.weights``: a file path made absolute (Ray moves trials into their own directories),
    or, where the family has named weights (``names``), a tag kept as written."""
    if value is None or (names and is_weights_name(value)):
        return value
    return absolute_path(value)


def _describe_call(name: str, kwargs: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{name}({args})"


def call_builder(builder: Callable[..., Any], kwargs: Mapping[str, Any], spec: DataSpec, *, field: str,
                 value: str, always: tuple[str, ...] = ()) -> nn.Module:
    """``builder(**kwargs, + num_classes / input_shape)``: the data arguments its signature names
    (or those in ``always``: a torchvision builder takes ``num_classes`` through ``**kwargs``).
    Anything it raises, or a result that is no ``nn.Module``, is a ``ConfigError`` on ``field``."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin without a signature: give it only what it was given
        params = {}
    data = {"num_classes": spec.num_classes, "input_shape": tuple(spec.input_shape)}
    call = dict(kwargs)
    for key in DATA_ARGS:
        named = key in params and params[key].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                        inspect.Parameter.KEYWORD_ONLY)
        if named or key in always:
            call[key] = data[key]
    shown = _describe_call(value, call)
    try:
        model = builder(**call)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: any failure is a config problem
        raise ConfigError([(field, f"{shown} raised {type(e).__name__}: {e}", value)]) from None
    if not isinstance(model, nn.Module):
        raise ConfigError([(field, f"{shown} returned a {type(model).__name__}, not an nn.Module", value)])
    return model


def import_factory(factory: str, field: str = "model.factory") -> Callable[..., Any]:
    """The callable named by ``module:attribute`` (the attribute may be dotted: ``pkg.mod:Net.build``),
    imported by :func:`trainables.imports.import_object` (the current directory or ``PYTHONPATH``),
    or a ``ConfigError`` naming ``field``."""
    try:
        target = import_object(factory)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError([(field, str(e), factory)]) from None
    if not callable(target):
        raise ConfigError([(field, f"{factory!r} is a {type(target).__name__}, not a function or "
                                   "nn.Module class", factory)])
    return target


def load_state_dict(path: str, field: str = "model.weights") -> Mapping[str, torch.Tensor]:
    """A state dict from ``path`` (``torch.load(weights_only=True)``; a ``{"state_dict": ...}``
    checkpoint is unwrapped), or a ``ConfigError`` naming ``field``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([(field, "no such file" if not p.exists() else "not a file", path)])
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable, or a pickle of something else than tensors
        raise ConfigError([(field, f"cannot be read as a state dict with torch.load(weights_only=True): "
                                   f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", path)]) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError([(field, "not a state dict (a mapping of parameter names to tensors, as "
                                   "torch.save(model.state_dict(), path) writes)", path)])
    return state


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's contents, as ``sha256sum`` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights_file(cfg: ModelConfig, model: nn.Module, spec: DataSpec) -> None:
    """Load the state-dict file ``cfg.weights`` into ``model`` (every family's file weights): its
    sha256 checked against ``cfg.weights_sha256`` when that is set, every key and shape against the
    model. Each problem is a ``ConfigError`` naming ``model.weights`` or ``model.weights_sha256``."""
    path = cfg.weights
    if cfg.weights_sha256 is not None and Path(path).is_file():
        try:
            actual = file_sha256(path)
        except OSError as e:
            raise ConfigError([("model.weights", f"cannot be read: {e.strerror or e}", path)]) from None
        if actual != cfg.weights_sha256:
            raise ConfigError([("model.weights_sha256", f"does not match the file {path} (its sha256 "
                                                        f"is {actual}): the file changed", cfg.weights_sha256)])
    load_weights_into(model, cfg.adapt_state(model, load_state_dict(path)), path, spec, reinit_head=False)


def _head(model: nn.Module) -> str | None:
    """The qualified name of the last Linear/Conv2d in module order: the classifier of a network."""
    from .base import prunable_layers

    layers = prunable_layers(model)
    return layers[-1][0] if layers else None


def load_weights_into(model: nn.Module, state: Mapping[str, torch.Tensor], value: str, spec: DataSpec,
                      *, reinit_head: bool, field: str = "model.weights") -> None:
    """Load ``state`` into ``model``: every key and shape must match. With ``reinit_head`` (named
    weights, trained on other classes), a classifier whose shape differs keeps its fresh
    initialisation instead."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    head = _head(model)
    skip: list[str] = []
    if reinit_head and head is not None:
        skip = [k for k in wrong if k.rpartition(".")[0] == head]
        wrong = [k for k in wrong if k not in skip]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    for k in wrong[:3]:
        note = ""
        if head is not None and k.rpartition(".")[0] == head:
            note = f" (the classifier: the data has {spec.num_classes} classes)"
        problems.append(f"{k} has shape {list(state[k].shape)} in the file, {list(own[k].shape)} "
                        f"in the model{note}")
    if len(wrong) > 3:
        problems.append(f"and {len(wrong) - 3} more shape mismatches")
    if problems:
        raise ConfigError([(field, "does not match the model: " + "; ".join(problems), value)])
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=not skip)


def _few(keys: list[str]) -> str:
    return str(keys[:5])[:-1] + (f", ... {len(keys) - 5} more]" if len(keys) > 5 else "]")

