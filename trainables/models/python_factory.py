"""``python``: your own network, from a ``module:attribute`` factory.

```yaml
model: {name: python, factory: "my_models:build", kwargs: {width: 32}, weights: trained.pt}
```

The factory is a function or an ``nn.Module`` class, imported from the current directory or
``PYTHONPATH`` (in every Ray worker too: see the README's "Your own network"). It is called with
``kwargs`` plus ``num_classes`` and ``input_shape`` (one example's shape, e.g. ``(1, 28, 28)``) for
those of the two that it names as parameters, and must return an ``nn.Module`` that maps
``[batch, *input_shape]`` to ``[batch, num_classes]``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator
from torch import nn

from ..data import DataSpec
from ..families import MODELS
from .sources import SourceConfig, call_builder, import_factory, weights_field

__all__ = ["PythonModelConfig"]

_FACTORY = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


@MODELS.register
class PythonModelConfig(SourceConfig):
    """Your own network: a factory `module:attribute` (a function or an `nn.Module` class)."""

    source_field: ClassVar[str] = "factory"

    name: Literal["python"] = "python"
    factory: str = Field(description="`module:attribute`, imported from the current directory or "
                                     "PYTHONPATH; called with `kwargs` plus `num_classes` and "
                                     "`input_shape` if it names them")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the factory")

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str) -> str:
        if not _FACTORY.fullmatch(v):
            raise ValueError("expected `module:attribute`, e.g. my_models:build")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        return weights_field(v, names=False)

    def build(self, spec: DataSpec) -> nn.Module:
        return call_builder(import_factory(self.factory), self.kwargs, spec, field="model.factory",
                            value=self.factory)
