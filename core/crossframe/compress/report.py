"""``RUN_DIR/report.json`` and ``RUN_DIR/report.md``: one entry per compress or export step.

The JSON schema is documented in ``docs/compress.md`` (section *Report*); ``crossframe compare``
reads ``steps[]``. Both files are written atomically after every step, so a crash leaves the
report of the steps done so far.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from crossframe.checkpoint import json_default
from crossframe.config.loading import atomic_write_text

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
SCHEMA_VERSION = 1

#: who runs (and so whose latency is measured for) an exported file of each format
RUNTIMES = {"onnx": "onnxruntime", "tflite": "tflite", "torch-int8": "torch", "saved-model": "tensorflow",
            "torch-export": "torch", "stablehlo": "jax"}


def runtime_of(fmt: str | None) -> str:
    """The runtime that loads and times an artefact of format ``fmt`` (``-`` when there is none)."""
    return RUNTIMES.get(fmt or "", fmt or "-")


class Report:
    """The report of a run's compress and export steps."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.data = data

    @classmethod
    def open(cls, run_dir: Path, fresh: bool) -> Report:
        """The run's report: a new one with ``fresh``, else the existing one (or a new one)."""
        path = Path(run_dir) / REPORT_JSON
        if not fresh and path.is_file():
            try:
                data = json.loads(path.read_text())
                if isinstance(data, dict) and isinstance(data.get("steps"), list):
                    return cls(run_dir, data)
            except (OSError, ValueError):
                pass
        return cls(run_dir, {"schema_version": SCHEMA_VERSION, "run_dir": str(run_dir), "steps": []})

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The step entries, in the order they ran."""
        return self.data["steps"]

    def set_baseline(self, entry: dict[str, Any]) -> None:
        """The trained model the steps start from."""
        self.data["baseline"] = entry

    def add(self, entry: dict[str, Any]) -> None:
        """Add a step (an export step replaces an earlier one with the same name and backend) and write."""
        if entry["kind"] == "export":
            self.data["steps"] = [s for s in self.steps if not (s["kind"] == "export" and s["name"] == entry["name"]
                                                               and s["backend"] == entry["backend"])]
        self.steps.append(entry)
        self.write()

    def clear(self, kind: str) -> None:
        """Drop the steps of ``kind`` (``compress`` before a new compress pass)."""
        self.data["steps"] = [s for s in self.steps if s["kind"] != kind]

    def write(self) -> None:
        """Write report.json and report.md atomically."""
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_text(self.run_dir / REPORT_JSON, json.dumps(self.data, indent=2, default=json_default) + "\n")
        atomic_write_text(self.run_dir / REPORT_MD, self.markdown())

    # ------------------------------------------------------------------ rendering

    def rows(self, steps: list[dict[str, Any]] | None = None) -> list[list[str]]:
        """Table rows (strings) for the given steps (default: all, with the baseline first)."""
        out = []
        base = self.data.get("baseline")
        chosen = self.steps if steps is None else steps
        if base and steps is None:
            out.append(_row({**base, "kind": "trained", "name": "-"}))
        out.extend(_row(s) for s in chosen)
        return out

    def markdown(self) -> str:
        """The report as Markdown."""
        lines = [f"# Compression and export report: {self.run_dir.name}", ""]
        base = self.data.get("baseline")
        if base:
            lines.append(f"Trained model: {base.get('model')} on {base.get('backend')}, "
                         f"{base.get('param_count')} parameters, {base.get('metric')} "
                         f"{_fmt(base.get('metric_after'))}, {_size(base.get('size_bytes'))} on disk.")
            lines.append("")
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        for row in self.rows():
            lines.append("| " + " | ".join(row) + " |")
        lat = [s for s in self.steps if s.get("latency")]
        if lat:
            lines += ["", "## Latency (the exported file in its runtime vs the native eager model, same process)",
                      "", "| step | runtime | batch | p50 ms | p99 ms | ex/s | native p50 ms | native p99 ms "
                      "| native ex/s | speed-up p50 |", "|---|---|---|---|---|---|---|---|---|---|"]
            for s in lat:
                for key, runtime in s["latency"]["runtime"].items():
                    native = s["latency"]["native"].get(key, {})
                    speed = native.get("p50_ms", 0) / runtime["p50_ms"] if runtime.get("p50_ms") else None
                    lines.append(f"| {s['index']}-{s['name']} | {runtime_of(s.get('format'))} | {runtime['batch']} | "
                                 f"{_fmt(runtime['p50_ms'])} | "
                                 f"{_fmt(runtime['p99_ms'])} | {_fmt(runtime['throughput'], 0)} | "
                                 f"{_fmt(native.get('p50_ms'))} | {_fmt(native.get('p99_ms'))} | "
                                 f"{_fmt(native.get('throughput'), 0)} | {_fmt(speed, 2)}x |")
        lines += ["", f"Schema: docs/compress.md#report (report.json, schema_version {SCHEMA_VERSION}).", ""]
        return "\n".join(lines)

    def print_table(self, steps: list[dict[str, Any]] | None = None, title: str = "crossframe report") -> None:
        """Print the steps as a rich table on stdout."""
        from crossframe.tables import show_table

        show_table(title, COLUMNS, self.rows(steps))


#: ``size`` is what the step stores (the packed int8/int4 file for a quantiser); ``runtime`` runs the
#: exported file and its latency is the ``p50 ms`` column
COLUMNS = ("step", "kind", "backend", "format", "size", "sparsity", "params", "metric before", "metric after",
           "max abs diff", "max rel diff", "runtime", "p50 ms (b=1)", "native p50 ms (b=1)")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def _size(value: Any) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)  # pragma: no cover


def _row(s: dict[str, Any]) -> list[str]:
    verify = s.get("verify") or {}
    lat = s.get("latency") or {}
    ort_b1 = (lat.get("runtime") or {}).get("batch_1", {})
    nat_b1 = (lat.get("native") or {}).get("batch_1", {})
    label = f"{s['index']}-{s['name']}" if "index" in s else s.get("name", "-")
    metric = s.get("metric") or ""
    runtime = runtime_of(s.get("format")) if ort_b1 else "-"
    stored = s.get("stored_bytes")
    size = _size(stored) + " stored" if stored is not None else _size(s.get("size_bytes"))
    return [label, s.get("kind", "-"), s.get("backend", "-"), s.get("format") or "-", size,
            _fmt(s.get("sparsity"), 3), _fmt(s.get("param_count")),
            f"{metric} {_fmt(s.get('metric_before'))}" if s.get("metric_before") is not None else "-",
            f"{metric} {_fmt(s.get('metric_after'))}" if s.get("metric_after") is not None else "-",
            _fmt(verify.get("max_abs_diff"), 6), _fmt(verify.get("max_rel_diff"), 6),
            runtime, _fmt(ort_b1.get("p50_ms"), 4), _fmt(nat_b1.get("p50_ms"), 4)]
