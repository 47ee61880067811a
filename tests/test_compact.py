"""Physical compaction from the dependency graph: same outputs as the zeroed network, really smaller
(parameters and FLOPs), dense model untouched, save/load round trip without pickles; torchvision
networks, a user network with a residual add and a concatenation, the built-ins; models that cannot
be compacted."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close

from compact_nets import UserNet, user_net
from trainables.compact import (CompactionError, CompactModel, check_compactable, compact, exact_float32,
                                load_compact, save_compact, uncompacted)
from trainables.config import ModelConfig
from trainables.data import DataSpec
from trainables.groups import GROUPINGS, conv_groups, from_groups, to_groups
from trainables.metrics import count_flops
from trainables.models import MLP, build_model, prunable_layers

ROOT = Path(__file__).resolve().parents[1]
BN = (nn.BatchNorm1d, nn.BatchNorm2d)
BUILTIN = [
    ("mlp", (1, 8, 8), {"hidden": [32, 16], "batch_norm": True, "dropout": 0.1}),
    ("mlp", (1, 28, 28), {}),
    ("lenet_cges", (1, 8, 8), {}),
    ("vgg16_cifar", (3, 32, 32), {}),
    ("resnet20", (3, 32, 32), {}),
]
TORCHVISION = ["resnet18", "mobilenet_v2", "vgg11_bn"]


def make(name, shape, cfg, classes=10):
    model_cfg = ModelConfig.model_validate({"name": name, **cfg})
    spec = DataSpec(shape, classes)
    return build_model(model_cfg, spec), model_cfg, spec


def torchvision_factory(name: str):
    def build() -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=3)
    return build


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters (fresh BN is the identity)."""
    for m in model.modules():
        if isinstance(m, BN):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 2 - 1)


def zero_random_groups(model: nn.Module, frac: float, gen: torch.Generator) -> None:
    """Zero a random set of groups of every Linear/Conv2d, each with a random grouping (input,
    input_position, filter); a zeroed filter gets a non-zero bias (a constant channel)."""
    for _, m in prunable_layers(model):
        grouping, g = GROUPINGS[int(torch.randint(len(GROUPINGS), (1,), generator=gen))], conv_groups(m)
        G = to_groups(m.weight.data, grouping, g).clone()
        dead = torch.rand(G.shape[0], generator=gen) < frac
        dead[0] = False
        G[dead] = 0
        m.weight.data.copy_(from_groups(G, m.weight.shape, grouping, g))
        if grouping == "filter" and m.bias is not None:
            m.bias.data[dead] = torch.rand(int(dead.sum()), generator=gen) + 0.1


