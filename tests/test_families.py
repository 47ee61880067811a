"""The registry-wide contract: every registered family of every kind, and ``docs/CONFIG.md``.

Parametrized over the registries, so a new family is tested as soon as it is registered: its
default config round-trips and documents every field, it builds (a model gives ``[batch,
classes]``; a dataset describes tiny data; a regularizer's penalty and update run on a layer; an
optimizer and a schedule step), and a value of the wrong kind in any of its fields is rejected
with the field named.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pytest
import torch
from torch import nn

from trainables.config import ConfigError, TrialConfig, family_params
from trainables.configdoc import COMMAND, render
from trainables.data import DataSpec, describe, load
from trainables.datasets import TorchvisionData
from trainables.families import (
    DATASETS,
    LR_SCHEDULES,
    MODELS,
    OPTIMIZERS,
    REGISTRIES,
    REGULARIZERS,
    ModelConfig,
    Registry,
)
from trainables.models import build_model
from trainables.regularizers import build_layer_regularizers

ROOT = Path(__file__).parent.parent
FAMILIES = [(registry, name) for registry in REGISTRIES for name in registry]
IDS = [f"{registry.kind}:{name}" for registry, name in FAMILIES]


def _idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed unsigned-byte IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _required(registry: Registry[Any], name: str, tmp_path: Path) -> dict[str, Any]:
    """The fields a family cannot default (files of the user's), made up on tiny data."""
    if registry is DATASETS and name == "idx":
        rng = np.random.default_rng(0)
        _idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (30, 6, 6)))
        _idx(tmp_path / "train-labels-idx1-ubyte", np.arange(30) % 3)
        return {"path": str(tmp_path)}
    if registry is DATASETS and name == "arrays":
        np.savez(tmp_path / "tiny.npz", X=np.random.default_rng(0).normal(size=(30, 5)), y=np.arange(30) % 3)
        return {"path": str(tmp_path / "tiny.npz")}
    if registry is DATASETS and name == "image_folder":
        from user_data import write_images

        write_images(tmp_path / "images", 10)
        return {"path": str(tmp_path / "images")}
    if registry is DATASETS and name == "python":
        from user_data import FACTORY

        (tmp_path / "mydata.py").write_text(FACTORY)
        return {"factory": f"{tmp_path / 'mydata.py'}:one"}
    if registry is DATASETS and issubclass(DATASETS.get(name), TorchvisionData):
        return {"path": str(tmp_path / "cache")}  # describe only: nothing is downloaded
    if registry is MODELS and name == "python":
        return {"factory": "compact_nets:tiny_net"}  # tests/ is on sys.path
    if registry is MODELS and name in ("torchvision", "timm"):
        return {"arch": "resnet18"}
    return {}


def _section(registry: Registry[Any], name: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {registry.section: {registry.key: name, **extra}}


def _config(registry: Registry[Any], name: str, tmp_path: Path) -> TrialConfig:
    return TrialConfig.from_dict(_section(registry, name, _required(registry, name, tmp_path)))


def _chosen(cfg: TrialConfig, registry: Registry[Any]) -> Any:
    if registry is OPTIMIZERS:
        return cfg.optim.optimizer
    if registry is LR_SCHEDULES:
        return cfg.optim.schedule
    return getattr(cfg, registry.section)


# ----------------------------------------------------------------------------- declarations


def test_every_kind_has_families_and_known_defaults():
    for registry in REGISTRIES:
        assert len(registry) >= 2, registry.kind
        assert registry.default in registry


@pytest.mark.parametrize("registry, name", FAMILIES, ids=IDS)
def test_default_config_round_trips_with_every_parameter(registry, name, tmp_path):
    cfg = _config(registry, name, tmp_path)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    chosen = _chosen(cfg, registry)
    assert type(chosen) is registry.get(name) and chosen.name == name
    section = cfg.to_dict()[registry.section]
    for field, default in family_params(registry.kind, name).items():
        if default is not None:  # filled in, so the export shows what ran
            assert field in section, field


@pytest.mark.parametrize("registry, name", FAMILIES, ids=IDS)
def test_every_field_is_documented(registry, name):
    cls = registry.get(name)
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} needs a docstring (its line in docs/CONFIG.md)"
    for field in cls.model_fields:
        described = any(getattr(k, "model_fields", {}).get(field) is not None
                        and k.model_fields[field].description for k in cls.__mro__ if isinstance(k, type))
        assert described, f"{registry.kind} {name!r}: field {field!r} needs Field(description=...)"


