"""Running each backend of a comparison in its own subprocess, one after another, with progress.

Frameworks never share a process (their thread pools, allocators and global state would skew
each other's figures), and backends run one at a time so they do not compete for cores. A child
that dies without writing its result (killed for memory, a segfault) becomes a ``crashed`` row
with the last line it printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.compare.load import LoadMeter
from crossframe.config.loading import atomic_write_text

#: called with (backend, phase, step, total) as a child advances
ProgressFn = Callable[[str, str, int, int], None]


@dataclass
class ChildOutcome:
    """What came back from one backend's process."""

    backend: str
    result: dict[str, Any]
    wall_s: float
    log: Path
    load: dict[str, Any] | None = None  # the machine's load during the run (crossframe.compare.load)


def _last_line(path: Path) -> str:
    """The last meaningful line of a child's log (framework chatter and JSON phase lines skipped)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        text = line.strip()
        if text and not text.startswith("{\"phase\"") and not text.startswith(("I0", "W0", "WARNING: All log")):
            return text[:400]
    return ""


def _metrics_step(path: Path) -> int:
    """The last step logged in a run's ``metrics.jsonl`` (0 when there is none yet)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 4096))
            tail = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: this one (plus ``env``), with the core importable and frameworks quiet."""
    out = dict(os.environ)
    out.update(env or {})
    out.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


def run_child(backend: str, config: dict[str, Any], work: Path, run_dir: Path,
              progress: ProgressFn | None = None, env: dict[str, str] | None = None,
              timeout_s: float | None = None, meter: LoadMeter | None = None) -> ChildOutcome:
    """Run ``backend`` on ``config`` in a fresh ``python -m crossframe.compare.child`` process.

    ``run_dir`` (where the child's run will land) is removed first so the run gets exactly that
    name; ``work`` receives the request, the result and the child's log. ``meter`` records the
    machine's load while the child runs.
    """
    work.mkdir(parents=True, exist_ok=True)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    request, result_path, log_path = work / "request.json", work / "result.json", work / "child.log"
    result_path.unlink(missing_ok=True)
    atomic_write_text(request, json.dumps({"backend": backend, "config": config, "result": str(result_path),
                                           "spawned_at": time.time()}, indent=2))
    phase = {"name": "start", "total": 0}
    started = time.perf_counter()
    if meter is not None:
        meter.start()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "crossframe.compare.child", str(request)],
                                stdout=subprocess.PIPE, stderr=log, text=True, env=child_environment(env))

        def read_phases() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.startswith("{\"phase\""):
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    phase["name"] = msg["phase"]
                    phase["total"] = int(msg.get("total", phase["total"]))
                    if progress:
                        progress(backend, phase["name"], 0, phase["total"])

        reader = threading.Thread(target=read_phases, daemon=True)
        reader.start()
        metrics = run_dir / "metrics.jsonl"
        while True:
            try:
                proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                if timeout_s is not None and time.perf_counter() - started > timeout_s:
                    proc.kill()
                    proc.wait()
                    break
            if progress and phase["name"] == "train":
                progress(backend, "train", _metrics_step(metrics), phase["total"])
        reader.join(timeout=5)
    wall = time.perf_counter() - started
    load = meter.stop() if meter is not None else None
    if result_path.is_file():
        result = json.loads(result_path.read_text())
    else:
        code = proc.returncode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exited {code}"
        if code == -9:
            why += " (out of memory, or a timeout)"
        last = _last_line(log_path)
        result = {"backend": backend, "status": "crashed",
                  "error": f"the {backend} process {why} without a result" + (f": {last}" if last else "")}
    if progress:
        progress(backend, "done", phase["total"], phase["total"])
    return ChildOutcome(backend, result, wall, log_path, load)


class ProgressDisplay:
    """A rich progress display for the whole comparison: one line per backend, on stderr."""

    def __init__(self, backends: list[str], enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[phase]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=False)
        self._tasks = {b: self._bar.add_task(b, total=None, phase="waiting", start=False) for b in backends}
        self._bar.start()

    def __call__(self, backend: str, phase: str, step: int, total: int) -> None:
        """Show that ``backend`` is in ``phase`` at ``step`` of ``total``."""
        if not self.enabled:
            return
        task = self._tasks[backend]
        self._bar.start_task(task)
        self._bar.update(task, completed=step, total=total or None, phase=phase)

    def finish(self, backend: str, status: str) -> None:
        """Mark ``backend`` finished with ``status``."""
        if self.enabled:
            style = "green" if status == "ok" else "red"
            self._bar.update(self._tasks[backend], phase=f"[{style}]{status}[/{style}]")
            self._bar.stop_task(self._tasks[backend])

    def close(self) -> None:
        """Stop redrawing."""
        if self.enabled:
            self._bar.stop()
