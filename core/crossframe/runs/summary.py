"""One line per run: name, backend, model, steps, status, best metric, started, size."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
#: eval metrics tried in order for a run's headline metric (the first one present wins)
HEADLINE = ("val/accuracy", "val/perplexity", "val/rmse", "val/mae", "val/loss")
HIGHER_IS_BETTER = ("accuracy", "precision", "recall", "f1")


@dataclass
class RunSummary:
    """What ``crossframe runs`` shows for one run directory."""

    name: str
    path: str
    backend: str
    model: str
    steps: int | None
    status: str
    metric: str | None
    best: float | None
    started: float
    size_bytes: int

    def to_json(self) -> dict[str, Any]:
        """A plain dict (for ``--json``)."""
        return asdict(self)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory (it holds the resolved ``config.yaml``)."""
    return (path / CONFIG_FILE).is_file()


def find_runs(root: Path) -> list[Path]:
    """Run directories directly under ``root`` (or ``root`` itself when it is one), by name."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    if not root.is_dir():
        return []
    with os.scandir(root) as entries:
        found = [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
    return sorted(p for p in found if is_run_dir(p))


def dir_size(path: Path) -> int:
    """Bytes in the files under ``path`` (links not followed)."""
    total = 0
    stack = [str(path)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def latest_state(run_dir: Path) -> dict[str, Any] | None:
    """The JSON state of the run's newest checkpoint (without loading any tensors), or None."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    candidates: list[Path] = [run_dir / "state.json"] if (run_dir / "state.json").is_file() else []
    if pointer.is_file():
        candidates.append(root / pointer.read_text().strip() / "state.json")
    if root.is_dir():
        steps = [p for p in root.glob("step_*") if p.name.split("_", 1)[1].isdigit()]
        candidates += [p / "state.json" for p in sorted(steps, key=lambda p: -int(p.name.split("_", 1)[1]))]
    for path in candidates:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` (``val/accuracy``) is better."""
    return metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER


def headline(metrics: dict[str, Any]) -> tuple[str | None, float | None]:
    """The first of :data:`HEADLINE` found in ``metrics`` and its value."""
    for key in HEADLINE:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return key, float(value)
    return None, None


def summarize(run_dir: Path) -> RunSummary:
    """Summarise one run from small files: the newest checkpoint's state and the directory sizes."""
    run_dir = Path(run_dir)
    state = latest_state(run_dir) or {}
    model = state.get("model") or {}
    metric, best = headline(state.get("last_eval") or {})
    stopping = state.get("early_stopping") or {}
    if stopping.get("monitor") and isinstance(stopping.get("best"), (int, float)) and math.isfinite(stopping["best"]):
        metric, best = stopping["monitor"], float(stopping["best"])
    try:
        started = (run_dir / CONFIG_FILE).stat().st_mtime
    except OSError:
        started = 0.0
    status = state.get("status") or ("running" if (run_dir / "metrics.jsonl").is_file() else "empty")
    return RunSummary(
        name=run_dir.name, path=str(run_dir), backend=str(state.get("backend", "?")),
        model=str(model.get("name", "?")) if isinstance(model, dict) else str(model),
        steps=int(state["step"]) if "step" in state else None, status=str(status),
        metric=metric, best=best, started=started, size_bytes=dir_size(run_dir),
    )


def list_runs(root: Path) -> list[RunSummary]:
    """Summaries of every run under ``root``, newest first."""
    return sorted((summarize(p) for p in find_runs(root)), key=lambda s: (-s.started, s.name))
