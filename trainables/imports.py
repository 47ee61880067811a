"""User code named in a config: ``"package.module:attribute"`` or ``"path/to/file.py:attribute"``.

A config names a factory (the ``python`` dataset source's ``factory``) as a string, so it stays
plain YAML that a search can export and re-run. The module form is imported with
:func:`importlib.import_module` from the current directory (put first on ``sys.path``, as
``python -m`` does) or ``PYTHONPATH``, so it must be importable where the trial runs; the file form is loaded from the file, whose path is made absolute when the
config is built (Ray runs each trial in its own working directory), so it works from any folder
and on every node that sees the file. The attribute may be dotted (``Class.method``).

Importing runs the module's code: a config that names a factory is code, to be trusted as such.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from .configbase import absolute_path

__all__ = ["factory_spec", "import_object"]


def _parts(spec: str) -> tuple[str, str]:
    module, sep, attribute = spec.rpartition(":")
    if not sep or not module or not attribute:
        raise ValueError("expected 'module:attribute' or 'path/to/file.py:attribute'")
    if not all(p.isidentifier() for p in attribute.split(".")):
        raise ValueError(f"{attribute!r} is not an attribute name")
    return module, attribute


def _is_file(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def factory_spec(value: str) -> str:
    """Validate a factory string; a file path in it is made absolute (a pydantic validator)."""
    module, attribute = _parts(value)
    if _is_file(module):
        return f"{absolute_path(module)}:{attribute}"
    if not all(p.isidentifier() for p in module.split(".")):
        raise ValueError(f"{module!r} is neither a module name nor a .py file path")
    return value


def import_object(spec: str) -> Any:
    """The object ``spec`` names. Raises ``ImportError`` / ``AttributeError`` with a message that
    says what was looked for and where (callers turn it into a ``ConfigError`` naming their field):
    the module missing, the module failing while it is imported, or an attribute missing."""
    module_name, attribute = _parts(spec)
    if _is_file(module_name):
        module = _load_file(Path(module_name))
    else:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        importlib.invalidate_caches()  # a module written after this process started
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
                where = [cwd] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
                raise ImportError(f"no module named {e.name!r} (looked in the current directory and "
                                  f"PYTHONPATH: {', '.join(dict.fromkeys(where))}); it must be importable "
                                  f"where training runs, or name the file: "
                                  f"path/to/{module_name.split('.')[-1]}.py:{attribute}") from None
            raise ImportError(f"importing {module_name!r} failed: {e}") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed while importing
            raise ImportError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    obj: Any = module
    parts = attribute.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            owner = module_name + "".join("." + p for p in parts[:i])
            where = getattr(module, "__file__", None)
            raise AttributeError(f"{owner!r} has no attribute {part!r}"
                                 + (f" ({where})" if where and i == 0 else ""))
        obj = getattr(obj, part)
    return obj


def _load_file(path: Path) -> Any:
    """The module of a .py file, loaded once per process under a name derived from its path (so
    that objects defined in it pickle by reference, e.g. into DataLoader worker processes)."""
    if not path.is_file():
        raise ImportError(f"no such file {str(path)!r}" if not path.exists() else f"not a file: {str(path)!r}")
    name = f"sparsetune_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
