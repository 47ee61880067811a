"""trainables.schema: torch-free names of what a training run emits, shared with search/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parent.parent


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nimport json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_search_and_the_schema_import_without_torch():
    loaded = _loaded_after("import search, trainables, trainables.schema")
    assert "trainables.schema" in loaded and "search" in loaded
    assert not {m for m in loaded if m == "torch" or m.startswith("torch.")}
    assert not {"ray", "optuna", "mlflow"} & loaded


def test_the_frontier_side_of_search_imports_without_torch():
    """What `sparsetune frontier` and `export` load (search.spec loads the config tree, so torch)."""
    loaded = _loaded_after("import search.frontier, search.store, search.tracking, search.cli, search.commands")
    assert "search.frontier" in loaded
    assert "torch" not in loaded


def test_a_run_writes_exactly_the_schema_artifacts(tmp_path):
    from trainables import TrialConfig, fit, save_run
    from trainables.schema import ARTIFACTS, RESULT_METRICS

    torch.manual_seed(0)
    cfg = TrialConfig.from_dict({"data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [8]},
                                 "optim": {"epochs": 1}, "regularizer": {"name": "l1"}, "device": "cpu"})
    save_run(fit(cfg), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ARTIFACTS)
    metrics = json.loads((tmp_path / "result.json").read_text())
    flat = {**metrics, **metrics.get("metrics", {})}
    assert set(RESULT_METRICS) <= set(flat), set(RESULT_METRICS) - set(flat)
