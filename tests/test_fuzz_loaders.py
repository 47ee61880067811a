"""Property-based fuzzing of the config and spec loaders.

Whatever a file holds, ``TrialConfig.from_yaml``, ``TrialConfig.from_dict`` and
``search.spec.load_spec`` either load it or raise the project's own validation error
(``ConfigError``, which ``SpecError`` subclasses, or ``YamlError``): never a ``KeyError``,
``TypeError``, ``RecursionError``, a pydantic ``ValidationError`` or anything else, which the CLI
would show as a traceback instead of one clear message with exit status 2.

Three kinds of input: (a) arbitrary YAML documents built from scalars (huge ints, nan/inf, dates,
strings such as ``1e-3`` written as YAML text), lists and mappings; (b) valid files (the quickstart
spec, a CGES config) with values replaced, inserted or deleted at random paths; (c) arbitrary text
and bytes as the whole file. A config that loads must round-trip through ``to_dict`` and YAML.
"""

from __future__ import annotations

import atexit
import copy
import datetime as dt
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from search.spec import SearchSpec, load_spec
from trainables.config import ConfigError, TrialConfig
from trainables.yamlio import YamlError, dump_yaml, load_yaml, loads_yaml

ROOT = Path(__file__).parent.parent
QUICKSTART = load_yaml(ROOT / "examples/quickstart.yaml")
CGES = load_yaml(ROOT / "examples/train/cges_digits.yaml")

# SPARSETUNE_FUZZ_EXAMPLES=5000 for a longer hunt; 150 keeps the file under a minute on 2 cores
FUZZ = settings(max_examples=int(os.environ.get("SPARSETUNE_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# ----------------------------------------------------------------------------- strategies


class Raw(str):
    """A scalar written verbatim into the YAML text (so ``1e-3`` or ``2024-01-01`` is resolved by
    the loader, not quoted by a dumper)."""


RAW_SCALARS = [
    "1e-3", "1E3", "-1e-3", "5e2", "1e400", "-1e400", ".5", "1.", "+1", "-0", "0.0", "1_000",
    "0x1F", "0o17", "017", "190:20:30", ".nan", ".NaN", ".inf", "-.inf", "+.inf", "~", "null",
    "yes", "no", "on", "off", "true", "False", "2024-01-01", "2001-12-14t21:59:43.10-05:00",
    "2002-12-14 21:59:43 +1", "!!binary aGVsbG8=", "!!str 1", "!!float 1", "!!int 7", "!!int 1e3",
    "!!float abc", "!!timestamp 2020-13-45", "!!null ''", "!!bool yes", "!!set {a, b}",
    "!!omap [a: 1]", "!!pairs [a: 1, a: 2]", "''", '""', "=", "<<", "'a: b'", '"\\ud800"',
    '"\\x00"', "12345678901234567890123456789012345678901234567890",
]
# names that reach deeper validation than random text would
WORDS = [
    "seed", "device", "data", "model", "optim", "regularizer", "tying", "name", "path", "target",
    "val_fraction", "split_seed", "train_subset", "n_samples", "hidden", "dropout", "batch_norm",
    "lr", "epochs", "batch_size", "momentum", "lr_schedule", "lam", "mu", "first", "last", "p",
    "lambda1", "lambda2", "groups", "layers", "prox_every", "mask_pruned", "exact", "enabled",
    "preference", "base", "space", "regularizers", "trials", "objectives", "metric", "mode",
    "reference", "sampler", "concurrency", "resources", "cpu", "gpu", "scheduler", "grace_period",
    "storage", "tracking_uri", "allocation", "max_failures", "type", "low", "high", "step", "log",
    "choices", "optim/lr", "regularizer/lam", "mu/first", "mu/last", "model/hidden", "optim.epochs",
    "digits", "correlated_blocks", "idx", "arrays", "mnist", "mlp", "lenet_cges", "sgd", "adam",
    "none", "l1", "l2", "group_lasso", "exclusive_lasso", "cges", "growl", "uniform", "loguniform",
    "int", "categorical", "val_accuracy", "params_nonzero", "flops_compact", "max", "min", "all",
    "inner", "input", "filter", "epoch", "asha", "tpe", "random", "auto", "cpu", "cuda:0", "fc1",
    "~nobody-here/x", "", "/", "a//b",
]

huge_ints = st.sampled_from([2**31, 2**32, 2**63, 2**64, 10**30, -(10**30), 10**400, -(2**63) - 1])
numbers = st.one_of(
    st.integers(), huge_ints, st.integers(min_value=-3, max_value=12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-0.5, max_value=1.5), st.sampled_from([0.0, 1.0, 1e-3, 0.5, -1.0]),
)
scalars = st.one_of(
    st.none(), st.booleans(), numbers,
    st.text(max_size=12), st.sampled_from(WORDS),
    st.dates(), st.datetimes(),
    st.sampled_from(RAW_SCALARS).map(Raw),
)
keys = st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS), st.text(max_size=8), st.integers(),
                 st.booleans(), st.none(), st.floats(allow_nan=False), st.dates(),
                 st.sampled_from(["1e-3", "2024-01-01", "~", "<<", "yes"]).map(Raw))
trees = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)


