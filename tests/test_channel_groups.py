"""Groups are what compaction removes: grouped/depthwise convolutions keep their groups in the
metrics and the ``channel_magnitude`` pruner, a zeroed filter silences its bias and following norm
channel (so the masked network in eval mode computes what the compacted one computes), and a
GroupNorm that keeps a layer from shrinking says so."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from trainables.compact import compact
from trainables.groups import conv_groups, to_groups
from trainables.metrics import model_metrics
from trainables.regularizers.channel_magnitude import ChannelMagnitude


def _pruner(groups: str, final: float = 0.5) -> ChannelMagnitude:
    return ChannelMagnitude(initial=0.0, final=final, start_epoch=0, end_epoch=1, every=1,
                            groups=groups, **{"global": False})


# ----------------------------------------------------------------------------- grouped convolutions


class GroupedNet(nn.Module):
    """conv (8 -> 8, groups=2) then a depthwise conv (groups=8), pooled into a Linear."""

    input_shape = (8, 6, 6)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.dw(torch.relu(self.grouped(x)))).mean((2, 3)))


@pytest.mark.parametrize("grouping", ["input", "input_position"])
def test_metrics_count_groups_of_grouped_convs(grouping):
    net = GroupedNet()
    rows = {r["name"]: r for r in model_metrics(net, compact(net, net.input_shape), net.input_shape,
                                                groupings={"grouped": grouping, "dw": grouping})["layers"]}
    kh = 9 if grouping == "input_position" else 1
    assert rows["grouped"]["groups"] == 8 * kh  # one per input channel (and position), not 4 / 36
    assert rows["dw"]["groups"] == 8 * kh


@pytest.mark.parametrize("grouping", ["input", "input_position", "filter"])
def test_channel_magnitude_on_grouped_convs_prunes_the_scheduled_groups(grouping):
    net = GroupedNet()
    pruner = _pruner(grouping, final=0.5)
    modules = [net.grouped, net.dw]
    keep = pruner.prune([m.weight for m in modules], [None, None], step=0, steps_per_epoch=1,
                        conv_groups=[conv_groups(m) for m in modules])
    for m, k in zip(modules, keep):
        assert k.shape == m.weight.shape
        G = to_groups(k, grouping, conv_groups(m))
        assert G.shape[0] == (8 * 9 if grouping == "input_position" else 8)
        # whole groups: every row all kept or all pruned, and half of them pruned (not the layer)
        assert bool((G.all(1) | ~G.any(1)).all())
        assert int((~G.any(1)).sum()) == G.shape[0] // 2


# ----------------------------------------------------------------------------- channel groups

from trainables.channels import channel_groups, following_norms, silence_filters, trace  # noqa: E402
from trainables.config import ConfigError  # noqa: E402
from trainables.regularizers import ChannelLayerRegularizer, build_layer_regularizers  # noqa: E402

from compact_nets import UserNet  # noqa: E402  (residual add + concat + BN)


class BNNet(nn.Module):
    input_shape = (3, 6, 6)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 36, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).flatten(1))


class DepthwiseNet(nn.Module):
    input_shape = (3, 6, 6)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn_dw = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn_dw(self.dw(torch.relu(self.bn(self.conv(x))))))
        return self.fc(torch.relu(self.pw(x)).mean((2, 3)))


class UserNetShaped(UserNet):
    input_shape = (3, 6, 6)


NETS = {"bn": BNNet, "depthwise": DepthwiseNet, "residual_concat": UserNetShaped, "gn": None}


def _randomize_stats(net: nn.Module) -> None:
    """Running statistics far from (0, 1), as after training: an un-silenced zero filter shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
            elif isinstance(m, nn.GroupNorm):
                m.bias.copy_(torch.randn(m.num_channels, generator=g))


def _make(kind: str) -> nn.Module:
    torch.manual_seed(0)
    net = (NETS[kind] or GNNet)()  # GNNet: defined with the GroupNorm tests below
    _randomize_stats(net)
    return net.eval()


def _channels(net: nn.Module) -> int:
    return sum(m.out_channels if isinstance(m, nn.Conv2d) else 0 for m in net.modules())


def _agree(net: nn.Module) -> nn.Module:
    """The compact network, checked: it computes what the masked network computes in eval mode."""
    small = compact(net, net.input_shape)
    x = torch.randn(5, *net.input_shape, generator=torch.Generator().manual_seed(2))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=1e-4, atol=1e-5)
    return small