def sparsify(model: nn.Module, seed: int = 0, frac: float = 0.4) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomize_bn(model, gen)
        zero_random_groups(model, frac, gen)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_outputs(dense: nn.Module, small: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = dense.eval()(x), small.eval()(x)
    assert_close(got, expected, rtol=1e-4, atol=1e-5)


def check_compaction(model, shape, tmp_path, *, save_kwargs, load_kwargs):
    """The common contract: exact, smaller, dense model untouched, round trip through a file."""
    sparsify(model)
    model.train()  # compaction must use eval semantics regardless
    before = snapshot(model)
    assert check_compactable(model, shape) is None
    small = compact(model, shape)

    after = model.state_dict()  # the dense model was not modified (values, shapes, mode)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and not small.training

    x = torch.randn(3, *shape)
    assert_same_outputs(model, small, x)
    assert n_params(small) < n_params(model)
    dense_flops, _ = count_flops(model, shape)
    small_flops, per_module = count_flops(small, shape)
    assert small_flops < dense_flops
    assert any(k.startswith("net.") for k in per_module)  # counted on the compact network's layers

    path = tmp_path / "compact.pt"
    save_compact(path, small, **save_kwargs)
    payload = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    loaded = load_compact(path, **load_kwargs)
    assert isinstance(loaded, CompactModel)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == \
        {k: v.shape for k, v in small.state_dict().items()}
    assert_same_outputs(small, loaded, x)
    return small


@pytest.mark.parametrize("name,shape,cfg", BUILTIN)
def test_builtin_models(name, shape, cfg, tmp_path):
    torch.manual_seed(0)
    model, model_cfg, spec = make(name, shape, cfg)
    small = check_compaction(model, shape, tmp_path, save_kwargs={"model_cfg": model_cfg.model_dump(mode="json"),
                                                                  "spec": spec}, load_kwargs={})
    assert prunable_layers(small.net)[-1][1].weight.shape[0] == 10  # classes kept


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models(name, tmp_path):
    torch.manual_seed(0)
    build = torchvision_factory(name)
    spec = DataSpec((3, 32, 32), 3)
    small = check_compaction(build(), (3, 32, 32), tmp_path, save_kwargs={"build": build, "spec": spec},
                             load_kwargs={"build": build})
    if name == "mobilenet_v2":  # depthwise convolutions shrink with their channels (groups follow)
        dw = [m for m in small.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        dense = [m for m in build().modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert len(dw) == len(dense) and all(m.groups == m.in_channels == m.out_channels for m in dw)
        assert sum(m.groups for m in dw) < sum(m.groups for m in dense)


@pytest.mark.slow  # ~30 s alone on 2 cores, minutes on a loaded machine
def test_densenet121(tmp_path):
    """Dense blocks: every layer's output is concatenated into all later inputs."""
    torch.manual_seed(0)
    build = torchvision_factory("densenet121")
    spec = DataSpec((3, 32, 32), 3)
    check_compaction(build(), (3, 32, 32), tmp_path, save_kwargs={"build": build, "spec": spec},
                     load_kwargs={"build": build})


def test_user_network_with_residual_add_and_concat(tmp_path):
    check_compaction(user_net(), (3, 8, 8), tmp_path, save_kwargs={"build": user_net, "spec": DataSpec((3, 8, 8), 3)},
                     load_kwargs={"build": user_net})


def test_user_network_exact_shapes_and_flops():
    """Hand-made zeros in the user network: what goes, what stays, and the FLOPs by hand."""
    model = user_net()
    randomize_bn(model, torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.conv2.weight[:, 1] = 0  # conv1 channel 1 read by nobody -> removed (conv1 row, bn1, conv2 col)
        model.conv1.weight[4] = 0  # conv1 channel 4: constant (> 0 after BN, ReLU) into a Conv -> kept
        model.conv1.bias[4] = 10.0
        # residual stream channel 0: read by conv1, side and (via the concat) fc; dead only if all are zero
        model.conv1.weight[:, 0] = 0
        model.side.weight[:, 0] = 0
        model.fc.weight[:, 0] = 0
        model.conv1.weight[:, 2] = 0  # stream channel 2: side and fc still read it -> kept
        model.fc.weight[:, 9] = 0  # side channel 1 (concat index 8 + 1) is read by nobody -> removed
        model.fc.weight[:, 3] = 0  # stream channel 3: fc does not read it, conv1/side do -> kept
        model.side.weight[2] = 0  # side channel 2: constant relu(bias) folded into fc's bias
        model.side.bias[2] = 0.5
    small = compact(model, (3, 8, 8))
    net = small.net
    assert net.stem.weight.shape == (7, 3, 3, 3) and net.bn0.num_features == 7  # stream: 8 - channel 0
    assert net.conv2.weight.shape == (7, 5, 3, 3) and net.bn2.num_features == 7
    assert net.conv1.weight.shape == (5, 7, 3, 3)  # 6 - channel 1, constant channel 4 kept
    assert net.side.weight.shape == (2, 7, 1, 1)  # 4 - channels 1 (dead) and 2 (folded)
    assert net.fc.weight.shape == (3, 9)  # 7 stream + 2 side
    assert_same_outputs(model, small, torch.randn(4, 3, 8, 8))
    conv = lambda cout, cin, k: 2 * cout * cin * k * k * 64  # noqa: E731 - 8x8 maps everywhere
    assert count_flops(small, (3, 8, 8))[0] == conv(7, 3, 3) + conv(5, 7, 3) + conv(7, 5, 3) + conv(2, 7, 1) + 2 * 9 * 3
    assert count_flops(model, (3, 8, 8))[0] == conv(8, 3, 3) + conv(6, 8, 3) + conv(8, 6, 3) + conv(4, 8, 1) + 2 * 12 * 3


def test_hand_built_mlp_exact_shapes_and_cascades():
    """MLP 6 -> 5 -> 4 -> 3 with BN: every rule, including both cascade directions."""
    torch.manual_seed(1)
    model = MLP((6,), [5, 4], 3, batch_norm=True)
    randomize_bn(model, torch.Generator().manual_seed(1))
    W1, W2, W3 = model.fc1.weight.data, model.fc2.weight.data, model.fc3.weight.data
    W1[:, [1, 4]] = 0  # inputs 1 and 4 are never read -> input selection [0, 2, 3, 5]
    W2[:, 2] = 0  # hidden-1 channel 2 is read by nobody -> removed
    W1[3] = 0  # hidden-1 channel 3 is constant (bias -> ReLU -> BN) -> folded into fc2's bias
    model.fc1.bias.data[3] = 0.7
    W2[1] = 0
    W2[1, 3] = 0.5  # fc2 row 1 reads only channel 3: zero after the fold -> folded into fc3
    W2[[0, 1, 3], 0] = 0  # hidden-1 channel 0 is read only by fc2 row 2 ...
    W3[:, 2] = 0  # ... which nobody reads -> removed, then channel 0 too (backward cascade)

    small = compact(model)

    assert small.input_index.tolist() == [0, 2, 3, 5] and small.input_mode == "features"
    assert small.net.fc1.weight.shape == (2, 4)  # hidden-1 keeps channels 1, 4
    assert small.net.bn1.num_features == 2 and small.net.bn1.running_mean.shape == (2,)
    assert small.net.fc2.weight.shape == (2, 2)  # hidden-2 keeps channels 0, 3
    assert small.net.bn2.num_features == 2
    assert small.net.fc3.weight.shape == (3, 2)
    assert (small.net.fc1.in_features, small.net.fc1.out_features) == (4, 2)
    assert n_params(small) == (4 * 2 + 2) + 4 + (2 * 2 + 2) + 4 + (2 * 3 + 3)
    assert_same_outputs(model, small, torch.randn(5, 6))


def test_nothing_zeroed_compacts_to_the_same_size():
    torch.manual_seed(0)
    model, _, _ = make("lenet_cges", (1, 8, 8), {})
    small = compact(model)
    assert small.input_index is None
    assert n_params(small) == n_params(model)
    assert "input_index" not in small.state_dict()
    assert_same_outputs(model, small, torch.randn(2, 1, 8, 8))


def test_cges_input_position_groups_remove_a_channel_once_all_positions_are_zero():
    """Per-position groups: a conv2 channel goes only when all 4 of its fc3 columns are zero."""
    torch.manual_seed(0)
    model, _, _ = make("lenet_cges", (1, 8, 8), {})
    G = to_groups(model.fc3.weight.data, "input_position").clone()  # [64*4, 1024]
    G[[0, 1, 2, 3]] = 0  # all positions of channel 0
    G[[4, 5, 6]] = 0  # three of the four positions of channel 1
    model.fc3.weight.data.copy_(from_groups(G, model.fc3.weight.shape, "input_position"))
    small = compact(model)
    assert small.net.conv2.weight.shape[0] == 63
    assert small.net.fc3.weight.shape[1] == 63 * 4
    assert_same_outputs(model, small, torch.randn(2, 1, 8, 8))


def test_conv_consumer_keeps_constant_channel_unless_it_is_zero():
    torch.manual_seed(0)
    model, _, _ = make("lenet_cges", (1, 8, 8), {})
    with torch.no_grad():
        model.conv1.weight[[0, 1]] = 0
        model.conv1.bias[0] = 0.5  # constant 0.5 map: zero padding makes it non-foldable -> kept
        model.conv1.bias[1] = -0.5  # ReLU -> constant 0: contributes nothing -> removed
    small = compact(model)
    assert small.net.conv1.weight.shape[0] == 31
    assert_same_outputs(model, small, torch.randn(2, 1, 8, 8))


def test_conv_first_layer_input_channel_selection(tmp_path):
    torch.manual_seed(0)
    model, model_cfg, spec = make("resnet20", (3, 8, 8), {})
    model.conv1.weight.data[:, 1] = 0
    small = compact(model)
    assert small.input_index.tolist() == [0, 2] and small.input_mode == "channels"
    assert small.net.conv1.weight.shape == (16, 2, 3, 3)
    x = torch.randn(2, 3, 8, 8)
    assert_same_outputs(model, small, x)
    save_compact(tmp_path / "r.pt", small, model_cfg=model_cfg, spec=spec)
    assert_same_outputs(small, load_compact(tmp_path / "r.pt"), x)


def test_all_zero_network_keeps_one_channel_per_group():
    torch.manual_seed(0)
    model, _, _ = make("mlp", (10,), {"hidden": [6, 4]})
    for _, m in prunable_layers(model)[:-1]:
        m.weight.data.zero_()
    small = compact(model)
    assert [tuple(m.weight.shape) for _, m in prunable_layers(small.net)] == [(1, 1), (1, 1), (10, 1)]
    assert_same_outputs(model, small, torch.randn(3, 10))


class InputResidual(nn.Module):
    """``x + conv(x)``: the residual stream carries the input, so a zero conv row is no constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 16, 2)

    def forward(self, x):
        return self.head(torch.flatten(x + self.conv(x), 1))


def test_input_reaching_a_residual_is_not_taken_for_a_constant():
    torch.manual_seed(0)
    model = InputResidual()
    with torch.no_grad():
        model.conv.weight[0] = 0
        model.conv.bias[0] = 0.5  # channel 0 = x[0] + 0.5: depends on the input
    small = compact(model, (3, 4, 4))
    assert small.net.conv.weight.shape[0] == 3 and small.input_index is None
    assert_same_outputs(model, small, torch.randn(2, 3, 4, 4))


class GroupedConvNet(nn.Module):
    """A grouped (non-depthwise) convolution between two ordinary ones: its groups are kept whole."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.b = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.b(torch.relu(self.g(torch.relu(self.a(x)))))
        return self.fc(y.mean((2, 3)))


def test_grouped_convolution_channels_are_kept():
    torch.manual_seed(0)
    model = GroupedConvNet()
    with torch.no_grad():
        model.g.weight[:, 0] = 0  # input slice 0 of both groups: channels 0 and 4 unread by g
        model.fc.weight[:, 3] = 0  # b's channel 3 unread: b's group has no grouped conv -> removed
    small = compact(model, (3, 6, 6))
    assert small.net.a.weight.shape[0] == 8 and small.net.g.groups == 2
    assert small.net.b.weight.shape[0] == 3
    assert_same_outputs(model, small, torch.randn(2, 3, 6, 6))


class Branchy(nn.Module):
    """Data-dependent control flow: which head runs depends on the input's values."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=10):
        super().__init__()
        self.body = nn.Linear(64, 16)
        self.pos = nn.Linear(16, num_classes)
        self.neg = nn.Linear(16, num_classes)

    def forward(self, x):
        h = torch.relu(self.body(x.flatten(1)))
        return self.pos(h) if float(x.mean()) > 0 else self.neg(h)


class HardCodedView(nn.Module):
    """Traces fine, but the forward hard-codes the channel count of the flatten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(-1, 4 * 64))


def test_models_that_cannot_be_compacted_say_why():
    reason = check_compactable(Branchy(), (1, 8, 8))
    assert reason is not None and "'pos'" in reason and "control flow" in reason
    with pytest.raises(CompactionError, match="control flow"):
        compact(Branchy(), (1, 8, 8))
    reason = check_compactable(HardCodedView(), (1, 8, 8))
    assert reason is not None and "HardCodedView" in reason and "hard-code" in reason
    assert check_compactable(UserNet(), (3, 8, 8)) is None


def test_untraceable_model_trains_with_compaction_none(monkeypatch, tmp_path):
    """fit() on a model the graph cannot compact: a warning, compaction none, dense FLOPs, a saved file."""
    import trainables.train as train
    from trainables import TrialConfig, fit, save_run

    monkeypatch.setattr(train, "build_model", lambda cfg, spec: Branchy(spec.input_shape, spec.num_classes))
    cfg = TrialConfig.from_dict({"model": {"name": "mlp"}, "optim": {"epochs": 1}, "device": "cpu",
                                 "regularizer": {"name": "group_lasso", "lam": 0.05, "layers": "all"}})
    with pytest.warns(UserWarning, match="compaction: none"):
        result = fit(cfg)
    m = result.metrics
    assert m["compaction"] == "none"
    assert m["flops_compact"] == m["flops_dense"]
    assert m["params_nonzero"] == sum(int(torch.count_nonzero(p)) for p in result.model.parameters())
    x = torch.randn(4, 1, 8, 8)
    assert_same_outputs(result.model, result.compact_model, x)
    monkeypatch.undo()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = fit(TrialConfig.from_dict({**cfg.to_dict(), "model": {"name": "mlp", "hidden": [8]}}))
    assert not [w for w in caught if "compaction" in str(w.message)]
    assert ok.metrics["compaction"] == "graph"
    save_run(ok, tmp_path)
    assert_same_outputs(ok.compact_model, load_compact(tmp_path / "compact_model.pt"), x)


def test_uncompacted_is_a_copy():
    model = user_net()
    small = uncompacted(model)
    assert small.net is not model and n_params(small) == n_params(model) and not small.training
    assert_same_outputs(model, small, torch.randn(2, 3, 8, 8))


def test_compact_validates_its_input():
    with pytest.raises(ValueError, match="input_shape"):
        compact(nn.Sequential(nn.Linear(3, 2)))
    small = compact(MLP((4,), [3], 2))
    with pytest.raises(TypeError, match="CompactModel"):
        compact(small)


def test_save_compact_rejects_a_config_that_does_not_rebuild_the_model(tmp_path):
    model, _, spec = make("mlp", (1, 8, 8), {"hidden": [16]})
    small = compact(model)
    with pytest.raises(ValueError, match="lenet_cges"):
        save_compact(tmp_path / "m.pt", small, model_cfg={"name": "lenet_cges"}, spec=spec)
    with pytest.raises(ValueError, match="hidden"):
        save_compact(tmp_path / "m.pt", small, model_cfg={"name": "mlp", "hidden": [0]}, spec=spec)
    with pytest.raises(ValueError, match="build"):
        save_compact(tmp_path / "m.pt", small, spec=spec)
    with pytest.raises(ValueError, match="build"):
        save_compact(tmp_path / "m.pt", small, spec=spec, build=user_net)
    assert not (tmp_path / "m.pt").exists()


def test_load_compact_rejects_other_files_and_needs_the_factory(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="save_compact"):
        load_compact(tmp_path / "x.pt")
    save_compact(tmp_path / "u.pt", compact(user_net(), (3, 8, 8)), spec=DataSpec((3, 8, 8), 3), build=user_net)
    with pytest.raises(ValueError, match="build="):
        load_compact(tmp_path / "u.pt")


def test_user_network_loads_in_another_process(tmp_path):
    """compact_model.pt of a user network loads in a fresh process that imports the user's module."""
    model = user_net()
    sparsify(model)
    small = compact(model, (3, 8, 8))
    save_compact(tmp_path / "compact_model.pt", small, spec=DataSpec((3, 8, 8), 3), build=user_net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.save({"x": x, "y": small(x)}, tmp_path / "io.pt")
    script = (
        "import sys, torch\n"
        "from compact_nets import user_net\n"
        "from trainables.compact import load_compact\n"
        "m = load_compact(sys.argv[1] + '/compact_model.pt', build=user_net)\n"
        "io = torch.load(sys.argv[1] + '/io.pt', weights_only=True)\n"
        "torch.testing.assert_close(m(io['x']), io['y'], rtol=1e-5, atol=1e-6)\n"
        "print('loaded', sum(p.numel() for p in m.parameters()))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["loaded", str(n_params(small))]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compact_on_gpu():
    torch.manual_seed(0)
    model = torchvision_factory("resnet18")()
    sparsify(model)
    model = model.cuda()
    small = compact(model, (3, 32, 32))  # cuDNN's default TF32 once failed its exactness check here
    assert small.net.fc.weight.is_cuda
    assert n_params(small) < n_params(model)
    with exact_float32():
        assert_same_outputs(model, small, torch.randn(2, 3, 32, 32, device="cuda"))


def test_exact_float32_turns_tf32_off_for_the_block_and_restores_the_settings():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic, cudnn.enabled)
    try:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = True, True, True
        with exact_float32():
            assert not cudnn.allow_tf32 and not matmul.allow_tf32
            assert cudnn.benchmark and cudnn.enabled  # the other cuDNN settings are left as they were
        assert cudnn.allow_tf32 and matmul.allow_tf32 and cudnn.benchmark
        with pytest.raises(RuntimeError), exact_float32():
            raise RuntimeError
        assert cudnn.allow_tf32 and matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic, cudnn.enabled = before
