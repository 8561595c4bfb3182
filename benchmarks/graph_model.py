"""The built-in ``mlp``, now a lowered graph of neutral layers, against a hand-written native loop.

Since ``mlp`` and ``cnn`` are graphs (:mod:`crossframe.nn.presets`), there is no hand-written crossframe
model left to race: the bar is the best hand-written loop a user would write in each framework. For each
installed backend this benchmark runs, in this one process, the quickstart MLP case of that framework's
step benchmark (:mod:`benchmarks.torch_step`, :mod:`benchmarks.jax_step`, :mod:`benchmarks.tensorflow_step`):
``crossframe.run`` with ``model: {name: mlp}`` (the graph lowering) against the plain native loop, the same
data, batch order, AdamW, schedule and initial weights, rounds interleaved; the step modules document what
each side's timed window holds and check that both sides did the same work. Reported: median steps/s of each
side and the ratio crossframe / native (the issue's bar: at least 0.97), and the ratio to the best native
loop (on tensorflow, ``tensorflow_step`` also times a loop that calls the traced concrete function).
The process is pinned to one core; torch runs one thread. No timing is asserted anywhere.

Run it alone with ``python -m benchmarks --only graph_model [--quick]`` (or ``python -m benchmarks.graph_model``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import RunClock, markdown_table, pin_to_one_core, smoke

TITLE = "Built-in mlp (a lowered graph) vs a hand-written native loop (steps/s, one core)"
BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]


def _prepare(backend: str) -> dict[str, Any]:
    """What the framework's own step benchmark sets before its cases; the extra arguments of its ``bench_case``."""
    warmup_s = 0.0 if smoke() else 1.0
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
        return {"warmup_s": warmup_s}
    if backend == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # every native round retraces the same code on purpose
        return {"warmup_s": warmup_s}
    return {}


def bench_backend(backend: str, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """The quickstart MLP case of ``benchmarks.<backend>_step``: crossframe's ``mlp`` vs the native loop."""
    module = importlib.import_module(f"benchmarks.{backend}_step")
    case = module.cases(quick)[0]
    extra = _prepare(backend)
    with RunClock(module.CLOCK).installed() as clock, tempfile.TemporaryDirectory(prefix="crossframe-graph-") as tmp:
        row = module.bench_case(case, clock, Path(tmp), log, **extra)
    # the best hand-written loop: tensorflow_step also times one that calls the traced concrete function
    best = max(row["native_steps_per_s"], row.get("native_concrete_steps_per_s", 0.0))
    return {"backend": backend, "case": row["case"], "description": row["description"],
            "steps_per_round": row["steps_per_round"], "rounds": row["rounds"],
            "crossframe_steps_per_s": row["crossframe_steps_per_s"], "native_steps_per_s": row["native_steps_per_s"],
            "best_native_steps_per_s": best, "ratio": row["ratio"],
            "ratio_vs_best": row["crossframe_steps_per_s"] / best, "crossframe_spread": row["crossframe_spread"],
            "native_spread": row["native_spread"]}


def run(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per installed backend: median steps/s of each side and their ratio."""
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    undo, cores = pin_to_one_core()
    rows = []
    try:
        for backend in BACKENDS:
            row = {**bench_backend(backend, quick, say), "cores": cores}
            say(f"{backend} mlp: crossframe {row['crossframe_steps_per_s']:.0f} / native "
                f"{row['native_steps_per_s']:.0f} steps/s = {row['ratio']:.3f}")
            rows.append(row)
    finally:
        undo()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as Markdown."""
    return markdown_table(
        ["backend", "case", "steps x rounds", "crossframe mlp steps/s", "native loop steps/s", "crossframe / native",
         "best native steps/s", "crossframe / best", "spread cf / native"],
        [[r["backend"], r["description"], f"{r['steps_per_round']} x {r['rounds']}",
          f"{r['crossframe_steps_per_s']:.0f}", f"{r['native_steps_per_s']:.0f}", f"{r['ratio']:.3f}",
          f"{r['best_native_steps_per_s']:.0f}", f"{r['ratio_vs_best']:.3f}",
          f"{r['crossframe_spread']:.0%} / {r['native_spread']:.0%}"] for r in rows])


if __name__ == "__main__":
    print(table(run(quick="--quick" in sys.argv)))
