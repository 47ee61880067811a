"""``timm``: a network of PyTorch Image Models (``timm.create_model``), an optional extra:
``pip install "sparsetune[timm]"``.

```yaml
model: {name: timm, arch: resnet18d, kwargs: {}, weights: pretrained}
```

``num_classes`` comes from the data, and so does ``in_chans`` (the input's channels) unless
``kwargs`` sets it. ``weights`` is a state-dict file, or ``pretrained`` (the architecture's default
pretrained tag) or another tag (``a1_in1k`` for ``resnet18.a1_in1k``) whose file is already in
the local Hugging Face or torch hub cache: nothing is downloaded. Named weights trained on another
number of classes are loaded with the classifier left at its fresh initialisation.
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

__all__ = ["TimmConfig", "INSTALL"]

INSTALL = 'pip install "sparsetune[timm]"'


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError([("model.name", f"needs the timm package, which is not installed: {INSTALL}",
                            "timm")]) from None
    return timm


@MODELS.register
class TimmConfig(SourceConfig):
    """A timm network (`timm.create_model`; optional extra `sparsetune[timm]`)."""

    source_field: ClassVar[str] = "arch"

    name: Literal["timm"] = "timm"
    arch: str = Field(description="the architecture, e.g. `resnet18d` (`timm.list_models()`)")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of `timm.create_model`")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        return weights_field(v, names=True)

    def build(self, spec: DataSpec) -> nn.Module:
        timm = _timm()
        if not timm.is_model(self.arch):
            raise ConfigError([("model.arch", "not a timm model (timm.list_models() lists them)", self.arch)])
        kwargs = dict(self.kwargs)
        if len(spec.input_shape) == 3:
            kwargs.setdefault("in_chans", int(spec.input_shape[0]))
        return call_builder(lambda **kw: timm.create_model(self.arch, pretrained=False, **kw), kwargs, spec,
                            field="model.arch", value=self.arch, always=("num_classes",))

    def named_weights(self, spec: DataSpec) -> Mapping[str, torch.Tensor]:
        from timm.models import get_pretrained_cfg

        tag = "" if self.weights == "pretrained" else f".{self.weights}"
        cfg = get_pretrained_cfg(self.arch + tag)
        if cfg is None:
            raise ConfigError([("model.weights", f"{self.arch} has no pretrained weights {self.weights!r} "
                                                 "(`pretrained`, or a tag of timm.list_pretrained())",
                                self.weights)])
        candidates: list[Path] = []
        if cfg.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(cfg.hf_hub_id, filename)
                if isinstance(found, str):
                    candidates.append(Path(found))
        if cfg.url:
            candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path))
        for file in candidates:
            if file.is_file():
                if file.suffix == ".safetensors":
                    from safetensors.torch import load_file

                    return load_file(str(file))
                return load_state_dict(str(file))
        raise ConfigError([("model.weights", f"the {self.weights} weights of {self.arch} could not be "
                                             "downloaded: sparsetune reads named weights from the local "
                                             f"Hugging Face / torch hub cache only ({cfg.hf_hub_id or cfg.url} "
                                             "is not there). Download them once where there is a network "
                                             f"(timm.create_model({self.arch!r}, pretrained=True)) or pass "
                                             "the file: model.weights: path/to/state_dict.pt", self.weights)])
