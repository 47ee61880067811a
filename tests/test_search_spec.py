"""Search specs: every bad field is reported with its location and value, before Ray starts."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.spec import SearchSpec, SpecError, candidate_configs, load_spec, resolve_tracking_uri
from trainables import TrialConfig
from trainables.yamlio import load_yaml

ROOT = Path(__file__).parent.parent
QUICKSTART = load_yaml(ROOT / "examples/quickstart.yaml")
SPECS = sorted((ROOT / "examples").glob("quickstart.yaml")) + sorted((ROOT / "examples/search").glob("*.yaml"))


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_example_specs_are_valid(path):
    spec = load_spec(path)
    assert spec.trials >= 1


def test_quickstart_compares_four_families_in_at_least_12_trials():
    spec = load_spec(ROOT / "examples/quickstart.yaml")
    assert set(spec.families) == {"l1", "group_lasso", "cges", "growl"}
    assert spec.trials >= 12
    assert spec.objective_names() == ["val_accuracy", "params_nonzero", "flops_compact"]


def mutate(change):
    data = copy.deepcopy(QUICKSTART)
    change(data)
    return data


def set_dist(section, key, **dist):
    return lambda d: d[section].update({key: dist})


BAD = [
    ("unknown field", lambda d: d.update(foo=1), "foo: unknown field (valid fields: name, base, space, "),
    ("top-level typo", lambda d: d.update(concurency=2),
     "concurency: unknown field (did you mean concurrency? valid fields: name, base, space, "),
    ("zero trials", lambda d: d.update(trials=0), "trials: `trials >= 1` must hold (got 0)"),
    ("sampler history too short", lambda d: d.update(sampler_history=100),
     "sampler_history: `sampler_history >= 250` (or null: every trial) must hold (fewer recent trials"),
    ("sampler history of another sampler", lambda d: d.update(sampler="nsga2", sampler_history=500),
     "sampler_history: applies to `sampler: tpe` only, not 'nsga2' (got 500)"),
    ("low > high", set_dist("space", "optim/lr", type="uniform", low=0.3, high=0.1),
     "space.optim/lr: `low <= high` must hold, but got low=0.3, high=0.1"),
    ("log low <= 0", set_dist("space", "optim/lr", type="loguniform", low=0.0, high=0.1),
     "space.optim/lr: a log-scale distribution needs `low > 0`"),
    ("unknown distribution", set_dist("space", "optim/lr", type="normal", low=0.1, high=0.2),
     "space.optim/lr: type: Input should be"),
    ("empty categorical", set_dist("space", "optim/name", type="categorical", choices=[]),
     "space.optim/name: a categorical distribution needs a non-empty `choices` list"),
    ("not a config field", set_dist("space", "optim/lrr", type="uniform", low=0.1, high=0.2),
     "space.optim/lrr: unknown field (did you mean lr? valid fields: name, lr, weight_decay, epochs, batch_size, "
     "lr_schedule, amp, momentum, nesterov, lr_step, lr_gamma) (got 0.1)"),
    ("parameter of another family", lambda d: d["regularizers"]["cges"].update(lambda1=0.5),
     "regularizers.cges.lambda1: not a parameter of regularizer 'cges'"),
    ("value out of range at the high end", lambda d: d["regularizers"]["growl"].update(
        p={"type": "uniform", "low": 0.5, "high": 1.5}), "regularizers.growl.p: `p <= 1` must hold (got 1.5)"),
    ("mu outside [0, 1]", lambda d: d["regularizers"]["cges"].update(
        {"mu/last": {"type": "uniform", "low": 0.5, "high": 1.2}}), "regularizers.cges.mu/last: `mu <= 1` must hold"),
    ("unknown family", lambda d: d["regularizers"].update(lasso9={}), "regularizers.lasso9: unknown regularizer"),
    ("schedule list of the wrong length", lambda d: (d["regularizers"]["cges"].pop("mu/first"),
                                                     d["regularizers"]["cges"].pop("mu/last"),
                                                     d["regularizers"]["cges"].update(mu=[0.1, 0.2, 0.3])),
     "regularizers.cges.mu: a list needs one value per regularized layer: 2 for this model"),
    ("conflicting entries", lambda d: d["regularizers"]["cges"].update(mu=[0.1, 0.2]),
     "regularizers.cges.mu/first: conflicts with regularizers.cges.mu"),
    ("test set as objective", lambda d: d.update(objectives=[{"metric": "test_accuracy", "mode": "max"}]),
     "objectives.0.metric: the search never sees the test set"),
    ("unknown objective", lambda d: d.update(objectives=[{"metric": "acc", "mode": "max"}]),
     "objectives.0.metric: not a result metric"),
    ("bad mode", lambda d: d.update(objectives=[{"metric": "val_accuracy", "mode": "up"}]), "objectives.0.mode"),
    ("empty space", lambda d: (d.pop("regularizers"), d.update(space={})), "space: the search space is empty"),
    ("missing data file", lambda d: d["base"].update(data={"name": "arrays", "path": "/nonexistent/x.npz"}),
     "base.data.path"),
    ("unknown model", lambda d: d["base"].update(model={"name": "resnet50"}), "base.model.name"),
    ("file store", lambda d: d.update(tracking_uri="file:///tmp/mlruns"), "tracking_uri: use sqlite:///"),
    ("scheduler metric", lambda d: d.update(scheduler={"type": "asha", "metric": "params_nonzero"}),
     "scheduler"),
    ("moasha with a metric", lambda d: d.update(scheduler={"type": "moasha", "metric": "val_loss"}),
     "scheduler: moasha ranks trials by the spec's `objectives`"),
    ("moasha objective without per-epoch value", lambda d: d.update(
        scheduler={"type": "moasha"}, objectives=[{"metric": "val_accuracy", "mode": "max"},
                                                  {"metric": "param_sharing", "mode": "max"}]),
     "objectives.1.metric: scheduler moasha needs objectives with a per-epoch counterpart"),
    ("moasha max_t not above grace", lambda d: d.update(scheduler={"type": "moasha", "grace_period": 3, "max_t": 3}),
     "max_t > grace_period"),
    ("asha max_t", lambda d: d.update(scheduler={"type": "asha", "max_t": 3}), "`max_t` is for moasha"),
    ("grace period not below epochs", lambda d: d.update(scheduler={"type": "moasha", "grace_period": 50}),
     "scheduler.grace_period: must be below the trials' epochs"),
    ("scheduler over path and plain trials", lambda d: (
        d.update(scheduler={"type": "moasha"}),
        [d["regularizers"][f].update({"path/targets": [0.5, 0.8]}) for f in ("cges", "growl", "group_lasso")]),
     "scheduler: rungs are epochs for plain trials and stages for path trials"),
    ("grace period not below the path's stages", lambda d: (
        d["base"].update(path={"targets": [0.5, 0.8]}), d["regularizers"].pop("l1"),
        d.update(scheduler={"type": "moasha", "grace_period": 2})),
     "scheduler.grace_period: must be below the trials' path stages (2)"),
    ("family knob in base", lambda d: d["base"].update(regularizer={"lam": 0.1}),
     "base.regularizer.lam: set per family under `regularizers`"),
    ("negative gpu", lambda d: d.update(resources={"cpu": 1, "gpu": -1}), "resources"),
]


@pytest.mark.parametrize("name, change, message", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_is_reported_with_location_and_value(tmp_path, name, change, message):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, mutate(change)))
    assert message in str(info.value)
    assert str(info.value).startswith("invalid search spec")


def test_cli_exits_2_with_one_message_and_starts_nothing(tmp_path):
    path = write(tmp_path, mutate(lambda d: d.update(trials=0)))
    proc = subprocess.run([sys.executable, "-m", "search.cli", "search", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "trials: `trials >= 1` must hold (got 0)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_candidates_are_conditional_per_family():
    spec = SearchSpec.model_validate(QUICKSTART)
    for family, data, _ in candidate_configs(spec):
        cfg = TrialConfig.from_dict(data)
        assert cfg.regularizer.name == family
        params = type(cfg.regularizer).model_fields
        if family == "cges":
            assert "lambda1" not in params and cfg.regularizer.mu is not None
        if family == "growl":
            assert "lam" not in params and cfg.regularizer.p is not None


def test_tracking_uri_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path}/rel/x.db"
    assert resolve_tracking_uri("http://head:5000") == "http://head:5000"


def test_scheduler_defaults_per_type():
    from search.spec import Scheduler

    asha = Scheduler.model_validate({"type": "asha"})
    assert (asha.metric, asha.mode, asha.max_t) == ("val_accuracy", "max", None)
    moasha = Scheduler.model_validate({"type": "moasha", "grace_period": 2, "reduction_factor": 2.0, "max_t": 8})
    assert (moasha.metric, moasha.mode, moasha.max_t, moasha.grace_period) == (None, None, 8, 2)


def test_a_search_with_zero_epochs_is_refused_naming_the_field():
    from search.spec import validate_spec

    spec = SearchSpec.model_validate({**copy.deepcopy(QUICKSTART), "base": {"optim": {"epochs": 0}},
                                      "space": {"optim/lr": {"type": "uniform", "low": 0.1, "high": 0.2}},
                                      "regularizers": {"none": {}}})
    with pytest.raises(SpecError) as e:
        validate_spec(spec)
    assert "base.optim.epochs" in str(e.value) and "only scores given weights" in str(e.value)
