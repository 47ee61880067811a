"""The bench scripts behind docs/RESULTS.md still import: the helpers and the sparsetune APIs they
name exist. (A script broken by an API change once went unnoticed for sessions.) Running them is
too slow for the suite; bench/README.md says how."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("flags", [["--frontier", "incremental"], ["--frontier", "full", "--no-optuna"]])
def test_driver_scale_reports_its_parts_and_ends_with_the_per_trial_line(flags):
    """A tiny run (no timing asserts); the script itself checks that the tags it made the tracker
    write are the frontier."""
    done = subprocess.run([sys.executable, "bench/driver_scale.py", "--trials", "8", "--last", "3", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"driver work per trial: \d+\.\d ms at 8 trials", lines[-1]), lines[-1]
    assert "SIMULATED IN PROCESS" in done.stdout and "median over the last 3 trials" in lines[-2]
    rows = {line.split("|")[1].strip() for line in lines if line.startswith("|")}
    parts = {"frontier", "mlflow", "tracker other", "**total**", "`log_batch`", "`set_terminated`"}
    assert parts | ({"optuna"} if "--no-optuna" not in flags else set()) <= rows
    assert ("optuna" in rows) == ("--no-optuna" not in flags)
