"""Model zoo: every registered model builds and runs; hand-counted sizes; layer order; which channels
compaction removes from each built-in."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

from trainables.compact import compact
from trainables.config import ModelConfig
from trainables.data import DataSpec
from trainables.models import MODELS, build_model, prunable_layers, register
from trainables.models.sources import SourceConfig

# (model, input shape) pairs each model must handle; registry-driven (see test_every_model_is_covered)
CASES = [
    ("mlp", (1, 8, 8)),
    ("mlp", (1, 28, 28)),
    ("mlp", (20,)),
    ("lenet_cges", (1, 8, 8)),
    ("lenet_cges", (1, 28, 28)),
    ("vgg16_cifar", (3, 32, 32)),
    ("vgg16_cifar", (1, 8, 8)),  # pools that would go below 1x1 are skipped
    ("resnet20", (3, 32, 32)),
]


def make(name: str, shape: tuple[int, ...], classes: int = 10, **cfg) -> nn.Module:
    return build_model(ModelConfig.model_validate({"name": name, **cfg}), DataSpec(shape, classes))


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_every_model_is_covered():
    # the sources (python, torchvision, timm) build other people's networks: tests/test_own_model.py
    builtins = {name for name, cls in MODELS.items() if not issubclass(cls, SourceConfig)}
    assert builtins == {"mlp", "lenet_cges", "vgg16_cifar", "resnet20"}
    assert {name for name, _ in CASES} == builtins


@pytest.mark.parametrize("name,shape", CASES)
def test_forward_shape_and_finite(name, shape):
    torch.manual_seed(0)
    model = make(name, shape, classes=7).eval()
    with torch.no_grad():
        y = model(torch.randn(2, *shape))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    assert tuple(model.input_shape) == shape


@pytest.mark.parametrize("name,shape", CASES)
def test_prunable_layers_are_in_forward_order(name, shape):
    model = make(name, shape).eval()
    layers = prunable_layers(model)
    called: list[str] = []
    for qname, m in layers:
        m.register_forward_pre_hook(lambda _m, _a, q=qname: called.append(q))
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    assert called == [q for q, _ in layers]
    assert all(isinstance(m, (nn.Linear, nn.Conv2d)) for _, m in layers)


def test_mlp_784_300_10_param_count():
    model = make("mlp", (1, 28, 28))
    assert [q for q, _ in prunable_layers(model)] == ["fc1", "fc2"]
    assert n_params(model) == 784 * 300 + 300 + 300 * 10 + 10 == 238_510


def test_mlp_options_batch_norm_after_relu_and_dropout():
    model = make("mlp", (12,), classes=3, hidden=[5, 4], batch_norm=True, dropout=0.25)
    names = [n for n, _ in model.named_children()]
    assert names == ["flatten", "fc1", "relu1", "bn1", "fc2", "relu2", "bn2", "dropout", "fc3"]
    assert model.dropout.p == 0.25
    assert n_params(model) == (12 * 5 + 5) + 2 * 5 + (5 * 4 + 4) + 2 * 4 + (4 * 3 + 3)


def test_lenet_cges_official_sizes():
    model = make("lenet_cges", (1, 28, 28))
    sizes = {q: [p.numel() for p in m.parameters()] for q, m in prunable_layers(model)}
    assert sizes == {
        "conv1": [5 * 5 * 1 * 32, 32],
        "conv2": [5 * 5 * 32 * 64, 64],
        "fc3": [7 * 7 * 64 * 1024, 1024],
        "fc4": [1024 * 10, 10],
    }
    assert sizes["conv1"][0] == 800 and sizes["conv2"][0] == 51_200 and sizes["fc3"][0] == 3_211_264
    assert model.dropout.p == 0.5  # the family default


def test_lenet_on_digits_has_2x2_positions():
    model = make("lenet_cges", (1, 8, 8))
    assert model.fc3.in_features == 64 * 2 * 2


def test_vgg16_sizes_by_hand():
    model = make("vgg16_cifar", (3, 32, 32))
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs, c_in = 0, 3
    for w in widths:
        convs += 9 * c_in * w + w + 2 * w  # conv weight + bias + BN affine
        c_in = w
    fc = (512 * 512 + 512) + 2 * 512 + (512 * 10 + 10)  # fc1 (1x1 after 5 pools) + BN + fc2
    assert n_params(model) == convs + fc
    names = [q for q, _ in prunable_layers(model)]
    assert names == [f"conv{i}" for i in range(1, 14)] + ["fc1", "fc2"]
    assert not any(isinstance(m, nn.ReLU) for m in list(model.children())[-3:])  # fc1 -> BN -> fc2


def test_vgg16_on_small_inputs_skips_pools():
    model = make("vgg16_cifar", (1, 8, 8))
    pools = [n for n, m in model.named_children() if isinstance(m, nn.MaxPool2d)]
    assert pools == ["pool1", "pool2", "pool3"]
    assert model.fc1.in_features == 512


def test_resnet20_sizes_by_hand():
    model = make("resnet20", (3, 32, 32))
    convs = 9 * (3 * 16 + 6 * 16 * 16 + (16 * 32 + 5 * 32 * 32) + (32 * 64 + 5 * 64 * 64))
    bns = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    assert n_params(model) == convs + bns + 64 * 10 + 10 == 269_722
    names = [q for q, _ in prunable_layers(model)]
    assert len(names) == 20 and names[0] == "conv1" and names[-1] == "fc"
    assert names[1:3] == ["layer1.0.conv1", "layer1.0.conv2"]
    # option A: shortcuts carry no parameters
    assert all(n_params(b.shortcut) == 0 for s in (model.layer1, model.layer2, model.layer3) for b in s)


def test_unknown_model_name_lists_valid_names():
    cfg = ModelConfig.model_construct(name="alexnet")
    with pytest.raises(ValueError, match="alexnet") as e:
        build_model(cfg, DataSpec((3, 32, 32), 10))
    for name in MODELS:
        assert name in str(e.value)


def test_register_rejects_duplicates():
    class Again(ModelConfig):
        name: Literal["mlp"] = "mlp"

    with pytest.raises(ValueError, match="model 'mlp' is already registered"):
        register(Again)
    with pytest.raises(TypeError, match="must subclass ModelConfig"):
        register(nn.Identity)


@pytest.mark.parametrize("name,shape,match", [
    ("lenet_cges", (20,), "input_shape"),
    ("lenet_cges", (1, 3, 3), "4x4"),
    ("resnet20", (8,), "input_shape"),
    ("vgg16_cifar", (3, 0, 32), "input_shape"),
])
def test_bad_input_shapes_are_named(name, shape, match):
    with pytest.raises(ValueError, match=match):
        make(name, shape)


def _zero_inputs(layer: nn.Module, columns: list[int]) -> None:
    with torch.no_grad():
        layer.weight[:, columns] = 0


def _sizes(net: nn.Module, names: list[str]) -> list[tuple[int, ...]]:
    return [tuple(net.get_submodule(n).weight.shape[:2]) if n.split(".")[-1].startswith(("fc", "conv"))
            else (net.get_submodule(n).num_features,) for n in names]


def test_compaction_removes_the_expected_channels_of_each_builtin():
    """What the hand-written couplings used to declare, found by tracing: a unit/channel whose every
    consumer column is zero goes, with its producer row and BatchNorm entry; the residual stream stays."""
    torch.manual_seed(0)
    mlp = make("mlp", (12,), classes=3, hidden=[5, 4], batch_norm=True)
    _zero_inputs(mlp.fc2, [0, 2])
    assert _sizes(compact(mlp, (12,)).net, ["fc1", "bn1", "fc2", "fc3"]) == [(3, 12), (3,), (4, 3), (3, 4)]

    lenet = make("lenet_cges", (1, 8, 8))  # 2x2 positions per conv2 channel reach fc3
    _zero_inputs(lenet.fc3, list(range(5 * 4, 6 * 4)))  # channel 5, all 4 positions
    _zero_inputs(lenet.fc3, [7 * 4])  # one position of channel 7 only: the channel is kept
    assert _sizes(compact(lenet, (1, 8, 8)).net, ["conv2", "fc3"]) == [(63, 32), (1024, 63 * 4)]

    vgg = make("vgg16_cifar", (1, 8, 8))
    _zero_inputs(vgg.conv2, [3])
    _zero_inputs(vgg.fc1, [10, 11])
    small = compact(vgg, (1, 8, 8)).net
    assert _sizes(small, ["conv1", "bn1", "conv2", "conv13", "bn13", "fc1"]) == \
        [(63, 1), (63,), (64, 63), (510, 512), (510,), (512, 510)]

    resnet = make("resnet20", (3, 32, 32))
    _zero_inputs(resnet.layer1[0].conv2, [0, 1, 2, 3])  # a block's inner channels
    _zero_inputs(resnet.layer1[0].conv1, [0])  # a residual-stream channel: also read by the shortcut
    small = compact(resnet, (3, 32, 32)).net
    assert _sizes(small, ["conv1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"]) == \
        [(16, 3), (12, 16), (12,), (16, 12)]