def test_sections_document_every_field():
    from trainables.config import OptimConfig, TyingConfig

    for cls in (TrialConfig, OptimConfig, TyingConfig):
        for field, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{field} needs Field(description=...)"


# ----------------------------------------------------------------------------- build


@pytest.mark.parametrize("name", list(MODELS), ids=list(MODELS))
def test_model_builds_and_gives_batch_by_classes(name):
    cfg = TrialConfig.from_dict(_section(MODELS, name, _required(MODELS, name, None)))
    for shape in ((1, 8, 8), (20,), (3, 32, 32)):  # an image model, a vector model, an RGB model
        try:
            net = build_model(cfg.model, DataSpec(shape, 3)).eval()
            with torch.no_grad():
                out = net(torch.randn(2, *shape))
        except (ValueError, RuntimeError):  # RuntimeError: torchvision's networks take RGB only
            continue
        assert out.shape == (2, 3)
        return
    pytest.fail(f"model {name!r} works for neither 1x8x8 images, 20-vectors nor 3x32x32 images")


@pytest.mark.parametrize("name", list(DATASETS), ids=list(DATASETS))
def test_dataset_describes_tiny_data(name, tmp_path):
    cfg = _config(DATASETS, name, tmp_path)
    spec = describe(cfg.data)
    assert isinstance(spec, DataSpec) and spec.num_classes >= 2
    assert all(isinstance(d, int) and d >= 1 for d in spec.input_shape)
    if not isinstance(cfg.data, TorchvisionData):  # local data: loading agrees with describe
        data = load(cfg.data)
        assert data.spec == spec and len(data.train) > 0
        assert tuple(data.train.X.shape[1:]) == spec.input_shape


@pytest.mark.parametrize("name", list(REGULARIZERS), ids=list(REGULARIZERS))
def test_regularizer_penalty_and_update_run_on_a_layer(name):
    cfg = TrialConfig.from_dict({"regularizer": {"name": name, "layers": "all"}})
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    layers = build_layer_regularizers(cfg.regularizer, net)
    assert [layer.name for layer in layers] == ["1", "3"]
    for layer in layers:
        before = layer.module.weight.detach().clone()
        assert math.isfinite(float(layer.penalty().detach()))
        layer.apply_update(lr=0.1, step=0, epoch=0)
        after = layer.module.weight.detach()
        assert after.shape == before.shape and torch.isfinite(after).all()
        if not cfg.regularizer.sparsifying:
            assert (after != 0).all()  # none and l2 only shrink


@pytest.mark.parametrize("name", list(OPTIMIZERS), ids=list(OPTIMIZERS))
def test_optimizer_builds_and_steps(name):
    cfg = TrialConfig.from_dict({"optim": {"name": name, "lr": 0.05}})
    w = nn.Parameter(torch.ones(3))
    opt = cfg.optim.optimizer.build([w], lr=cfg.optim.lr, weight_decay=0.0)
    assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups[0]["lr"] == 0.05
    w.sum().backward()
    opt.step()
    assert (w.detach() < 1).all()