@pytest.mark.parametrize("kind", sorted(NETS))
def test_zeroed_channel_groups_are_removed_by_compaction(kind):
    net = _make(kind)
    groups, skipped = channel_groups(net, net.input_shape)
    assert "fc" in skipped  # the logits form no group
    before = _channels(net)
    zeroed = 0
    for g in groups:
        dead = torch.arange(g.rows) % 2 == 0
        g.zero(dead)
        assert g.matrix()[dead].eq(0).all() and g.matrix()[~dead].ne(0).any(1).all()
        zeroed += int(dead.sum())
    small = _agree(net)
    # depthwise filters and their producer's filters are one channel: each zeroed group removes
    # its channel from every conv it spans, so the compact net lost at least `zeroed` channels
    assert before - _channels(small) >= zeroed


FAMILIES = {
    "group_lasso": {"name": "group_lasso", "lam": 50.0},
    "cges": {"name": "cges", "lam": 50.0, "mu": 0.5},
    "growl": {"name": "growl", "p": 0.5, "lambda1": 50.0, "lambda2": 1.0},
    "exclusive_lasso": {"name": "exclusive_lasso", "lam": 50.0},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", sorted(NETS))
def test_every_family_on_channel_groups_masked_eval_equals_compacted_eval(family, kind):
    net = _make(kind)
    cfg = _reg_cfg({**FAMILIES[family], "groups": "channel"})
    layers = build_layer_regularizers(cfg, net, net.input_shape)
    assert layers and all(isinstance(l, ChannelLayerRegularizer) for l in layers)
    norms = [torch.linalg.vector_norm(l.groups(), dim=1) for l in layers]
    step = float(torch.cat(norms).median()) / 50.0  # strong enough to zero some whole channels
    for l in layers:
        l.apply_prox(step)
    rows = torch.cat([l.groups().ne(0).any(1) for l in layers])
    if family != "exclusive_lasso":  # exclusive lasso never zeroes a whole group
        assert (~rows).any()
    with warnings.catch_warnings():
        if family in ("group_lasso", "growl"):  # whole rows: on GN, whole norm groups, no warning
            warnings.simplefilter("error")
        small = _agree(net)
    if (~rows).any():
        assert _channels(small) < _channels(net)


def _reg_cfg(data: dict):
    from trainables import TrialConfig
    return TrialConfig.from_dict({"device": "cpu", "model": {"name": "mlp", "hidden": [8]},
                                  "regularizer": data}).regularizer


def test_channel_grouping_on_an_untraceable_selection_is_a_one_line_config_error():
    net = _make("bn")
    cfg = _reg_cfg({"name": "group_lasso", "groups": "channel", "layers": ["fc"]})
    with pytest.raises(ConfigError) as e:
        build_layer_regularizers(cfg, net, net.input_shape)
    assert "regularizer.groups" in str(e.value) and "channel" in str(e.value)
    assert "\n" not in str(e.value).strip()


def test_tying_with_channel_groups_is_a_config_error():
    with pytest.raises(ConfigError, match="regularizer.groups"):
        from trainables import TrialConfig
        TrialConfig.from_dict({"model": {"name": "mlp", "hidden": [8]},
                               "regularizer": {"name": "growl", "groups": "channel"},
                               "tying": {"enabled": True}})


# ----------------------------------------------------------------------------- filter masks


def test_zeroed_filter_silences_its_bias_and_batchnorm_channel():
    net = _make("bn")
    dead = torch.zeros(8, dtype=torch.bool)
    dead[[1, 4, 6]] = True
    with torch.no_grad():
        net.conv.weight[dead] = 0  # what a filter mask does to the weight alone
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert net.bn(net.conv(x))[:, dead].abs().amax() > 0.1  # the bug: the BN channel is not 0
    norms = following_norms(trace(net, net.input_shape), [net.conv])
    assert norms[net.conv] == [net.bn]
    silence_filters(net.conv, norms[net.conv], dead)
    with torch.no_grad():
        assert net.bn(net.conv(x))[:, dead].eq(0).all()
        assert net.bn(net.conv(x))[:, ~dead].ne(0).any()
    small = _agree(net)
    assert small.net.conv.out_channels == 8 - int(dead.sum())


def test_channel_magnitude_on_conv_bn_keeps_eval_equal_to_compacted_and_train_mode():
    """Training with channel_magnitude (filter and channel groups): the masked network in eval
    mode equals the compact one, and zeroed channels output exactly 0 after their BatchNorm."""
    for groups in ("filter", "channel"):
        net = _make("bn")
        layers = build_layer_regularizers(_reg_cfg({"name": "channel_magnitude", "groups": groups,
                                                    "final": 0.5, "end_epoch": 1, "every": 1}),
                                          net, net.input_shape)
        pruner = layers[0].regularizer
        rows = groups == "channel"
        keep = pruner.prune([l.groups() if rows else l.module.weight for l in layers], [None] * len(layers),
                            step=0, steps_per_epoch=1, conv_groups=[conv_groups(l.module) for l in layers])
        norms = following_norms(trace(net, net.input_shape), [l.module for l in layers])
        for l, k in zip(layers, keep):
            if rows:
                l.zero(~k.any(1))
            else:
                with torch.no_grad():
                    l.module.weight.mul_(k)
                silence_filters(l.module, norms[l.module], ~k.reshape(k.shape[0], -1).any(1))
        dead = ~keep[0].reshape(keep[0].shape[0], -1).any(1)
        assert int(dead.sum()) == 4
        x = torch.randn(6, 3, 6, 6)
        with torch.no_grad():
            assert net.bn(net.conv(x))[:, dead].eq(0).all()
            net.train()
            assert net.bn(net.conv(x))[:, dead].eq(0).all()  # train mode agrees (batch stats)
            net.eval()
        small = _agree(net)
        assert small.net.conv.out_channels == 4


# ----------------------------------------------------------------------------- GroupNorm


class GNNet(nn.Module):
    input_shape = (3, 6, 6)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)  # 4 groups of 2 channels
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.gn(self.conv(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def _conv_group(net: GNNet):
    groups, _ = channel_groups(net, net.input_shape)
    return next(g for g in groups if g.root is net.conv)


def _gn_net() -> GNNet:
    torch.manual_seed(0)
    net = GNNet().eval()
    with torch.no_grad():
        net.gn.bias.normal_()
    return net


def test_groupnorm_compacts_whole_norm_groups():
    net = _gn_net()
    cg = _conv_group(net)
    assert cg.rows == 4 and cg.matrix().shape[0] == 4  # one row per norm group of 2 channels
    cg.zero(torch.tensor([0, 1, 0, 1], dtype=torch.bool))  # norm groups 1 and 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole groups: nothing to warn about
        small = _agree(net)
    assert small.net.gn.num_channels == 4 and small.net.gn.num_groups == 2
    assert small.net.conv.out_channels == 4 and small.net.conv2.in_channels == 4


def test_groupnorm_partial_group_is_kept_with_a_warning_naming_the_layer():
    net = _gn_net()
    cg = _conv_group(net)
    cg.zero_channels(torch.tensor([0, 0, 1, 1, 1, 0, 0, 0], dtype=torch.bool))  # group 1 whole, half of 2
    with pytest.warns(UserWarning, match=r"GroupNorm layer 'gn'") as record:
        small = _agree(net)
    assert len([w for w in record if "GroupNorm" in str(w.message)]) == 1
    assert small.net.gn.num_channels == 6 and small.net.gn.num_groups == 3


def test_groupnorm_compact_model_saves_and_loads(tmp_path):
    from trainables.compact import load_compact, save_compact
    from trainables.data import DataSpec

    net = _gn_net()
    cg = _conv_group(net)
    cg.zero(torch.tensor([1, 0, 0, 0], dtype=torch.bool))
    small = _agree(net)
    save_compact(tmp_path / "m.pt", small, spec=DataSpec((3, 6, 6), 4), build=_gn_net)
    loaded = load_compact(tmp_path / "m.pt", build=_gn_net)
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))
    assert loaded.net.gn.num_groups == 3


