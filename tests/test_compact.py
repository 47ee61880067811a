"""Physical compaction: same outputs as the zeroed network, really smaller, dense model untouched,
save/load round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from trainables.compact import CompactModel, check_couplings, compact, load_compact, save_compact
from trainables.config import ModelConfig
from trainables.data import DataSpec
from trainables.groups import from_groups, to_groups
from trainables.models import MLP, Coupling, build_model, prunable_layers

CASES = [
    ("mlp", (1, 8, 8), {"hidden": [32, 16], "batch_norm": True, "dropout": 0.1}),
    ("mlp", (1, 28, 28), {}),
    ("lenet_cges", (1, 8, 8), {}),
    ("vgg16_cifar", (3, 32, 32), {}),
    ("resnet20", (3, 32, 32), {}),
]
BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def make(name, shape, cfg, classes=10):
    model_cfg = ModelConfig.model_validate({"name": name, **cfg})
    spec = DataSpec(shape, classes)
    return build_model(model_cfg, spec), model_cfg, spec


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters (fresh BN is the identity)."""
    for m in model.modules():
        if isinstance(m, BN):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 2 - 1)


def zero_input_groups(model: nn.Module, frac: float, gen: torch.Generator) -> None:
    """Zero a random set of 'input' groups (GrOWL rows) of every layer, including the first
    (input pixels / channels); at least one group stays alive."""
    for _, m in prunable_layers(model):
        G = to_groups(m.weight.data, "input").clone()
        dead = torch.rand(G.shape[0], generator=gen) < frac
        dead[0] = False
        G[dead] = 0
        m.weight.data.copy_(from_groups(G, m.weight.shape, "input"))


def zero_consumer_channels(model: nn.Module, frac: float, gen: torch.Generator) -> None:
    """For each coupling, zero every consumer weight reading some producer channels (a whole
    block of `positions` columns for a Linear after a flatten)."""
    for c in model.couplings():
        q = model.get_submodule(c.consumer)
        n = model.get_submodule(c.producer).weight.shape[0]
        dead = torch.rand(n, generator=gen) < frac
        if isinstance(q, nn.Linear):
            q.weight.data[:, dead.repeat_interleave(c.positions)] = 0
        else:
            q.weight.data[:, dead] = 0


def zero_producer_rows(model: nn.Module, frac: float, gen: torch.Generator) -> None:
    """Zero whole producer rows; their (non-zero) biases make them constant channels."""
    for c in model.couplings():
        p = model.get_submodule(c.producer)
        dead = torch.rand(p.weight.shape[0], generator=gen) < frac
        p.weight.data[dead] = 0
        if p.bias is not None:
            p.bias.data[dead] = torch.rand(int(dead.sum()), generator=gen) + 0.1


def sparsify(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomize_bn(model, gen)
        zero_input_groups(model, 0.3, gen)
        zero_consumer_channels(model, 0.2, gen)
        zero_producer_rows(model, 0.2, gen)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_outputs(dense: nn.Module, small: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = dense.eval()(x), small.eval()(x)
    assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,shape,cfg", CASES)
def test_compact_equals_zeroed_network_and_round_trips(name, shape, cfg, tmp_path):
    torch.manual_seed(0)
    model, model_cfg, spec = make(name, shape, cfg)
    sparsify(model)
    model.train()  # compaction must use eval semantics regardless
    before = snapshot(model)
    small = compact(model)

    # the dense model was not modified (values, shapes, mode)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and not small.training

    # really smaller, every coupling lost channels, classes kept
    assert n_params(small) < n_params(model)
    for c in model.couplings():
        dense_n = model.get_submodule(c.producer).weight.shape[0]
        assert small.net.get_submodule(c.producer).weight.shape[0] < dense_n
    assert prunable_layers(small.net)[-1][1].weight.shape[0] == 10

    x = torch.randn(3, *shape)
    assert_same_outputs(model, small, x)

    path = tmp_path / "compact.pt"
    save_compact(path, small, model_cfg=model_cfg.model_dump(mode="json"), spec=spec)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "model", "input_shape", "num_classes", "state_dict"}
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    loaded = load_compact(path)
    assert isinstance(loaded, CompactModel)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == \
        {k: v.shape for k, v in small.state_dict().items()}
    assert_same_outputs(small, loaded, x)


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

    assert small.input_index.tolist() == [0, 2, 3, 5]
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
    assert small.input_index.tolist() == [0, 2]
    assert small.net.conv1.weight.shape == (16, 2, 3, 3)
    x = torch.randn(2, 3, 8, 8)
    assert_same_outputs(model, small, x)
    save_compact(tmp_path / "r.pt", small, model_cfg=model_cfg, spec=spec)
    assert_same_outputs(small, load_compact(tmp_path / "r.pt"), x)


def test_all_zero_network_keeps_one_channel_per_coupling():
    torch.manual_seed(0)
    model, _, _ = make("mlp", (10,), {"hidden": [6, 4]})
    for _, m in prunable_layers(model)[:-1]:
        m.weight.data.zero_()
    small = compact(model)
    assert [tuple(m.weight.shape) for _, m in prunable_layers(small.net)] == [(1, 1), (1, 1), (10, 1)]
    assert_same_outputs(model, small, torch.randn(3, 10))


def test_compact_validates_its_input():
    with pytest.raises(TypeError, match="couplings"):
        compact(nn.Sequential(nn.Linear(3, 2)))

    class Broken(MLP):
        def couplings(self):
            return [Coupling("fc1", "nope")]

    with pytest.raises(ValueError, match="nope"):
        check_couplings(Broken((4,), [3], 2))
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
    assert not (tmp_path / "m.pt").exists()


def test_load_compact_rejects_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="save_compact"):
        load_compact(tmp_path / "x.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compact_on_gpu():
    torch.manual_seed(0)
    model, _, _ = make("lenet_cges", (1, 8, 8), {})
    sparsify(model)
    model = model.cuda()
    small = compact(model)
    assert small.net.fc4.weight.is_cuda
    assert_same_outputs(model, small, torch.randn(2, 1, 8, 8, device="cuda"))
