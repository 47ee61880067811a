"""Validation primitives shared by the config tree and every family declaration.

:class:`ConfigError` (the one error type for bad configuration, naming field path and value),
:func:`from_validation_error` (pydantic's errors turned into those messages), the strict base
model, range checks, and the depth schedules (``Ends``, ``Schedule``, ``resolve_schedule``).
This module imports only pydantic: family modules (models, datasets, regularizers, optimizers)
import it to declare their parameters, and :mod:`trainables.config` joins those declarations.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

class ConfigError(ValueError):
    """Invalid configuration. ``problems`` holds ``(field path, message, value)`` triples."""

    what = "config"

    def __init__(self, problems: list[tuple[str, str, Any]] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [("", problems, NO_VALUE)]
        self.problems = problems
        self.source = source
        lines = []
        for path, msg, value in problems:
            where = f"{path}: " if path else ""
            got = "" if value is NO_VALUE else f" (got {_show(value)})"
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

    def __reduce__(self) -> str:  # one instance, also after pickling (``value is NO_VALUE``)
        return "NO_VALUE"


NO_VALUE = _NoValue()


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


class FieldError(ValueError):
    """Raised by validators: names the field (relative to the model) and the offending value."""

    def __init__(self, field: str, msg: str, value: Any = NO_VALUE):
        super().__init__(msg)
        self.field, self.msg, self.value = field, msg, value


_FieldError = FieldError  # its former name (extension code written against the earlier docs)


_KIND_WORDS = {"float": "a number", "int": "an integer", "str": "a string", "bool": "true/false",
               "Ends": "{first: a, last: b}", "list[float]": "a list of numbers",
               "list[union[int,str]]": "a list of layer indices or names"}


def from_validation_error(e: ValidationError, prefix: str = "", source: str | None = None) -> ConfigError:
    """One line per bad field; union alternatives are merged into one message."""
    problems: dict[str, tuple[str, Any]] = {}
    unions: dict[str, tuple[list[str], Any]] = {}
    for err in e.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if str(p) not in UNION_TAGS]  # a family's tag is no field
        if err["type"] == "union_tag_invalid":  # an unknown family name: list the registered ones
            names = [t.split(":", 1)[1] for t in re.findall(r"'([^']*)'", err["ctx"]["expected_tags"])]
            given = err["input"].get("name", NO_VALUE) if isinstance(err["input"], dict) else err["input"]
            path = ".".join(([prefix] if prefix else []) + loc + ["name"])
            problems.setdefault(path, (f"Input should be {choices(names)}", given))
            continue
        if loc and loc[-1] == "[key]":  # a mapping key that is not a string (a number, a date, ...)
            loc.pop()
            err = {**err, "type": "invalid_key"}
        tags = [p for p in loc if p in _KIND_WORDS or p.startswith(("literal[", "list[", "function-"))]
        loc = [p for p in loc if p not in tags]
        path = ".".join(([prefix] if prefix else []) + loc)
        value = err.get("input", NO_VALUE)
        msg = err["msg"]
        exc = (err.get("ctx") or {}).get("error")
        if isinstance(exc, FieldError):
            path = ".".join(p for p in (path, exc.field) if p)
            msg, value = exc.msg, exc.value
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "invalid_key":
            msg = "a key must be a string (quote it)"
        elif err["type"] == "model_type" and not tags:  # "a valid dictionary or instance of OptimConfig"
            msg = "expected a mapping of fields"
        elif err["type"] == "missing":
            msg, value = "required field is missing", NO_VALUE
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


def choices(names: list[str]) -> str:
    """``'a', 'b' or 'c'``: the valid names, as pydantic words a Literal."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


# The tags of the registered families' discriminated unions (``model:mlp``): pydantic puts them
# in an error's location, where they are no field of the config (filled by ``families.Registry``).
UNION_TAGS: set[str] = set()


class StrictModel(BaseModel):
    """Frozen, strict (no bool-as-number, no string-as-number) and closed: an unknown key is an
    error that lists the valid fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fields = list(cls.model_fields)
            for key, value in data.items():
                if isinstance(key, str) and key not in cls.model_fields:
                    near = difflib.get_close_matches(key, fields, n=1)
                    hint = f"did you mean {near[0]}? " if near else ""
                    shown = key.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate, too
                    raise FieldError(shown, f"unknown field ({hint}valid fields: {', '.join(fields)})", value)
        return data


def check_finite(value: float, name: str, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> float:
    field = name.split("[")[0]
    if not math.isfinite(value):
        raise FieldError(field, f"`{name}` must be finite", value)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise FieldError(field, f"`{name} {'>' if lo_open else '>='} {lo}` must hold", value)
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise FieldError(field, f"`{name} {'<' if hi_open else '<='} {hi}` must hold", value)
    return value


# The largest layer width, class count or example count: sizes become tensor dimensions, and
# anything larger cannot be built (torch sizes are C longs) long before it fits in memory.
MAX_SIZE = 2**31 - 1
# torch.manual_seed accepts exactly the 64-bit seeds
SEED_RANGE = (-(2**63), 2**64 - 1)


def check_size(value: int | None, name: str, lo: int = 1) -> None:
    if value is not None and value < lo:
        raise FieldError(name, f"`{name} >= {lo}` must hold", value)
    if value is not None and value > MAX_SIZE:
        raise FieldError(name, f"`{name} <= {MAX_SIZE}` must hold", value)


# ----------------------------------------------------------------------------- schedules


class Ends(StrictModel):
    """A per-layer value linear in depth, from ``first`` (first regularized layer) to ``last``."""

    first: float
    last: float


class _ScheduleMark:
    """Marks a field as a depth schedule (``Schedule``): how the per-layer plan and the docs
    recognise one, by declaration rather than by comparing annotations."""

    def __repr__(self) -> str:
        return "schedule"


SCHEDULE = _ScheduleMark()
Schedule = Annotated[float | list[float] | Ends, SCHEDULE]


def is_schedule(field: Any) -> bool:
    """Whether a pydantic ``FieldInfo`` was declared as a ``Schedule``."""
    return any(m is SCHEDULE for m in getattr(field, "metadata", ()))


def _schedule_values(value: Schedule) -> list[float]:
    if isinstance(value, Ends):
        return [value.first, value.last]
    if isinstance(value, list):
        return list(value)
    return [value]


def check_schedule(value: Schedule | None, name: str, lo: float, hi: float | None = None) -> None:
    if value is None:
        return
    if isinstance(value, list) and not value:
        raise FieldError(name, "an empty list; give one value per regularized layer", value)
    if isinstance(value, Ends):  # name the end that is wrong: mu.last, not all of mu
        for end in ("first", "last"):
            try:
                check_finite(getattr(value, end), name, lo, hi)
            except FieldError as e:
                raise FieldError(f"{name}.{end}", e.msg, e.value) from None
        return
    for v in _schedule_values(value):
        try:
            check_finite(v, name, lo, hi)
        except FieldError as e:
            raise FieldError(name, e.msg, value) from None


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




def absolute_path(v: str | None) -> str | None:
    """A path made absolute from the current directory: Ray moves each trial into its own
    working directory, so a config keeps only absolute paths."""
    if v is None:
        return None
    if "\0" in v:
        raise ValueError("a path cannot contain a NUL character")
    try:
        return str(Path(v).expanduser().absolute())
    except RuntimeError:  # "~user" for a user that does not exist
        raise ValueError(f"cannot expand {v.split('/')[0]!r}: no such user") from None
