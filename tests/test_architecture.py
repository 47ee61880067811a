"""docs/ARCHITECTURE.md names every module, and the layers hold: trainables/ never imports ray,
optuna or mlflow."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
FORBIDDEN = {"ray", "optuna", "mlflow"}


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_every_module_is_named_in_architecture_md():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = _modules("trainables") + _modules("search")
    assert len(modules) > 40
    missing = [p.relative_to(ROOT).as_posix() for p in modules if f"`{p.relative_to(ROOT).as_posix()}`" not in doc]
    assert not missing, f"not in docs/ARCHITECTURE.md: {missing}"


def test_trainables_never_imports_ray_optuna_or_mlflow():
    offenders = {p.relative_to(ROOT).as_posix(): sorted(_imported_roots(p) & FORBIDDEN) for p in _modules("trainables")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_import_scan_sees_each_form_of_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import ray.tune\nfrom optuna import samplers\nimport importlib\n"
                     "importlib.import_module('mlflow.tracking')\nfrom . import sibling\n")
    assert _imported_roots(probe) >= FORBIDDEN and "sibling" not in _imported_roots(probe)


def test_the_public_api_of_both_packages_resolves():
    import search
    import trainables

    for package in (search, trainables):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
