"""Bad input through the real command line: exit status 2, one clear message, nothing started.

Each malformed config or spec goes through ``search.cli.main`` in-process, for both
``sparsetune train CONFIG --out DIR`` and ``sparsetune search SPEC``. Every one must end with exit
status 2 and exactly one ``sparsetune <cmd>: error: ...`` message on stderr that names the field
and the value (the substantive part is asserted), with no traceback, before any training starts
and before Ray or MLflow is touched: no ``mlflow.db``, ``mlruns`` or ``ray_results`` appears in the
working directory, Ray is not initialised, and the training and search entry points are replaced
by tripwires that fail the test if they are ever reached.

``tests/test_config.py`` and ``tests/test_search_spec.py`` check the same kinds of mistakes at the
level of ``TrialConfig.from_dict`` and ``load_spec``; this file checks what the user sees.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from search.cli import main

SPEC = {
    "name": "bad",
    "base": {"device": "cpu", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [16]},
             "optim": {"name": "sgd", "lr": 0.1, "epochs": 1}},
    "space": {"optim/lr": {"type": "loguniform", "low": 0.05, "high": 0.2}},
    "regularizers": {
        "cges": {"lam": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                 "mu/first": 0.2, "mu/last": {"type": "uniform", "low": 0.5, "high": 1.0}},
        "growl": {"p": {"type": "uniform", "low": 0.1, "high": 1.0}, "lambda1": 0.1},
    },
    "trials": 2,
}
CONFIG = """\
device: cpu
data: {name: digits}
model: {name: mlp, hidden: [16]}
optim: {name: sgd, lr: 0.1, epochs: 1}
regularizer: {name: cges, lam: 1e-2, mu: {first: 0.2, last: 0.8}}
"""
CSV = "a,b,label\n" + "".join(f"{i % 7 / 7},{i % 5 / 5},{i % 2}\n" for i in range(40))


class Tripwire(AssertionError):
    pass


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run ``sparsetune ARGS`` in an empty working directory; (exit status, stderr)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "table.csv").write_text(CSV)

    def trip(*args, **kwargs):
        raise Tripwire("reached the run: the input should have been rejected before")

    import trainables

    monkeypatch.setattr(trainables, "fit", trip)
    # the search stack: a stand-in for search.run, so that a spec that wrongly passes validation
    # cannot start Ray (and the real module, with ray, need not even be imported here)
    monkeypatch.setitem(sys.modules, "search.run", types.SimpleNamespace(run_search=trip))

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # another test's session
        code = main(list(args))
        out, err = capsys.readouterr()
        assert out == ""
        assert code == 2, err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        command = args[0]
        assert lines[0].startswith(f"sparsetune {command}: error: "), err
        assert err.count("error:") == 1, err  # one message (it may list its lines below)
        if "ray" in sys.modules and not ray_before:  # this command started no Ray
            assert not sys.modules["ray"].is_initialized()
        for name in ("mlflow.db", "mlruns", "mlartifacts", "ray_results", "out"):
            assert not (tmp_path / name).exists(), f"{name} was created"
        return code, err

    return run


def _config(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    (tmp_path / name).write_text(text)
    return name


def _spec(tmp_path: Path, change, name: str = "spec.yaml") -> str:
    data = copy.deepcopy(SPEC)
    change(data)
    (tmp_path / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return name


def _with(text: str, **sections: str) -> str:
    """CONFIG with whole sections replaced (``key=None`` drops one)."""
    lines = {line.split(":")[0]: line for line in text.splitlines()}
    for key, value in sections.items():
        if value is None:
            lines.pop(key, None)
        else:
            lines[key] = f"{key}: {value}"
    return "\n".join(lines.values()) + "\n"


def _reg(family: str, changes: dict):
    return lambda d: d["regularizers"][family].update(changes)


def _base(section: str, value):
    return lambda d: d["base"].update({section: value})


# ----------------------------------------------------------------------------- the cases
# (id, config text, what the train error says, spec change, what the search error says)

CASES = [
    ("unknown key",
     _with(CONFIG, regularizer="{name: cges, lam: 1e-2, lamda: 0.1}"),
     ["regularizer.lamda: unknown field (did you mean lam? valid fields: name, groups, layers, prox_every, target_sparsity, lam, mu, "
      "exact, group_scale, exclusive_scale, mask_pruned) (got 0.1)"],
     _reg("cges", {"lamda": 0.1}),
     ["regularizers.cges.lamda: unknown field (did you mean lam? valid fields: name, groups, layers,", "(got 0.1)"]),
    ("wrong type",
     _with(CONFIG, optim="{name: sgd, lr: 0.1, epochs: ten}"),
     ["optim.epochs: Input should be a valid integer (got 'ten')"],
     lambda d: d["base"]["optim"].update(epochs="ten"),
     ["base.optim.epochs: Input should be a valid integer (got 'ten')"]),
    ("wrong type of section",
     _with(CONFIG, optim="0.1"),
     ["optim: expected a mapping of fields (got 0.1)"],
     lambda d: d["base"].update(optim=0.1),
     ["base.optim: must be a mapping: space.optim/lr sets a field inside it (got 0.1)"]),
    ("negative lambda",
     _with(CONFIG, regularizer="{name: cges, lam: -1e-3}"),
     ["regularizer.lam: `lam >= 0` must hold (got -0.001)"],
     _reg("cges", {"lam": {"type": "uniform", "low": -1e-3, "high": 1e-2}}),
     ["regularizers.cges.lam: `lam >= 0` must hold (got -0.001)"]),
    ("nan lambda",
     _with(CONFIG, regularizer="{name: cges, lam: .nan}"),
     ["regularizer.lam: `lam` must be finite (got nan)"],
     _reg("cges", {"lam": float("nan")}),
     ["regularizers.cges.lam: `lam` must be finite (got nan)"]),
    ("inf lambda",
     _with(CONFIG, regularizer="{name: growl, lambda1: .inf}"),
     ["regularizer.lambda1: `lambda1` must be finite (got inf)"],
     _reg("growl", {"lambda1": float("inf")}),
     ["regularizers.growl.lambda1: `lambda1` must be finite (got inf)"]),
    ("inf distribution bound",
     _with(CONFIG, regularizer="{name: cges, lam: [1e-2, -.inf]}"),
     ["regularizer.lam: `lam` must be finite (got [0.01, -inf])"],
     _reg("cges", {"lam": {"type": "uniform", "low": 0.0, "high": float("inf")}}),
     ["regularizers.cges.lam: bounds must be finite", "high=inf"]),
    ("mu above 1",
     _with(CONFIG, regularizer="{name: cges, mu: 1.5}"),
     ["regularizer.mu: `mu <= 1` must hold (got 1.5)"],
     _reg("cges", {"mu/last": {"type": "uniform", "low": 0.5, "high": 1.2}}),
     ["regularizers.cges.mu/last: `mu <= 1` must hold (got 1.2)"]),
    ("mu below 0, one end",
     _with(CONFIG, regularizer="{name: cges, mu: {first: -0.1, last: 0.8}}"),
     ["regularizer.mu.first: `mu >= 0` must hold (got -0.1)"],
     _reg("cges", {"mu/first": -0.1}),
     ["regularizers.cges.mu/first: `mu >= 0` must hold (got -0.1)"]),
    ("growl p = 0",
     _with(CONFIG, regularizer="{name: growl, p: 0}"),
     ["regularizer.p: `p > 0` must hold (got 0"],
     _reg("growl", {"p": 0.0}),
     ["regularizers.growl.p: `p > 0` must hold (got 0.0)"]),
    ("growl p = 1.5",
     _with(CONFIG, regularizer="{name: growl, p: 1.5}"),
     ["regularizer.p: `p <= 1` must hold (got 1.5)"],
     _reg("growl", {"p": {"type": "uniform", "low": 0.5, "high": 1.5}}),
     ["regularizers.growl.p: `p <= 1` must hold (got 1.5)"]),
    ("schedule list of the wrong length",
     _with(CONFIG, regularizer="{name: cges, mu: [0.1, 0.2, 0.3]}"),
     ["regularizer.mu: a list needs one value per regularized layer: 2 for this model",
      "but it has 3 (got [0.1, 0.2, 0.3])"],
     lambda d: (d["regularizers"]["cges"].pop("mu/first"), d["regularizers"]["cges"].pop("mu/last"),
                d["regularizers"]["cges"].update(mu=[0.1, 0.2, 0.3])),
     ["regularizers.cges.mu: a list needs one value per regularized layer: 2 for this model",
      "(got [0.1, 0.2, 0.3])"]),
    ("unknown dataset",
     _with(CONFIG, data="{name: imagenet}"),
     ["data.name: Input should be 'digits'", "(got 'imagenet')"],
     _base("data", {"name": "imagenet"}),
     ["base.data.name: Input should be 'digits'", "(got 'imagenet')"]),
    ("unknown model",
     _with(CONFIG, model="{name: resnet50}"),
     ["model.name: Input should be 'mlp'", "(got 'resnet50')"],
     _base("model", {"name": "resnet50"}),
     ["base.model.name: Input should be 'mlp'", "(got 'resnet50')"]),
    ("unknown regularizer",
     _with(CONFIG, regularizer="{name: lasso9}"),
     ["regularizer.name: Input should be 'none'", "(got 'lasso9')"],
     lambda d: d["regularizers"].update(lasso9={}),
     ["regularizers.lasso9: unknown regularizer; valid: ['cges'", "(got 'lasso9')"]),
    ("missing idx folder",
     _with(CONFIG, data="{name: idx, path: no_such_dir}"),
     ["data.path: no such folder (got '", "no_such_dir')"],
     _base("data", {"name": "idx", "path": "no_such_dir"}),
     ["base.data.path: no such folder (got '", "no_such_dir')"]),
    ("missing arrays file",
     _with(CONFIG, data="{name: arrays, path: no_such.npz}"),
     ["data.path: no such file (got '", "no_such.npz')"],
     _base("data", {"name": "arrays", "path": "no_such.npz"}),
     ["base.data.path: no such file (got '", "no_such.npz')"]),
    ("csv without the target column",
     _with(CONFIG, data="{name: arrays, path: table.csv, target: class}"),
     ["data.target: column not in CSV header ['a', 'b', 'label'] (got 'class')"],
     _base("data", {"name": "arrays", "path": "table.csv", "target": "class"}),
     ["base.data.target: column not in CSV header ['a', 'b', 'label'] (got 'class')"]),
    ("csv without a target",
     _with(CONFIG, data="{name: arrays, path: table.csv}"),
     ["data.target: a .csv file needs `target`"],
     _base("data", {"name": "arrays", "path": "table.csv"}),
     ["base.data.target: a .csv file needs `target`"]),
    ("negative epochs / zero trials",
     _with(CONFIG, optim="{name: sgd, lr: 0.1, epochs: -1}"),
     ["optim.epochs: `epochs >= 0` must hold (0: evaluate the weights as given) (got -1)"],
     lambda d: d.update(trials=0),
     ["trials: `trials >= 1` must hold (got 0)"]),
    ("a date where a number belongs",
     _with(CONFIG, seed="2024-01-01"),
     ["seed: Input should be a valid integer (got datetime.date(2024, 1, 1))"],
     lambda d: d.update(seed=__import__("datetime").date(2024, 1, 1)),
     ["seed: Input should be a valid integer (got datetime.date(2024, 1, 1))"]),
    ("a key that is not a string",
     _with(CONFIG, optim="{name: sgd, 1: 0.1}"),
     ["optim.1: a key must be a string (quote it) (got 1)"],
     lambda d: d["base"]["optim"].update({1: 0.1}),
     ["base.optim.1: a key must be a string (quote it) (got 1)"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_train_rejects_bad_config(cli, tmp_path, case):
    _, text, expected, _, _ = case
    _, err = cli("train", _config(tmp_path, text), "--out", "out")
    assert err.startswith("sparsetune train: error: invalid config config.yaml: ")
    for part in expected:
        assert part in err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_search_rejects_bad_spec(cli, tmp_path, case):
    _, _, _, change, expected = case
    _, err = cli("search", _spec(tmp_path, change))
    assert err.startswith("sparsetune search: error: invalid search spec spec.yaml: ")
    for part in expected:
        assert part in err


SPEC_ONLY = [
    ("low > high", lambda d: d["space"].update({"optim/lr": {"type": "uniform", "low": 0.3, "high": 0.1}}),
     ["space.optim/lr: `low <= high` must hold, but got low=0.3, high=0.1"]),
    ("log distribution with low = 0", _reg("cges", {"lam": {"type": "loguniform", "low": 0.0, "high": 0.1}}),
     ["regularizers.cges.lam: a log-scale distribution needs `low > 0`, but got low=0.0"]),
    ("int log distribution with low < 0",
     lambda d: d["space"].update({"optim/epochs": {"type": "int", "low": -1, "high": 3, "log": True}}),
     ["space.optim/epochs: a log-scale distribution needs `low > 0`, but got low=-1"]),
    ("empty space", lambda d: (d.pop("regularizers"), d.update(space={})),
     ["space: the search space is empty"]),
    ("one family and no distribution", lambda d: (d["regularizers"].pop("growl"), d.update(space={}),
                                                   d["regularizers"]["cges"].update(lam=0.01, **{"mu/last": 0.8})),
     ["space: the search space is empty"]),
    ("nan step", lambda d: d["space"].update({"optim/lr": {"type": "uniform", "low": 0.1, "high": 0.2,
                                                           "step": float("nan")}}),
     ["space.optim/lr: `step` must be > 0", "step=nan"]),
    ("negative sampler seed", lambda d: d.update(seed=-1),
     ["seed: `0 <= seed <= 2**32 - 1` must hold (Optuna's sampler seed) (got -1)"]),
    ("nan hypervolume reference", lambda d: d.update(objectives=[{"metric": "val_loss", "mode": "min",
                                                                  "reference": float("nan")}]),
     ["objectives.0.reference: the hypervolume reference must be finite (got nan)"]),
    ("an empty part in a path", lambda d: d["space"].update({"optim//lr": d["space"].pop("optim/lr")}),
     ["space.optim//lr: a config field path with an empty part", "(got 'optim//lr')"]),
]


@pytest.mark.parametrize("name, change, expected", SPEC_ONLY, ids=[c[0] for c in SPEC_ONLY])
def test_search_rejects_bad_distribution(cli, tmp_path, name, change, expected):
    _, err = cli("search", _spec(tmp_path, change))
    for part in expected:
        assert part in err


def test_search_rejects_zero_trials_from_the_command_line(cli, tmp_path):
    _, err = cli("search", _spec(tmp_path, lambda d: None), "--trials", "0")
    assert "trials: `trials >= 1` must hold (got 0)" in err


# ----------------------------------------------------------------------------- broken files

FILES = [
    ("missing file", None, ["cannot read 'missing.yaml': No such file or directory"]),
    ("empty file", "", ["the file is empty"]),
    ("only comments", "# nothing here\n", ["the file is empty"]),
    ("yaml syntax error", "seed: 0\ndata: {name: digits\nmodel: {}\n", ["not valid YAML", "line 3"]),
    ("tab indentation", "data:\n\tname: digits\n", ["not valid YAML"]),
    ("top-level list", "- seed: 0\n- data: {name: digits}\n", ["must be a mapping", "(got [{'seed': 0}"]),
    ("top-level scalar", "digits\n", ["must be a mapping", "(got 'digits')"]),
    ("python object tag", "seed: !!python/object/apply:os.system ['true']\n", ["not valid YAML"]),
    ("bad int tag", "seed: !!int 1e3\n", ["not valid YAML", "1e3"]),
    ("deep nesting", "seed: " + "[" * 500 + "\n", ["not valid YAML", "nested more than 100 deep"]),
    ("binary file", b"\x89PNG\r\n\x1a\n\x00\x00\xff", ["is not a text file"]),
]


@pytest.mark.parametrize("command", ["train", "search"])
@pytest.mark.parametrize("name, content, expected", FILES, ids=[f[0] for f in FILES])
def test_broken_files(cli, tmp_path, command, name, content, expected):
    path = "missing.yaml"
    if content is not None:
        path = "broken.yaml"
        if isinstance(content, bytes):
            (tmp_path / path).write_bytes(content)
        else:
            (tmp_path / path).write_text(content)
    args = [command, path] + (["--out", "out"] if command == "train" else [])
    _, err = cli(*args)
    for part in expected:
        assert part in err
    assert path in err  # the message names the file


def test_a_directory_instead_of_a_file(cli, tmp_path):
    (tmp_path / "adir").mkdir()
    _, err = cli("train", "adir", "--out", "out")
    assert "cannot read 'adir'" in err


# ----------------------------------------------------------------------------- --set


SETS = [
    (["regularizer.lam=-1"], ["regularizer.lam: `lam >= 0` must hold (got -1"]),
    (["regularizer.lam=.nan"], ["regularizer.lam: `lam` must be finite (got nan)"]),
    (["optim.lr=abc"], ["optim.lr: Input should be a valid number (got 'abc')"]),
    (["optim.epochs=1.5"], ["optim.epochs: Input should be a valid integer (got 1.5)"]),
    (["regularizer.p=0.5"], ["regularizer.p: not a parameter of regularizer 'cges'", "(got 0.5)"]),
    (["optim.nope=1"], ["optim.nope: unknown field (valid fields: name, lr, weight_decay, epochs, "
                        "batch_size, lr_schedule, amp, momentum, nesterov, lr_step, lr_gamma) (got 1)"]),
    (["regularizer.lam"], ["--set: expected KEY=VALUE", "(got 'regularizer.lam')"]),
    (["=1"], ["--set: expected KEY=VALUE with a dotted KEY (got '=1')"]),
    (["optim..lr=1"], ["--set: expected KEY=VALUE with a dotted KEY (got 'optim..lr=1')"]),
    (["optim.lr=[0.1"], ["--set optim.lr: not valid YAML"]),
    (["model.hidden=[16, 0]"], ["model.hidden: hidden layer widths must be >= 1 (got [16, 0])"]),
    (["regularizer.mu=[0.1, 0.2, 0.3]"], ["regularizer.mu: a list needs one value per regularized layer"]),
]


@pytest.mark.parametrize("sets, expected", SETS, ids=[s[0][0] for s in SETS])
def test_train_rejects_bad_set(cli, tmp_path, sets, expected):
    path = _config(tmp_path, CONFIG)
    args = ["train", path, "--out", "out"]
    for item in sets:
        args += ["--set", item]
    _, err = cli(*args)
    for part in expected:
        assert part in err


def test_the_valid_inputs_reach_the_run(tmp_path, monkeypatch, capsys):
    """The fixtures themselves are valid: without the mistake, both commands reach the tripwire."""
    monkeypatch.chdir(tmp_path)
    reached = []

    def tripwire(name):
        def trip(*args, **kwargs):
            reached.append(name)
            raise Tripwire(name)
        return trip

    import trainables

    monkeypatch.setattr(trainables, "fit", tripwire("fit"))
    monkeypatch.setitem(sys.modules, "search.run", types.SimpleNamespace(run_search=tripwire("search")))
    with pytest.raises(Tripwire):
        main(["train", _config(tmp_path, CONFIG), "--out", "out", "--quiet"])
    with pytest.raises(Tripwire):
        main(["search", _spec(tmp_path, lambda d: None), "--quiet"])
    (tmp_path / "table.csv").write_text(CSV)
    with pytest.raises(Tripwire):
        main(["train", _config(tmp_path, _with(CONFIG, data="{name: arrays, path: table.csv, target: label}")),
              "--out", "out", "--quiet"])
    assert reached == ["fit", "search", "fit"]


def test_messages_survive_pickling():
    """Ray ships errors between processes: the message is the same on the other side."""
    import pickle

    from trainables.config import ConfigError

    for error in (ConfigError("the file is empty", "x.yaml"), _error({"optim": {"lr": -1.0}}),
                  _error({"optim": {}, "regularizer": {"name": "cges", "mu": {"first": 0.1}}})):
        assert str(pickle.loads(pickle.dumps(error))) == str(error)
        assert "<none>" not in str(error)


def _error(data):
    from trainables.config import ConfigError, TrialConfig

    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict(data)
    return info.value


# ----------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="this machine has a cuda:1")
def test_train_rejects_a_missing_cuda_device(cli, tmp_path):
    _, err = cli("train", _config(tmp_path, _with(CONFIG, device="'cuda:1'")), "--out", "out")
    assert "config.yaml: device: " in err and "(got 'cuda:1')" in err, err


def test_search_rejects_a_cuda_device_its_trials_do_not_get(cli, tmp_path):
    _, err = cli("search", _spec(tmp_path, _base("device", "cuda")))
    assert "base.device: a trial sees 0 GPU(s) (resources.gpu=0); use device: auto or cuda (got 'cuda')" in err, err


@pytest.mark.parametrize("command", ["train", "search"])
def test_a_truncated_image_is_named_before_anything_starts(cli, tmp_path, monkeypatch, command):
    """A PNG cut short after a valid header decodes only in part: caught when the data is
    described (one line, exit 2, naming the file), not as a trial's OSError mid-epoch."""
    from user_data import write_images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_images(tmp_path / "images", 4)
    bad = sorted((tmp_path / "images" / "right").iterdir())[2]
    bad.write_bytes(bad.read_bytes()[:-40])  # the header and part of the pixels
    data = f"{{name: image_folder, path: {tmp_path / 'images'}, val_fraction: 0.25, test_fraction: 0.25}}"
    if command == "train":
        _, err = cli("train", _config(tmp_path, _with(CONFIG, data=data, model="{name: mlp, hidden: [8]}")),
                     "--out", "out")
    else:
        _, err = cli("search", _spec(tmp_path, _base("data", yaml.safe_load(data))))
    assert f"cannot read image {bad}" in err and "truncated" in err, err
