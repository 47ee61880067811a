"""Shared helpers of the bench scripts: a median-of-k timer, the machine description, the common
command-line flags, and the output (a JSON file plus Markdown tables on stdout).

Timing rules (the machines these run on are shared and noisy):

- every number is the **median** of ``repeats`` measurements taken after ``warmup`` untimed calls;
- a measurement of a fast function loops it ``number`` times (chosen so one measurement lasts at
  least ``min_time`` seconds, as :mod:`timeit` does) and reports the time per call;
- on CUDA the device is synchronised before the clock starts and before it stops;
- comparisons are **ratios of numbers measured in the same run**, never against a stored number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` from anywhere finds `trainables`
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import trainables.train  # noqa: E402

__all__ = [
    "ROOT",
    "Timing",
    "timeit",
    "minor_faults",
    "sync",
    "resolve_device",
    "machine_description",
    "machine_info",
    "command_line",
    "add_common_args",
    "apply_threads",
    "markdown_table",
    "fmt_time",
    "fmt_ratio",
    "print_header",
    "write_json",
    "base_payload",
]


# ----------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds per call: ``median`` of the ``times`` (one per repeat), each the mean of ``number``
    back-to-back calls."""

    median: float
    min: float
    max: float
    repeats: int
    number: int
    times: list[float] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], *, repeats: int = 7, warmup: int = 2, number: int | None = None,
           min_time: float = 2e-3, device: torch.device | str | None = None) -> Timing:
    """Median-of-``repeats`` seconds per call of ``fn()`` (``time.perf_counter``).

    ``warmup`` untimed calls first (allocator, caches, lazy initialisation, CUDA kernels' first
    launch). ``number=None`` picks the calls per measurement so that one lasts >= ``min_time``.
    ``device``: synchronised (CUDA) around every measurement, so queued kernels are counted.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(warmup, 0)):
        fn()
    sync(device)
    if number is None:
        t0 = time.perf_counter()
        fn()
        sync(device)
        one = time.perf_counter() - t0
        number = 1 if one >= min_time else min(10_000, max(1, math.ceil(min_time / max(one, 1e-9))))
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / number)
    return Timing(statistics.median(times), min(times), max(times), repeats, number, times)


def minor_faults(fn: Callable[[], Any], number: int = 5) -> float | None:
    """Minor page faults of this process per call of ``fn()`` (after one warm-up call), from
    ``getrusage``: a count, so unaffected by other load on the machine. A fresh large CPU tensor
    (above glibc's mmap threshold) faults in every page it touches, so this counts the cost of
    the temporaries an operation allocates. ``None`` where ``resource`` is unavailable."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(number):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / number


# ----------------------------------------------------------------------------- environment


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU ends the script."""
    try:
        return trainables.train.resolve_device(name)
    except ValueError as e:  # trainables' ConfigError naming `device`
        raise SystemExit(f"--device: {e}") from None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """The facts that make a timing interpretable (also stored in the JSON output)."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import numpy
        import sklearn

        info["numpy"], info["sklearn"] = numpy.__version__, sklearn.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device if device is not None and device.type == "cuda" else 0)
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    info["device"] = str(device) if device is not None else None
    return info


def machine_description(device: torch.device | None = None) -> str:
    """One line: CPU model, cores, torch version and threads, GPU (if any), load average."""
    i = machine_info(device)
    cores = f"{i['cpu_count']} cores" + (f" ({i['cpu_affinity']} usable)"
                                         if i["cpu_affinity"] not in (None, i["cpu_count"]) else "")
    parts = [f"{i['cpu']}, {cores}", f"torch {i['torch']} ({i['torch_threads']} threads)",
             f"Python {i['python']}"]
    if "sklearn" in i:
        parts.append(f"numpy {i['numpy']}, scikit-learn {i['sklearn']}")
    parts.append(f"GPU: {i['gpu']} (CUDA {i['cuda']})" if i["gpu"] else "GPU: none")
    if "loadavg_1m" in i:
        parts.append(f"load average {i['loadavg_1m']} at start")
    if i["device"]:
        parts.append(f"timed on {i['device']}")
    return "; ".join(parts)


def command_line() -> str:
    """The exact command that ran this process (``sys.orig_argv`` keeps ``python -m ...``)."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    if argv:
        argv[0] = Path(argv[0]).name if "python" in Path(argv[0]).name else argv[0]
    return " ".join(shlex.quote(a) for a in argv)


# ----------------------------------------------------------------------------- command line


def add_common_args(parser: argparse.ArgumentParser, *, repeats: int | str) -> argparse.ArgumentParser:
    """``--full``, ``--device``, ``--repeats``, ``--threads``, ``--out``; ``repeats``: the default
    shown in the help (a number, or a text for scripts whose default depends on the size)."""
    parser.add_argument("--full", action="store_true", help="the full size (slow; for a quiet machine)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                        help="where to time (default: cpu; auto = cuda when available)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"measurements per median (default: {repeats}"
                             + (", more with --full)" if isinstance(repeats, int) else ")"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--out", default=None, metavar="results.json", help="also write the results as JSON")
    return parser


def apply_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- output


def fmt_time(seconds: float | None) -> str:
    """Seconds in the most readable unit (ns, µs, ms, s), 3 significant digits."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_ratio(r: float | None) -> str:
    if r is None or (isinstance(r, float) and (math.isnan(r) or math.isinf(r))):
        return "–"
    return f"{r:.2f}×" if r < 100 else f"{r:.0f}×"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; ``align`` per column: ``l`` or ``r`` (default: first l, rest r)."""
    align = list(align) if align is not None else ["l"] + ["r"] * (len(headers) - 1)
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    rule = ["-" * (w - 1) + ":" if a == "r" else ":" + "-" * (w - 1) for w, a in zip(widths, align)]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a == "r" else c.ljust(w)
                                 for c, w, a in zip(r, widths, align)) + " |"

    return "\n".join([line(cells[0]), "| " + " | ".join(rule) + " |", *(line(r) for r in cells[1:])])


def print_header(title: str, device: torch.device | None, notes: Sequence[str] = ()) -> str:
    """Print (and return) the Markdown preamble: title, exact command, machine description."""
    text = "\n".join([f"### {title}", "", f"Command: `{command_line()}`  ",
                      f"Machine: {machine_description(device)}", *([""] + list(notes) if notes else []), ""])
    print(text, flush=True)
    return text


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the command and the machine) to ``path`` when given."""
    if not path:
        return
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    print(f"\n(results written to {out})", flush=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, Timing):
        return o.to_dict()
    if isinstance(o, (torch.device, torch.dtype, Path)):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def base_payload(script: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    return {"script": script, "command": command_line(), "args": vars(args),
            "machine": machine_info(device), "machine_description": machine_description(device),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
