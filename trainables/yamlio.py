"""Safe YAML reading and writing for configs and search specs.

PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a *string*; users write learning rates and
lambdas that way, so the loader here also resolves such numbers as floats. It is a subclass of
``yaml.SafeLoader``: no Python objects are ever constructed from a file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["YamlError", "load_yaml", "loads_yaml", "dump_yaml"]


class YamlError(ValueError):
    """A file that cannot be read or is not valid YAML."""


_MAX_FLOW_DEPTH = 100  # a config nests a few levels; PyYAML scans deep [[[[... in quadratic time


class _Loader(yaml.SafeLoader):
    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= _MAX_FLOW_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"[ or {{ nested more than {_MAX_FLOW_DEPTH} deep",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """Writes what ``_Loader`` reads back the same: a string such as ``"1e-3"`` is quoted."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def loads_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        raise YamlError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise YamlError(f"{source}: not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # a constructor's error: `!!int 1e3`, 5000 digits
        raise YamlError(f"{source}: not valid YAML: {e}") from None


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise YamlError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise YamlError(f"{str(path)!r} is not a text file") from None
    return loads_yaml(text, str(path))


def dump_yaml(data: Any, **options: Any) -> str:
    """Safe YAML that :func:`loads_yaml` reads back as ``data`` (``options``: ``yaml.dump``'s)."""
    return yaml.dump(data, Dumper=_Dumper, **{"sort_keys": False, "default_flow_style": None,
                                              "width": 100, **options})
