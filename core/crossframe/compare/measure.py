"""Figures of a comparison, computed from what each run left behind (``metrics.jsonl``, ``report.json``).

Pure functions over plain data: no framework, no subprocess. Every figure a run cannot give
(too few log windows, no eval, no export) is ``None`` or empty, never a guess.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (an unreadable or half-written line is skipped)."""
    records: list[dict[str, Any]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def train_windows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The train log records (one per ``log_every`` window), in step order."""
    return sorted((r for r in records if "train/loss" in r), key=lambda r: r["step"])


def loss_curve(records: Sequence[dict[str, Any]]) -> list[list[float]]:
    """``[[step, train loss], ...]`` at every logged step with a finite loss."""
    out = []
    for r in train_windows(records):
        loss = _finite(r["train/loss"])
        if loss is not None:
            out.append([int(r["step"]), loss])
    return out


def _median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(statistics.median(kept)) if kept else None


def throughput(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median samples/s, tokens/s (language models) and steps/s over the log windows after the first.

    The first window holds tracing and compilation, so it is left out whenever another window
    exists; ``includes_warmup`` says when it could not be.
    """
    windows = [r for r in train_windows(records) if _finite(r.get("train/steps_per_sec"))]
    steady = windows[1:] or windows
    out: dict[str, Any] = {"windows": len(steady), "includes_warmup": len(windows) == 1}
    for key in ("samples_per_sec", "tokens_per_sec", "steps_per_sec"):
        value = _median(_finite(r.get(f"train/{key}")) for r in steady)
        if value is not None or key != "tokens_per_sec":
            out[key] = value
    return out


def first_step_s(records: Sequence[dict[str, Any]]) -> float | None:
    """Time of the first step (tracing, compilation and one step), from the first log window.

    The loop's first window runs from the start of training to its first log after ``n`` steps;
    it took ``n / steps_per_sec``. Taking away ``n - 1`` steady steps (the median step time of the
    later windows) leaves the first step. ``None`` without a later window to measure against.
    """
    windows = [r for r in train_windows(records) if _finite(r.get("train/steps_per_sec"))]
    if len(windows) < 2:
        return None
    first = windows[0]
    n = int(first["step"])
    steady = _median(_finite(r["train/steps_per_sec"]) for r in windows[1:])
    if not steady or n < 1:
        return None
    return max(0.0, n / float(first["train/steps_per_sec"]) - (n - 1) / steady)


def final_eval(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The scalar ``val/*`` metrics of the last evaluation (empty when there was none)."""
    evals = [r for r in records if any(k.startswith("val/") for k in r)]
    if not evals:
        return {}
    last = max(evals, key=lambda r: r["step"])
    out = {}
    for key, value in last.items():
        number = _finite(value) if key.startswith("val/") and not isinstance(value, (list, dict)) else None
        if number is not None:
            out[key] = number
    return out


def peak_host_from_metrics(records: Sequence[dict[str, Any]]) -> float | None:
    """The largest ``sys/peak_host_mb`` logged at an evaluation."""
    values = [_finite(r.get("sys/peak_host_mb")) for r in records]
    kept = [v for v in values if v is not None]
    return max(kept) if kept else None


def mfu(records: Sequence[dict[str, Any]]) -> float | None:
    """Median ``train/mfu`` over the windows after the first, when the run logged it."""
    windows = [r for r in train_windows(records) if _finite(r.get("train/mfu")) is not None]
    return _median(_finite(r["train/mfu"]) for r in (windows[1:] or windows))


def loss_divergence(curves: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
    """For every pair of backends: max |Δ train loss| over the steps both logged, and where."""
    out = []
    for a, b in combinations(sorted(curves), 2):
        la, lb = dict((int(s), v) for s, v in curves[a]), dict((int(s), v) for s, v in curves[b])
        common = sorted(set(la) & set(lb))
        worst, at = None, None
        for step in common:
            diff = abs(la[step] - lb[step])
            if worst is None or diff > worst:
                worst, at = diff, step
        out.append({"a": a, "b": b, "max_abs_diff": worst, "at_step": at, "common_steps": len(common)})
    return out


# ---------------------------------------------------------------------- export figures


def _latency_ms(entry: dict[str, Any], which: str) -> float | None:
    """A latency percentile (``p50``/``p99``) from an export entry, in ms, whatever its key's unit."""
    scale = {"_ms": 1.0, "_s": 1e3, "_us": 1e-3, "_ns": 1e-6}
    places = [entry] + [v for v in entry.values() if isinstance(v, dict)]
    for place in places:
        for key, value in place.items():
            if which not in key.lower() or _finite(value) is None:
                continue
            unit = next((u for u in scale if key.lower().endswith(u)), "_ms")
            return float(value) * scale[unit]
    return None


def export_figures(run_dir: Path | None) -> list[dict[str, Any]]:
    """Export entries of ``RUN_DIR/report.json`` (format, size, ONNX Runtime latency p50/p99, the
    artefact's headline metric).

    The report is written by the compress/export pipeline (``steps[]``, see docs/compress.md);
    compress steps are skipped, any field may be missing, and a missing or unreadable report gives
    an empty list.
    """
    if run_dir is None:
        return []
    try:
        report = json.loads((Path(run_dir) / "report.json").read_text())
    except (OSError, ValueError):
        return []
    steps = report.get("steps") if isinstance(report, dict) else None
    out = []
    for entry in steps if isinstance(steps, list) else []:
        if not isinstance(entry, dict) or "format" not in entry or entry.get("kind", "export") != "export":
            continue
        size = entry.get("size_bytes")
        status = entry.get("status")
        error = entry.get("error")
        metric = entry.get("metric")
        out.append({
            "format": str(entry["format"]),
            "name": str(entry["name"]) if entry.get("name") is not None else None,
            "metric": str(metric) if metric is not None else None,
            "metric_after": _finite(entry.get("metric_after")),
            "size_bytes": int(size) if _finite(size) is not None else None,
            "latency_p50_ms": _latency_ms(entry, "p50"),
            "latency_p99_ms": _latency_ms(entry, "p99"),
            "status": str(status) if status is not None else None,
            "error": (str(error).splitlines() or [""])[0][:400] if error else None,
        })
    return out
