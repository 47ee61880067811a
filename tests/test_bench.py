"""The bench scripts behind docs/RESULTS.md still import: the helpers and the sparsetune APIs they
name exist. (A script broken by an API change once went unnoticed for sessions.) Running them is
too slow for the suite; bench/README.md says how."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "common"))


def test_every_bench_script_imports_in_a_fresh_process():
    code = "import importlib, sys; sys.path.insert(0, 'bench'); [importlib.import_module(m) for m in sys.argv[1:]]"
    done = subprocess.run([sys.executable, "-c", code, *SCRIPTS], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_every_bench_script_is_documented():
    readme = (ROOT / "bench" / "README.md").read_text()
    assert len(SCRIPTS) > 10
    assert [s for s in SCRIPTS if f"{s}.py" not in readme] == []
