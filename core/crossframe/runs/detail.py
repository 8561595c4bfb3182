"""``crossframe runs show`` and ``runs diff``: a run's config against its parent, metrics, artefacts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from crossframe.errors import UsageError
from crossframe.runs.summary import CONFIG_FILE, dir_size, is_run_dir, summarize

_MISSING = "<unset>"


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config as a dict (from its ``config.yaml``)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((Path(run_dir) / CONFIG_FILE).read_text(), Loader=loader) or {}


def require_run(path: str | Path) -> Path:
    """``path`` as a run directory, or a one-line UsageError."""
    run_dir = Path(path)
    if not is_run_dir(run_dir):
        raise UsageError(f"RUN: '{run_dir}' is not a run directory (no {CONFIG_FILE})")
    return run_dir


def parent_of(run_dir: Path, config: dict[str, Any]) -> Path | None:
    """The run this one came from: the run a compressed step belongs to, or a distillation teacher."""
    run_dir = Path(run_dir)
    if run_dir.parent.name == "compressed" and is_run_dir(run_dir.parent.parent):
        return run_dir.parent.parent
    teacher = ((config.get("train") or {}).get("distill") or {}).get("teacher")
    if teacher:
        for candidate in (Path(teacher), *Path(teacher).parents):
            if is_run_dir(candidate):
                return candidate
    return None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists of components are indexed (``loggers.0.name``)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    if isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, value in a, value in b)`` for every flattened key whose value differs."""
    fa, fb = flatten(a), flatten(b)
    return [(k, fa.get(k, _MISSING), fb.get(k, _MISSING)) for k in sorted(set(fa) | set(fb))
            if fa.get(k, _MISSING) != fb.get(k, _MISSING)]


def metrics_summary(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per scalar metric in ``metrics.jsonl``: ``last``, ``min``, ``max``, ``count`` and ``last_step``."""
    path = Path(run_dir) / "metrics.jsonl"
    summary: dict[str, dict[str, float]] = {}
    if not path.is_file():
        return summary
    with path.open() as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed run
            step = record.get("step")
            for key, value in record.items():
                if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if not math.isfinite(value):
                    continue
                entry = summary.setdefault(key, {"min": value, "max": value, "count": 0})
                entry.update(last=value, last_step=step, count=entry["count"] + 1,
                             min=min(entry["min"], value), max=max(entry["max"], value))
    return summary


def checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Each checkpoint: step, size and whether it has a sha256 manifest."""
    from crossframe.checkpoint import list_checkpoints
    from crossframe.integrity import MANIFEST

    return [{"step": int(p.name.split("_", 1)[1]), "path": str(p), "size_bytes": dir_size(p),
             "manifest": (p / MANIFEST).is_file()} for p in list_checkpoints(Path(run_dir) / "checkpoints")]


def exports(run_dir: Path) -> list[dict[str, Any]]:
    """Each export and compress step of the run's ``report.json`` (format, size, metric after)."""
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        return []
    try:
        steps = json.loads(path.read_text()).get("steps", [])
    except ValueError:
        return []
    keep = ("index", "kind", "name", "format", "path", "size_bytes", "metric", "metric_after")
    return [{k: s.get(k) for k in keep} for s in steps if isinstance(s, dict)]


def show(run_dir: str | Path) -> dict[str, Any]:
    """Everything ``runs show`` prints, as data."""
    run_dir = require_run(run_dir)
    config = read_config(run_dir)
    parent = parent_of(run_dir, config)
    return {
        "summary": summarize(run_dir).to_json(),
        "parent": str(parent) if parent else None,
        "config_diff": config_diff(read_config(parent), config) if parent else [],
        "metrics": metrics_summary(run_dir),
        "checkpoints": checkpoints(run_dir),
        "exports": exports(run_dir),
    }


def diff(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Config keys and final metric values that differ between two runs."""
    run_a, run_b = require_run(a), require_run(b)
    ma, mb = metrics_summary(run_a), metrics_summary(run_b)
    metrics = []
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key, {}).get("last"), mb.get(key, {}).get("last")
        if va != vb:
            delta = vb - va if va is not None and vb is not None else None
            metrics.append({"metric": key, "a": va, "b": vb, "delta": delta})
    return {"a": str(run_a), "b": str(run_b), "config": config_diff(read_config(run_a), read_config(run_b)),
            "metrics": metrics}
