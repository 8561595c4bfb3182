"""Cost of the ``sys/`` resource metrics: the quickstart GPT with ``train.resource_metrics`` on and off.

For each installed backend (each in its own subprocess, so frameworks never share one), the
built-in ``quickstart`` config trains for a short budget, alternating runs with the metrics on and
off. Each side's figures are over the ``train/steps_per_sec`` of all its log windows after the
first of each run (compilation): the median, and the best window (the least disturbed by other
processes). Reported: both, their ratios (on / off; 1.0 = no cost) and the measured overhead in
percent from the medians, which on a shared machine is mostly noise.

So the second, tighter figure: the monitor's own work, timed in isolation in the same process:
``record`` (two list appends per step; the two ``perf_counter`` reads around the batch fetch are
counted in it) and ``window`` (statm RSS + CPU time, two percentiles, once per log window). The
bound ``(record + window / log_every) / step time`` is the overhead they can add per step.

``--smoke`` runs torch only (one round of 21 steps on 20 stdlib files). Run it alone with
``python -m benchmarks.resource_metrics [--quick] [--out FILE.json]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, pick

TITLE = "Resource metrics (sys/) on vs off: quickstart GPT steps/s"
BACKENDS = ("torch", "jax", "tensorflow")
LOG_EVERY = 10


def _window_rates(run_dir: Path) -> list[float]:
    """``train/steps_per_sec`` of each log window after the first (which includes compilation)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rates = [r["train/steps_per_sec"] for r in map(json.loads, lines) if "train/steps_per_sec" in r]
    return rates[1:] if len(rates) > 1 else rates


def monitor_costs(repeats: int = 20000) -> dict[str, float]:
    """Seconds per ``record`` call (with its two clock reads) and per ``window`` call of LOG_EVERY steps."""
    from crossframe.train.monitor import ResourceMonitor

    monitor = ResourceMonitor(device_peak_mb=lambda: None)
    clock = time.perf_counter
    start = clock()
    for _ in range(repeats):
        a = clock()
        b = clock()
        monitor.record(b - a, clock() - a)
    record = (clock() - start) / repeats
    windows = max(repeats // 100, 20)
    start = clock()
    for _ in range(windows):
        for _ in range(LOG_EVERY):
            monitor.record(1e-4, 1e-3)
        monitor.window()
    window = (clock() - start) / windows - LOG_EVERY * record
    return {"record_s": record, "window_s": max(window, 0.0)}


def measure_backend(backend: str, steps: int, rounds: int, max_files: int | None = None) -> dict[str, Any]:
    """Alternate on/off runs of the quickstart on ``backend``; returns the row for it."""
    import crossframe

    out = Path(tempfile.mkdtemp(prefix="crossframe-bench-sys-"))
    on: list[float] = []  # every window's steps/s, all rounds
    off: list[float] = []
    for i in range(rounds):
        order = (True, False) if i % 2 == 0 else (False, True)
        for enabled in order:
            name = f"{'on' if enabled else 'off'}-{i}"
            sets = [f"backend={backend}", "device=cpu", f"output_dir={out}", f"name={name}",
                    f"train.steps={steps}", "train.eval_every=0", f"train.log_every={LOG_EVERY}",
                    "text.max_eval_tokens=2048", f"train.resource_metrics={str(enabled).lower()}"]
            sets += [f"data.max_files={max_files}"] * bool(max_files)
            result = crossframe.run("quickstart", sets, quiet=True)
            (on if enabled else off).extend(_window_rates(result.run_dir))
    on_rate, off_rate = statistics.median(on), statistics.median(off)
    on_best, off_best = max(on), max(off)  # the least disturbed window of each side
    costs = monitor_costs()
    step_s = 1.0 / off_rate
    return {
        "backend": backend, "steps": steps, "rounds": rounds, "max_files": max_files,
        "on_steps_per_s": on_rate, "off_steps_per_s": off_rate, "on_off_ratio": on_rate / off_rate,
        "on_best_steps_per_s": on_best, "off_best_steps_per_s": off_best, "best_on_off_ratio": on_best / off_best,
        "measured_overhead_pct": 100.0 * (off_rate / on_rate - 1.0),
        "record_ns": costs["record_s"] * 1e9, "window_us": costs["window_s"] * 1e6,
        "overhead_bound_pct": 100.0 * (costs["record_s"] + costs["window_s"] / LOG_EVERY) / step_s,
    }


def run(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One subprocess per installed backend (see the module docstring)."""
    log = log or (lambda text: print(text, file=sys.stderr))
    steps = pick(120, 50, 2 * LOG_EVERY + 1, quick)
    rounds = pick(6, 3, 1, quick)
    max_files = pick(0, 200, 20, quick) or None  # a smaller corpus to tokenise in quick and smoke runs
    rows = []
    from benchmarks.common import smoke

    for backend in BACKENDS[:1] if smoke() else BACKENDS:  # smoke: torch only, to stay short
        if importlib.util.find_spec(backend) is None:
            log(f"resource_metrics: {backend} is not installed; skipped")
            continue
        code = ("import json, sys; from benchmarks.resource_metrics import measure_backend; "
                f"print(json.dumps(measure_backend({backend!r}, {steps}, {rounds}, {max_files})))")
        log(f"resource_metrics: {backend}, {rounds} rounds of {steps} steps on and off")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        if proc.returncode != 0:
            log(f"resource_metrics: {backend} failed:\n{proc.stderr[-2000:]}")
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One row per backend."""
    return markdown_table(
        ["backend", "steps/s on", "steps/s off", "on / off", "best window on / off", "measured overhead %",
         "record ns/step", "window us", "bound %/step"],
        [[r["backend"], f"{r['on_steps_per_s']:.2f}", f"{r['off_steps_per_s']:.2f}", f"{r['on_off_ratio']:.3f}",
          f"{r['best_on_off_ratio']:.3f}",
          f"{r['measured_overhead_pct']:+.2f}", f"{r['record_ns']:.0f}", f"{r['window_us']:.0f}",
          f"{r['overhead_bound_pct']:.4f}"] for r in rows])


if __name__ == "__main__":
    from benchmarks.__main__ import main

    sys.exit(main(["--only", "resource_metrics", *sys.argv[1:]]))