def _scalar_text(x: Any) -> str:
    if isinstance(x, Raw):
        return str(x)
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return ".nan"
        if math.isinf(x):
            return ".inf" if x > 0 else "-.inf"
        return repr(x)
    if isinstance(x, dt.datetime):
        return x.isoformat()
    if isinstance(x, dt.date):
        return x.isoformat()
    return json.dumps(x)  # a double-quoted YAML scalar (escapes, lone surrogates and all)


def render(x: Any) -> str:
    """A one-line flow-style YAML text of ``x`` (scalars via :func:`_scalar_text`)."""
    if isinstance(x, dict):
        return "{" + ", ".join(f"{render(k)}: {render(v)}" for k, v in x.items()) + "}"
    if isinstance(x, list):
        return "[" + ", ".join(render(v) for v in x) + "]"
    return _scalar_text(x)


# ----------------------------------------------------------------------------- the properties

_TMP = Path(tempfile.mkdtemp(prefix="sparsetune-fuzz-"))  # not tmp_path: hypothesis reruns the test
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def _write(text: str | bytes) -> Path:
    path = _TMP / "doc.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def _ours(fn, *args, **kwargs):
    """fn's result, or None when it raised the project's own error (with a usable message)."""
    try:
        result = fn(*args, **kwargs)
    except (ConfigError, YamlError) as e:
        text = str(e)
        assert text and "Traceback" not in text
        _event(f"{fn.__name__}: {type(e).__name__}")
        return None
    _event(f"{fn.__name__}: loaded")
    return result


def _event(what: str) -> None:  # shown by pytest --hypothesis-show-statistics
    if currently_in_test_context():
        event(what)


def _check_config_round_trip(cfg: TrialConfig) -> None:
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert TrialConfig.from_dict(loads_yaml(cfg.to_yaml())) == cfg  # what an export re-runs


def _check_config_text(text: str | bytes) -> None:
    path = _write(text)
    cfg = _ours(TrialConfig.from_yaml, path)
    if cfg is not None:
        _check_config_round_trip(cfg)
    try:
        data = load_yaml(path)
    except YamlError:
        return
    cfg = _ours(TrialConfig.from_dict, data)
    if cfg is not None:
        _check_config_round_trip(cfg)


def _check_spec_text(text: str | bytes) -> None:
    spec = _ours(load_spec, _write(text))
    if spec is not None:
        assert isinstance(spec, SearchSpec) and spec.trials >= 1
        # a loaded spec is stable: validating its own fields again gives the same spec
        assert SearchSpec.model_validate(spec.model_dump()) == spec


# (a) arbitrary documents --------------------------------------------------------------------


@FUZZ
@given(doc=trees)
@example(doc={"seed": dt.date(2024, 1, 1)})
@example(doc={1: 2, None: 3, True: 4})
@example(doc={"regularizer": {"name": "l1", "lam": Raw("1e-3")}})
@example(doc={"data": {"name": "idx", "path": "~nobody-here/x"}})
@example(doc={"data": {"name": "arrays", "path": "x.csv", "target": "1e5"}})
@example(doc={"model": {"hidden": [10**30]}, "seed": 2**64})
def test_arbitrary_documents_as_config(doc):
    _check_config_text(render(doc))
    _ours(TrialConfig.from_dict, doc)  # the Python values themselves (dates, tuples of keys, ...)


@FUZZ
@given(doc=trees)
@example(doc={"name": "x", "trials": 1, "space": {"": {"type": "uniform", "low": 0, "high": 1}}})
@example(doc={"name": "x", "trials": 1, "seed": -1, "space": {"optim/lr": {"type": "uniform", "low": 0.1, "high": 0.2}}})
@example(doc={"name": dt.date(2024, 1, 1), "trials": 1, "base": {1: 2}})
def test_arbitrary_documents_as_spec(doc):
    _check_spec_text(render(doc))