# ----------------------------------------------------------------------------- in training


@pytest.mark.parametrize("reg", [
    {"name": "channel_magnitude", "groups": "filter", "final": 0.5, "every": 1},
    {"name": "channel_magnitude", "groups": "channel", "final": 0.5, "every": 1},
    {"name": "group_lasso", "groups": "channel", "lam": 6.0},  # zeroes conv2's channels
], ids=["channel_magnitude-filter", "channel_magnitude-channel", "group_lasso-channel"])
def test_fit_conv_bn_pruned_eval_equals_compacted_eval(reg, tmp_path, monkeypatch):
    """Trained with BatchNorm after the pruned convs: the masked network in eval mode equals the
    compact one, whose convs lost the pruned channels (the trainer's own masks, not the test's)."""
    import numpy as np

    from trainables import TrialConfig, fit

    gen = np.random.default_rng(0)
    X = gen.normal(size=(64, 3, 6, 6)).astype(np.float32)
    y = (X[:, 0].mean((1, 2)) > 0).astype(np.int64)
    np.savez(tmp_path / "images.npz", X=X, y=y)
    monkeypatch.chdir(tmp_path)
    cfg = TrialConfig.from_dict({
        "device": "cpu", "seed": 0,
        "data": {"name": "arrays", "path": "images.npz", "test_fraction": 0.25},
        "model": {"name": "python", "factory": "compact_nets:bn_conv_net"},
        "optim": {"name": "sgd", "lr": 0.1, "epochs": 2, "batch_size": 16},
        "regularizer": {**reg, "layers": ["conv1", "conv2"]}})
    result = fit(cfg)
    net = result.model.eval()
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(result.compact_model(x), net(x), rtol=1e-4, atol=1e-5)
        zero = net.conv1.weight.reshape(8, -1).eq(0).all(1)
        if reg["name"] == "channel_magnitude":
            assert int(zero.sum()) == 4  # final 0.5 of 8 filters
        dead_total = 0
        for conv, bn in ((net.conv1, net.bn1), (net.conv2, net.bn2)):
            dead = conv.weight.reshape(conv.out_channels, -1).eq(0).all(1)
            dead_total += int(dead.sum())
            assert net_bn_out(conv, bn, x if conv is net.conv1 else None, net)[:, dead].eq(0).all()
    small = result.compact_model.net
    assert dead_total > 0
    assert small.conv1.out_channels <= 8 - int(zero.sum())
    assert small.conv1.out_channels + small.conv2.out_channels <= 16 - dead_total + 1  # one kept at least