# Each schedule's learning rate at the start of epochs 0..5 of 6, by its documented rule.
SCHEDULE_RULES = {
    "constant": ({}, lambda e: 0.1),
    "step": ({"lr_step": 2, "lr_gamma": 0.5}, lambda e: 0.1 * 0.5 ** (e // 2)),
    "cosine": ({}, lambda e: 0.1 * (1 + math.cos(math.pi * e / 6)) / 2),
}


def test_every_schedule_has_a_rule_here():
    assert sorted(SCHEDULE_RULES) == sorted(LR_SCHEDULES)


@pytest.mark.parametrize("name", list(LR_SCHEDULES), ids=list(LR_SCHEDULES))
def test_schedule_follows_its_rule(name):
    fields, rule = SCHEDULE_RULES[name]
    cfg = TrialConfig.from_dict({"optim": {"lr_schedule": name, "epochs": 6, **fields}})
    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    sched = cfg.optim.schedule.build(opt, epochs=cfg.optim.epochs)
    seen = []
    for _ in range(cfg.optim.epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    assert seen == pytest.approx([rule(e) for e in range(6)], rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------- bad values


def _wrong_kind(annotation: Any) -> Any:
    """A value no field of this type accepts (strict): a number where text goes, text elsewhere."""
    accepts_text = annotation is str or "str" in repr(annotation) and "Literal" not in repr(annotation)
    if get_args(annotation) and all(a is str or a is type(None) for a in get_args(annotation)):
        accepts_text = True
    return 12345 if accepts_text else "bogus"


@pytest.mark.parametrize("registry, name", FAMILIES, ids=IDS)
def test_a_bad_value_in_any_field_is_rejected_with_the_field_named(registry, name, tmp_path):
    cls = registry.get(name)
    base = _required(registry, name, tmp_path)
    fields = [f for f in cls.model_fields if f != "name"]
    for field in fields:
        value = _wrong_kind(cls.model_fields[field].annotation)
        with pytest.raises(ConfigError) as info:
            TrialConfig.from_dict(_section(registry, name, {**base, field: value}))
        assert f"{registry.section}.{field}: " in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize("registry", REGISTRIES, ids=[r.kind for r in REGISTRIES])
def test_an_unknown_family_lists_the_registered_ones(registry):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict(_section(registry, "no_such_family", {}))
    message = str(info.value)
    assert f"{registry.section}.{registry.key}: Input should be " in message
    assert "(got 'no_such_family')" in message
    assert all(repr(name) in message for name in registry)


@pytest.mark.parametrize("registry", REGISTRIES, ids=[r.kind for r in REGISTRIES])
def test_another_familys_parameter_names_the_chosen_family(registry, tmp_path):
    owned = {(f, n) for n in registry for f in registry.params(n) if registry.owns(f)}
    for field, owner in sorted(owned):
        other = next((n for n in registry if field not in registry.params(n)), None)
        if other is None or registry.params(owner)[field] is None:  # None means "left out"
            continue
        data = _section(registry, other, {**_required(registry, other, tmp_path),
                                          field: registry.params(owner)[field]})
        with pytest.raises(ConfigError, match=rf"{registry.section}\.{field}: not a parameter of "
                                              rf"{registry.kind} '{other}' \(its parameters: "):
            TrialConfig.from_dict(data)
        return
    pytest.skip(f"no {registry.kind} has a parameter another lacks")


def test_unknown_field_lists_the_valid_fields():
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict({"model": {"name": "mlp", "widht": 3}})
    assert ("model.widht: unknown field (did you mean weights? valid fields: name, weights, "
            "weights_sha256, hidden, batch_norm, dropout) (got 3)") in str(info.value)
    with pytest.raises(ConfigError, match=r"^invalid config: foo: unknown field \(valid fields: seed, "):
        TrialConfig.from_dict({"foo": 1})


def test_base_class_builds_the_named_family():
    cfg = ModelConfig.model_validate({"name": "lenet_cges"})
    assert type(cfg) is MODELS.get("lenet_cges") and cfg.dropout == 0.5
    assert type(ModelConfig(name="mlp", hidden=[4])) is MODELS.get("mlp")


def test_registration_is_closed_once_the_tree_is_built():
    class Late(ModelConfig):
        """A model registered too late."""

        name: Literal["late"] = "late"

    with pytest.raises(RuntimeError, match="import its module before trainables.config"):
        MODELS.register(Late)
    assert "late" not in MODELS


# ----------------------------------------------------------------------------- docs/CONFIG.md


def test_config_reference_is_up_to_date():
    committed = (ROOT / "docs" / "CONFIG.md").read_text()
    assert committed == render(), f"docs/CONFIG.md is stale: regenerate it with `{COMMAND}`"


def test_config_reference_covers_every_family_and_field():
    text = render()
    for registry, name in FAMILIES:
        assert f"`{registry.key}: {name}`" in text
        for field in registry.get(name).model_fields:
            assert f"| `{field}` |" in text
