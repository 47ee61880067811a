"""``torchvision``: a classification network of ``torchvision.models`` (``get_model``).

```yaml
model: {name: torchvision, arch: resnet18, kwargs: {}, weights: IMAGENET1K_V1, adapt_input: false}
```

``num_classes`` comes from the data. ``kwargs: {weights: null}`` (as torchvision users write it) is
accepted; trained weights go in ``model.weights``. With ``adapt_input: true`` the first convolution
is replaced by one that reads the data's channels (1-channel digits into a 3-channel ImageNet
network), and trained weights for it are adapted as timm's ``in_chans`` does: summed over the
channels for 1, repeated and scaled by ``3 / channels`` otherwise. ``weights`` is a state-dict file, or the name of one of the
architecture's weights (``IMAGENET1K_V1``, ``DEFAULT``) that is already in the local torch hub
cache: nothing is downloaded. Named weights trained on another number of classes are loaded with
the classifier (the last Linear/Conv2d) left at its fresh initialisation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

import torch
from pydantic import Field, field_validator
from torch import nn

from ..configbase import ConfigError, FieldError
from ..data import DataSpec
from ..families import MODELS
from .sources import SourceConfig, call_builder, load_state_dict, weights_field

__all__ = ["TorchvisionConfig"]


def _classifiers() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


@MODELS.register
class TorchvisionConfig(SourceConfig):
    """A torchvision classification network (`torchvision.models.get_model`)."""

    source_field: ClassVar[str] = "arch"

    name: Literal["torchvision"] = "torchvision"
    arch: str = Field(description="the architecture, e.g. `resnet18` (`torchvision.models.list_models()`)")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the architecture's builder")

    adapt_input: bool = Field(False, description="replace the first convolution by one that reads the "
                                                 "data's channels (trained weights adapted as timm's "
                                                 "`in_chans` does)")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        return weights_field(v, names=True)

    @field_validator("kwargs")
    @classmethod
    def _builder_weights(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "weights" in v:  # the builder's own argument: sparsetune always builds untrained
            if v["weights"] is not None:
                raise FieldError("weights", "trained weights go in model.weights (a state-dict "
                                                    "file or a weights name such as IMAGENET1K_V1)",
                                  v["weights"])
            v = {k: x for k, x in v.items() if k != "weights"}
        return v

    def build(self, spec: DataSpec) -> nn.Module:
        import torchvision

        valid = _classifiers()
        if self.arch not in valid:
            raise ConfigError([("model.arch", f"not a torchvision classification model; e.g. "
                                              f"{', '.join(valid[:8])}, ... "
                                              "(torchvision.models.list_models())", self.arch)])
        builder = torchvision.models.get_model_builder(self.arch)
        model = call_builder(lambda **kw: builder(weights=None, **kw), self.kwargs, spec,
                             field="model.arch", value=self.arch, always=("num_classes",))
        name, conv = _first_conv(model)
        channels = int(spec.input_shape[0]) if len(spec.input_shape) == 3 else None
        if conv is None or channels is None or conv.in_channels == channels:
            return model
        if not self.adapt_input:
            raise ConfigError([("model.arch", f"{self.arch}'s first convolution ({name}) reads "
                                              f"{conv.in_channels} channels and the data has {channels}; "
                                              "set model.adapt_input: true to replace it by one that "
                                              f"reads {channels} (trained weights adapted as timm's "
                                              "in_chans does)", self.arch)])
        if conv.groups != 1:
            raise ConfigError([("model.adapt_input", f"{self.arch}'s first convolution ({name}) is "
                                                     f"grouped (groups={conv.groups}): it cannot be "
                                                     "adapted", True)])
        new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
        with torch.no_grad():
            new.weight.copy_(adapt_input_weight(conv.weight, channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        model.set_submodule(name, new)
        return model

    def adapt_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Trained weights for an adapted first convolution: their input channels adapted to its."""
        name, conv = _first_conv(model)
        key = f"{name}.weight"
        if not self.adapt_input or conv is None or key not in state:
            return state
        w = state[key]
        if w.ndim != 4 or w.shape[1] == conv.in_channels:
            return state
        return {**state, key: adapt_input_weight(w, conv.in_channels)}

    def named_weights(self, spec: DataSpec) -> Mapping[str, torch.Tensor]:
        import torchvision

        choices = torchvision.models.get_model_weights(self.arch)
        names = list(choices.__members__)
        if self.weights not in names:
            raise ConfigError([("model.weights", f"not a weights name of {self.arch} (its names: "
                                                 f"{', '.join(names)}); a file path needs a `/` or a "
                                                 "suffix, e.g. ./weights.pt", self.weights)])
        w = choices[self.weights]
        file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)
        if not file.is_file():
            raise ConfigError([("model.weights", f"{self.arch} {w} could not be downloaded: sparsetune "
                                                 f"reads named weights from the local torch hub cache "
                                                 f"only, and {file} is not there. Download it once "
                                                 f"where there is a network (torchvision.models.get_model("
                                                 f"{self.arch!r}, weights={self.weights!r})) or pass the "
                                                 "file: model.weights: path/to/state_dict.pt",
                                self.weights)])
        return load_state_dict(str(file))


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d | None]:
    """The first ``Conv2d`` in module order: the one that reads the input, in torchvision's nets."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return "", None


def adapt_input_weight(w: torch.Tensor, channels: int) -> torch.Tensor:
    """A conv weight ``[out, c, kh, kw]`` for ``channels`` inputs, as timm's ``adapt_input_conv``:
    summed over ``c`` for one channel (a grey image reads as the RGB image (v, v, v) did);
    otherwise repeated over the channels and scaled by ``c / channels`` (exact for a multiple of ``c``
    channels that repeat the image, the right scale otherwise)."""
    if channels == 1:
        return w.sum(dim=1, keepdim=True)
    c = w.shape[1]
    return w.repeat(1, math.ceil(channels / c), 1, 1)[:, :channels] * (c / channels)