def net_bn_out(conv, bn, x, net):
    """BN output of ``conv``'s channels in eval mode (conv2's input computed through conv1)."""
    if x is None:
        x = torch.randn(5, 3, 6, 6)
        x = torch.relu(net.bn1(net.conv1(x)))
    return bn(conv(x))


class ResidualReadsWhatItWrites(nn.Module):
    """x + conv(x): the block's conv reads the channels it writes, so each of its weights
    [i, j] belongs to channel i (an output) and to channel j (an input) of one group."""

    input_shape = (1, 6, 6)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.res = nn.Conv2d(8, 8, 3, padding=1)
        self.res_bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 36, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        return self.fc(torch.relu(x + self.res_bn(self.res(x))).flatten(1))


def test_a_zero_row_written_back_stays_zero_when_a_weight_is_in_two_rows():
    torch.manual_seed(0)
    net = ResidualReadsWhatItWrites()
    _randomize_stats(net)
    from trainables.config import TrialConfig

    cfg = TrialConfig.from_dict({"regularizer": {"name": "group_lasso", "groups": "channel", "layers": "all"}})
    [layer] = build_layer_regularizers(cfg.regularizer, net, input_shape=net.input_shape)
    M = layer.groups().clone()
    M[:3] = 0
    layer.write(M)
    G = layer.groups()
    assert (~G.ne(0).any(1)).sum().item() == 3  # what the target controller and the metrics count
    for conv in (net.stem, net.res):
        assert (conv.weight.flatten(1).abs().sum(1) == 0).sum().item() == 3
    small = _agree(net.eval())
    assert _channels(small) == _channels(net) - 2 * 3  # stem and res: 5 channels each


@pytest.mark.parametrize("family,expected", [("group_lasso", "channel"), ("cges", "input_position"), ("growl", "channel"),
                                             ("channel_magnitude", "channel"), ("l1", "input"),
                                             ("exclusive_lasso", "input_position"), ("magnitude", "input")])
def test_groups_auto_is_channel_for_a_family_that_removes_groups_on_a_conv_net(family, expected):
    """The default grouping: what compaction removes (channels) on a network with convolutions,
    for the families that zero whole groups; the paper's grouping elsewhere (an MLP, an
    element-wise family, tying on, a selection that forms no channel group)."""
    data = {"name": family} if family != "channel_magnitude" else {"name": family, "final": 0.5}
    if family == "magnitude":
        data["final"] = 0.5
    cfg = _reg_cfg(data)
    assert cfg.groups == "auto"
    net = _make("bn")
    layers = build_layer_regularizers(cfg, net, net.input_shape)
    assert {l.grouping for l in layers} == {expected}
    if expected == "channel":
        assert all(isinstance(l, ChannelLayerRegularizer) for l in layers)
        assert [l.name for l in layers] == ["conv", "conv2"]  # the logits form no channel group: left out
        paper = cfg.paper_groups
        assert {l.grouping for l in build_layer_regularizers(cfg, net, net.input_shape, tying=True)} == {paper}
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
        assert {l.grouping for l in build_layer_regularizers(cfg, mlp, (12,))} == {paper}
        only_fc = build_layer_regularizers(_reg_cfg({**data, "layers": ["fc"]}), net, net.input_shape)
        assert {l.grouping for l in only_fc} == {paper}  # no Conv2d chosen: the paper's grouping
