"""``torchvision``: a classification network of ``torchvision.models`` (``get_model``).

```yaml
model: {name: torchvision, arch: resnet18, kwargs: {}, weights: IMAGENET1K_V1}
```

``num_classes`` comes from the data. ``weights`` is a state-dict file, or the name of one of the
architecture's weights (``IMAGENET1K_V1``, ``DEFAULT``) that is already in the local torch hub
cache: nothing is downloaded. Named weights trained on another number of classes are loaded with
the classifier (the last Linear/Conv2d) left at its fresh initialisation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

import torch
from pydantic import Field, field_validator
from torch import nn

from ..configbase import ConfigError
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
    weights: str | None = Field(None, description="trained weights to start from: a state-dict file, or "
                                                  "a weights name (`IMAGENET1K_V1`, `DEFAULT`) found in "
                                                  "the local torch hub cache")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        return weights_field(v, names=True)

    def build(self, spec: DataSpec) -> nn.Module:
        import torchvision

        valid = _classifiers()
        if self.arch not in valid:
            raise ConfigError([("model.arch", f"not a torchvision classification model; e.g. "
                                              f"{', '.join(valid[:8])}, ... "
                                              "(torchvision.models.list_models())", self.arch)])
        builder = torchvision.models.get_model_builder(self.arch)
        return call_builder(lambda **kw: builder(weights=None, **kw), self.kwargs, spec,
                            field="model.arch", value=self.arch, always=("num_classes",))

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
