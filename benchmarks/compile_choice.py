"""``train.compile`` true against false, per backend on this machine: the figures behind ``train.compile: auto``.

For each installed backend, ``crossframe.run`` trains the quickstart MLP (digits, 64-128-64-10, batch 64,
AdamW, warmup + cosine) and a small CNN (digits, 8-16 conv, 32 dense, batch 64) with ``train.compile:
true`` and with ``false``, rounds alternating the order, in one process pinned to one core (torch: one
thread). Reported: the median *steady* steps/s of each (after the first ``log_every`` steps, so
compilation is outside the window: see :class:`benchmarks.common.RunClock`), their ratio compiled / not,
and the first-window seconds of each (where compilation shows: the slowest compiled run, since later
runs in one process may reuse torch.compile's caches; the median uncompiled one). jax always jit-compiles (the flag is
ignored), so its row is a control: a ratio near 1.0 is the noise of this machine.

Unless in smoke mode, each backend's MLP figures are cached as the measured choice that
``train.compile: auto`` reads on this machine (``<cache dir>/compile.json``, see
:mod:`crossframe.train.compile_choice`). In smoke mode torch's compiled side is not run (compiling
takes tens of seconds on a CPU). No timing is asserted anywhere.

Run it with ``python -m benchmarks --only compile_choice [--quick]``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import crossframe
from benchmarks.common import RunClock, markdown_table, median, mlp_run_config, pick, pin_to_one_core, smoke

TITLE = "train.compile true vs false (steady steps/s, one core): what train.compile: auto picks"
BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
DATA = {"name": "digits"}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("mlp 64-128-64-10", {"name": "mlp", "hidden": [128, 64], "activation": "relu"}),
    ("cnn 8-16 conv, 32 dense", {"name": "cnn", "channels": [8, 16], "hidden": 32, "activation": "relu"}),
]


def _round(backend: str, model: dict[str, Any], compiled: bool, steps: int, out: str, tag: str
           ) -> tuple[float, float]:
    """One run: (steady steps/s, seconds from the run's start to the first train log)."""
    clock = RunClock(f"clock-{tag}")
    cfg = mlp_run_config(backend, tag, out, DATA, model, steps, 64, clock.name, compile=compiled)
    with clock.installed():
        crossframe.run(cfg, quiet=True)
    steady = clock.end - clock.first_log
    rate = (steps - clock.log_every) / steady if steady > 0 else math.nan
    return rate, clock.first_log - clock.start


def _record(backend: str, compiled: float, eager: float, overhead: float, case: str) -> bool:
    from crossframe.train.compile_choice import choice_key, record_measurement
    from crossframe.train.runner import make_backend

    impl = make_backend(backend)
    return record_measurement(choice_key(backend, impl.framework_version(), "cpu"), compiled, eager,
                              f"benchmarks.compile_choice, {case}", overhead)


def run(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per backend and case: steady steps/s compiled and not, and their ratio."""
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    steps = pick(300, 100, 40, quick)
    rounds = pick(3, 2, 1, quick)
    undo, cores = pin_to_one_core()
    if "torch" in BACKENDS:
        import torch

        torch.set_num_threads(1)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="crossframe-bench-compile-") as out:
            for backend in BACKENDS:
                for n, (case, model) in enumerate(CASES[:1] if smoke() else CASES):
                    if smoke() and backend == "torch":
                        rows.append({"backend": backend, "case": case, "status": "smoke: torch.compile not timed"})
                        continue
                    rates: dict[bool, list[float]] = {True: [], False: []}
                    firsts: dict[bool, list[float]] = {True: [], False: []}
                    for r in range(rounds):
                        for compiled in (True, False) if r % 2 == 0 else (False, True):
                            rate, first = _round(backend, model, compiled, steps, out, f"{backend}-{n}-{compiled}-{r}")
                            rates[compiled].append(rate)
                            firsts[compiled].append(first)
                    on, off = median(rates[True]), median(rates[False])
                    row = {"backend": backend, "case": case, "steps": steps, "rounds": rounds, "cores": cores,
                           "compiled_steps_per_s": on, "eager_steps_per_s": off, "ratio": on / off,
                           # the run that compiled: later runs in this process may reuse torch.compile's caches
                           "compiled_first_window_s": max(firsts[True]),
                           "eager_first_window_s": median(firsts[False])}
                    if n == 0 and not smoke():
                        overhead = row["compiled_first_window_s"] - row["eager_first_window_s"]
                        row["cached_for_auto"] = _record(backend, on, off, overhead, case)
                    say(f"{backend} {case}: compiled {on:.0f} / not {off:.0f} steps/s = {on / off:.3f}")
                    rows.append(row)
    finally:
        undo()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as Markdown."""
    done = [r for r in rows if "ratio" in r]
    return markdown_table(
        ["backend", "case", "compile: true steps/s", "compile: false steps/s", "true / false",
         "first window s (true / false)"],
        [[r["backend"], r["case"], f"{r['compiled_steps_per_s']:.0f}", f"{r['eager_steps_per_s']:.0f}",
          f"{r['ratio']:.3f}", f"{r['compiled_first_window_s']:.1f} / {r['eager_first_window_s']:.1f}"]
         for r in done])


if __name__ == "__main__":
    print(table(run(quick="--quick" in sys.argv)))
