"""Helpers the benchmarks share: statistics, a Markdown table and a description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (they must not be empty)."""
    return float(statistics.median(list(values)))


def spread(values: Sequence[float]) -> float:
    """Relative spread of ``values``: (max - min) / median, a quick read on how noisy they were."""
    mid = median(values)
    return float((max(values) - min(values)) / mid) if mid else 0.0


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    numeric = [all(isinstance(row[i], (int, float)) or _looks_numeric(row[i]) for row in rows) if rows else False
               for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _looks_numeric(value: Any) -> bool:
    text = str(value).strip().rstrip("x%").replace(",", "").replace("+", "", 1)
    try:
        float(text.split()[0] if text else "nan")
    except ValueError:
        return False
    return True


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or :func:`platform.processor` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken: CPU, cores, OS, Python, torch (if installed) and the date."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_default_threads"] = torch.get_num_threads()  # in this process; benchmarks may set their own
    except ImportError:
        info["torch"] = None
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover - numpy is a core dependency
        info["numpy"] = None
    return info
