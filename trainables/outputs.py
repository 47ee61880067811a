"""What ``sparsetune train`` writes: the exact config, the metrics, the compact model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .compact import save_compact
from .schema import CONFIG_FILE, MODEL_FILE, RESULT_FILE
from .train import Result

__all__ = ["save_run", "jsonable", "CONFIG_FILE", "RESULT_FILE", "MODEL_FILE"]



def jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats become None (json.dumps would write NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def save_run(result: Result, out: str | Path) -> Path:
    """Write ``config.yaml``, ``result.json`` (metrics + per-epoch history) and the compact model."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(result.config.to_yaml())
    payload = {**result.metrics, "history": result.history}
    text = json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n"
    partial = out / f".{RESULT_FILE}.partial"  # written whole, then renamed: never read half written
    partial.write_text(text)
    partial.replace(out / RESULT_FILE)
    save_compact(out / MODEL_FILE, result.compact_model, model_cfg=result.config.model.model_dump(mode="json"),
                 spec=result.spec, preprocessing=result.preprocessing or None)
    return out
