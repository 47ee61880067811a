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
