"""Metrics: hand-counted parameters and FLOPs, GrOWL's sharing/compression, CGES's FLOP convention."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from trainables.compact import compact
from trainables.config import ModelConfig
from trainables.data import DataSpec
from trainables.metrics import count_flops, count_nonzero, count_params, count_unique, model_metrics
from trainables.models import MLP, build_model


def tiny_mlp() -> MLP:
    torch.manual_seed(0)
    return MLP((4,), [3], 2)  # fc1 4->3, fc2 3->2


class TinyConv(nn.Sequential):
    """conv(2->3, 3x3, pad 1) on 4x4 -> ReLU -> pool 2 -> flatten (3*2*2) -> fc(12->2)."""

    def __init__(self):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(2, 3, 3, padding=1), relu=nn.ReLU(), pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(), fc=nn.Linear(12, 2)))
        self.input_shape = (2, 4, 4)


def test_tiny_mlp_params_and_flops_by_hand():
    model = tiny_mlp()
    m = model_metrics(model, compact(model), (4,))
    assert m["params_total"] == (4 * 3 + 3) + (3 * 2 + 2) == 23
    assert m["params_nonzero"] == 23 and m["params_unique"] == 23
    assert m["sparsity"] == 0.0 and m["compression_rate"] == 1.0 and m["param_sharing"] == 1.0
    # Linear(in, out) on one example: 2 * in * out FLOPs (torch counts 2 per MAC, bias not counted)
    assert m["flops_dense"] == 2 * 4 * 3 + 2 * 3 * 2 == 36
    assert m["flops_compact"] == 36 and m["flops_sparse"] == 36
    assert [(r["name"], r["flops_dense"]) for r in m["layers"]] == [("fc1", 24), ("fc2", 12)]
    json.dumps(m, allow_nan=False)  # JSON-serialisable


def test_tiny_mlp_zeroed_input_columns_shrink_compact_flops_exactly():
    model = tiny_mlp()
    model.fc1.weight.data[:, [0, 2]] = 0  # two of the four inputs unused
    m = model_metrics(model, compact(model), (4,), groupings={"fc1": "input"})
    assert m["params_total"] == 23
    assert m["params_nonzero"] == 23 - 2 * 3
    assert m["flops_dense"] == 36
    assert m["flops_compact"] == 36 - 2 * 2 * 3  # exactly the removed columns' share of fc1
    fc1 = m["layers"][0]
    assert fc1["shape"] == [3, 4] and fc1["compact_shape"] == [3, 2]
    assert fc1["params"] == 12 and fc1["nonzero"] == 6 and fc1["compact_nonzero"] == 6
    assert (fc1["grouping"], fc1["groups"], fc1["zero_groups"]) == ("input", 4, 2)
    assert "grouping" not in m["layers"][1]
    # CGES convention: dense FLOPs x density per layer
    assert m["flops_sparse"] == pytest.approx(24 * 6 / 12 + 12 * 1.0)


def test_tiny_conv_params_and_flops_by_hand():
    torch.manual_seed(0)
    model = TinyConv()
    conv = 2 * 3 * 2 * 3 * 3 * 4 * 4  # 2 * Cout * Cin * kh * kw * Hout * Wout
    fc = 2 * 12 * 2
    m = model_metrics(model, compact(model), (2, 4, 4))
    assert m["params_total"] == (3 * 2 * 9 + 3) + (12 * 2 + 2) == 83
    assert m["flops_dense"] == m["flops_compact"] == conv + fc == 1776
    assert [r["flops_dense"] for r in m["layers"]] == [1728, 48]

    model.conv.weight.data[:, 1] = 0  # input channel 1 unused -> input selection
    model.fc.weight.data[:, 0:4] = 0  # conv channel 0 read by nobody (its 4 positions) -> removed
    m = model_metrics(model, compact(model), (2, 4, 4), groupings={"conv": "input", "fc": "filter"})
    conv_c = 2 * 2 * 1 * 3 * 3 * 4 * 4  # 2 filters on 1 channel
    fc_c = 2 * 8 * 2
    assert m["flops_compact"] == conv_c + fc_c == 608
    assert m["flops_dense"] == 1776
    assert [r["compact_shape"] for r in m["layers"]] == [[2, 1, 3, 3], [2, 8]]
    assert m["params_nonzero"] == (2 * 1 * 9 + 2) + (2 * 8 + 2)
    conv_row, fc_row = m["layers"]
    assert (conv_row["groups"], conv_row["zero_groups"]) == (2, 1)
    assert (fc_row["grouping"], fc_row["groups"], fc_row["zero_groups"]) == ("filter", 2, 0)
    assert m["flops_sparse"] == pytest.approx(1728 * 27 / 54 + 48 * 16 / 24)


def test_flops_sparse_is_the_density_weighted_sum():
    model = tiny_mlp()
    gen = torch.Generator().manual_seed(3)
    for layer in (model.fc1, model.fc2):
        layer.weight.data[torch.rand(layer.weight.shape, generator=gen) < 0.4] = 0
    d1 = float((model.fc1.weight != 0).float().mean())
    d2 = float((model.fc2.weight != 0).float().mean())
    m = model_metrics(model, compact(model), (4,))
    assert m["flops_sparse"] == pytest.approx(24 * d1 + 12 * d2)
    assert sum(r["flops_sparse"] for r in m["layers"]) == pytest.approx(m["flops_sparse"])


def test_tied_rows_unique_sharing_and_compression_by_hand():
    """7 input features x 4 outputs: rows (features) {0,1,2} tied, {3,4,5} tied, row 6 zero."""
    torch.manual_seed(0)
    model = MLP((7,), [4], 3)
    W = model.fc1.weight.data  # [4, 7]: GrOWL row i = column W[:, i]
    W[:, 0:3] = W[:, 0:3].mean(1, keepdim=True)
    W[:, 3:6] = W[:, 3:6].mean(1, keepdim=True)
    W[:, 6] = 0
    small = compact(model)
    m = model_metrics(model, small, (7,))
    total = (7 * 4 + 4) + (4 * 3 + 3)  # 47
    nonzero = total - 4  # the zero feature
    unique = (2 * 4 + 4) + (4 * 3 + 3)  # fc1 weight: 2 distinct columns of 4 values
    assert (m["params_total"], m["params_nonzero"], m["params_unique"]) == (total, nonzero, unique)
    assert m["sparsity"] == pytest.approx(4 / 47)
    assert m["param_sharing"] == pytest.approx(43 / 27)
    assert m["compression_rate"] == pytest.approx(47 / 27)
    # identity (algorithms.md §3.7): compression = sharing / (1 - sparsity)
    assert m["compression_rate"] == pytest.approx(m["param_sharing"] / (1 - m["sparsity"]))
    fc1 = m["layers"][0]
    assert (fc1["params"], fc1["nonzero"], fc1["unique"], fc1["compact_shape"]) == (28, 24, 8, [4, 6])


def test_weight_only_toy_and_degenerate_network():
    layer = nn.Linear(7, 4, bias=False)
    W = layer.weight.data
    W[:, 0:4] = W[:, 0:4].mean(1, keepdim=True)  # 4 tied rows
    W[:, 4] = 0
    model = nn.Sequential(layer)  # measured as its own "compact" model
    m = model_metrics(model, model, (7,))
    assert (m["params_total"], m["params_nonzero"], m["params_unique"]) == (28, 24, 3 * 4)
    assert m["sparsity"] == pytest.approx(4 / 28)
    assert m["param_sharing"] == pytest.approx(2.0) and m["compression_rate"] == pytest.approx(28 / 12)
    assert m["layers"][0]["name"] == "0"

    W.zero_()  # degenerate: no non-zero parameter -> ratios reported as 0.0, not inf/NaN
    m = model_metrics(model, model, (7,))
    assert (m["sparsity"], m["compression_rate"], m["param_sharing"]) == (1.0, 0.0, 0.0)
    json.dumps(m, allow_nan=False)


def test_lenet_dense_flops_per_layer_match_macs_by_hand():
    model = build_model(ModelConfig.model_validate({"name": "lenet_cges"}), DataSpec((1, 28, 28), 10))
    total, per_module = count_flops(model, (1, 28, 28))
    macs = {  # SAME padding: conv1 28x28 outputs, conv2 14x14 outputs
        "conv1": 28 * 28 * 25 * 32,
        "conv2": 14 * 14 * 800 * 64,
        "fc3": 3136 * 1024,
        "fc4": 1024 * 10,
    }
    assert {k: per_module[k] for k in macs} == {k: 2 * v for k, v in macs.items()}
    assert total == 2 * sum(macs.values()) == 27_767_808


def test_helpers_and_mode_restored():
    model = MLP((5,), [4], 2, batch_norm=True, dropout=0.5)
    model.train()
    model.fc1.weight.data[0] = 0
    assert count_params(model) == (5 * 4 + 4) + 2 * 4 + (4 * 2 + 2)
    assert count_nonzero(model) == count_params(model) - 5 - 4  # BN biases start at zero
    assert count_unique(torch.tensor([0.0, 1.0, 1.0, -2.0, 0.0])) == 2
    model_metrics(model, compact(model), (5,))
    assert model.training and model.bn1.training and model.dropout.training


def test_bad_arguments_are_named():
    model = tiny_mlp()
    with pytest.raises(ValueError, match="fc9"):
        model_metrics(model, model, (4,), groupings={"fc9": "input"})
    with pytest.raises(ValueError, match="rows"):
        model_metrics(model, model, (4,), groupings={"fc1": "rows"})
    with pytest.raises(ValueError, match="input_shape"):
        model_metrics(model, model, (0,))


def test_user_network_per_layer_rows_follow_the_compact_network():
    """Layer rows of a traced user network: names from the dense model, shapes and FLOPs from the
    compact one (inside CompactModel.net)."""
    from compact_nets import user_net

    model = user_net()
    model.fc.weight.data[:, 8:] = 0  # the concatenated side branch is read by nobody
    small = compact(model, (3, 8, 8))
    m = model_metrics(model, small, (3, 8, 8), groupings={"fc": "input"})
    rows = {r["name"]: r for r in m["layers"]}
    assert rows["side"]["compact_shape"] == [1, 8, 1, 1]  # one channel kept: no zero-sized layer
    assert rows["fc"]["compact_shape"] == [3, 9] and rows["fc"]["zero_groups"] == 4
    assert rows["side"]["flops_compact"] == 2 * 1 * 8 * 64
    assert m["flops_compact"] == sum(r["flops_compact"] for r in m["layers"])
    assert m["flops_dense"] - m["flops_compact"] == 2 * 3 * 8 * 64 + 2 * 3 * 3