# (b) structured fuzz from valid files -------------------------------------------------------


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _near(value: Any) -> st.SearchStrategy:
    """A value of the same kind as ``value`` (so that many mutants stay valid and reach the
    checks against the data and the model), or sometimes anything at all."""
    if isinstance(value, bool):
        kind = st.booleans()
    elif isinstance(value, int):
        kind = st.one_of(st.integers(min_value=-2, max_value=20), huge_ints)
    elif isinstance(value, float):
        kind = st.one_of(st.floats(min_value=-0.5, max_value=2.0), st.sampled_from([0.0, 1.0, 1e-9]),
                         st.floats(allow_nan=True, allow_infinity=True))
    elif isinstance(value, str):
        kind = st.sampled_from(WORDS)
    elif isinstance(value, list):
        kind = st.lists(st.one_of(st.integers(min_value=-3, max_value=300), st.sampled_from(WORDS),
                                  st.floats(min_value=0, max_value=1)), max_size=4)
    else:
        kind = trees
    return st.one_of(kind, kind, trees)


def _mutate(doc: Any, draw) -> Any:
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        paths = _paths(doc)
        numeric = [p for p in paths if p and _is_number(_get(doc, p))]
        path = draw(st.sampled_from(numeric if numeric and draw(st.booleans()) else paths))
        op = draw(st.sampled_from(["replace", "replace", "delete", "insert"]))
        if not path:  # the root
            if op == "replace":
                doc = draw(trees)
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        node = parent[last]
        if op == "replace":
            parent[last] = draw(_near(node))
        elif op == "delete":
            del parent[last]
        elif isinstance(node, dict):
            node[draw(keys)] = draw(trees)
        elif isinstance(node, list):
            node.insert(draw(st.integers(min_value=0, max_value=len(node))), draw(trees))
        else:
            parent[last] = [node, draw(scalars)]
    return doc


@st.composite
def mutated(draw, base):
    return _mutate(base, draw)


def test_the_starting_points_are_valid():
    assert TrialConfig.from_yaml(ROOT / "examples/train/cges_digits.yaml").regularizer.name == "cges"
    assert load_spec(ROOT / "examples/quickstart.yaml").trials >= 1


@FUZZ
@given(doc=mutated(CGES))
def test_mutated_config(doc):
    _check_config_text(render(doc))
    _check_config_text(dump_yaml(doc) if not _has_raw(doc) else render(doc))


@FUZZ
@given(doc=mutated(QUICKSTART))
def test_mutated_spec(doc):
    _check_spec_text(render(doc))


def _has_raw(x: Any) -> bool:
    if isinstance(x, Raw):
        return True
    if isinstance(x, dict):
        return any(_has_raw(k) or _has_raw(v) for k, v in x.items())
    return isinstance(x, list) and any(_has_raw(v) for v in x)


# (c) raw text ---------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.sampled_from(list("{}[]:,-?&*!|>'\"#%@` \n\t0123456789.e+-abcnul~")), max_size=120),
    st.builds(lambda a, b: a + b, st.sampled_from(["name: x\ntrials: 1\n", "seed: 0\n", "data:\n  ", "- "]),
              st.text(max_size=80)),
)


@FUZZ
@given(text=st.one_of(texts, st.binary(max_size=100)))
@example(text="[" * 5000)
@example(text="a: " * 3000 + "1")
@example(text="- " * 3000 + "x")
@example(text="seed: !!int 1e3\n")
@example(text="seed: " + "9" * 5000 + "\n")
@example(text=b"\xff\xfe\x00seed: 1")
@example(text="")
@example(text="# only a comment\n")
def test_raw_text(text):
    _check_config_text(text)
    _check_spec_text(text)


# ----------------------------------------------------------------------------- specific shapes


def test_cyclic_and_exponential_aliases_are_rejected_quickly():
    """YAML aliases can make a cycle or a "billion laughs" document: both are small on disk, and
    validation must neither recurse forever nor print the expanded value."""
    cyclic = "a: &a [*a]\n"
    laughs = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join(["*" + chr(97 + i)] * 9) + "]\n" for i in range(8))
    for text in (cyclic, laughs, "regularizer: {name: l1, lam: &x [*x]}\n",
                 laughs + "model: {hidden: *i}\n"):
        for check in (_check_config_text, _check_spec_text):
            check(text)
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_yaml(_write(laughs))
    assert len(str(info.value)) < 2000


def test_quoted_number_strings_round_trip_through_yaml():
    """A CSV column named "1e5" is exported quoted, so the exported file re-runs the same config
    (PyYAML's own dumper writes it bare, and the loader would read a float)."""
    cfg = TrialConfig.from_dict({"data": {"name": "arrays", "path": "x.csv", "target": "1e5"},
                                 "regularizer": {"name": "l1", "layers": ["1e-3", 0]}})
    assert "'1e5'" in cfg.to_yaml()
    _check_config_round_trip(cfg)
