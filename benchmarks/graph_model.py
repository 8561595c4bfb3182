"""Lowered graphs against the hand-written models: the same architecture, two ways, one run.

For each installed backend, ``crossframe.run`` trains the hand-written ``mlp`` (and ``cnn``) and the
same architecture rebuilt as neutral layers by :mod:`crossframe.nn.presets` (``model: {name: graph}``:
the same canonical table, so the same initial weights), with the same data, batch order, AdamW and
schedule, side by side in one process.
The timed window is the training loop (``on_run_start`` to the last train log, see
:class:`benchmarks.common.RunClock`); reported is the median *steady* rate (after the first
``log_every`` steps, so compilation is outside) and the ratio graph / hand-written (1.0: the lowering
costs nothing). Rounds alternate the order. The process is pinned to one core; torch runs one thread.
No timing is asserted anywhere.

Run it alone with ``python -m benchmarks.graph_model [--quick]``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import crossframe
from benchmarks.common import RunClock, markdown_table, median, mlp_run_config, pick, pin_to_one_core, smoke, spread
from crossframe.nn.presets import cnn_layers, mlp_layers

TITLE = "Lowered graphs vs hand-written models (steps/s, one core)"
BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
DATA = {"name": "digits"}

MLP = {"hidden": [128, 64], "activation": "relu"}
CNN = {"channels": [16, 32], "kernel_size": 3, "hidden": 64, "activation": "relu"}
#: (case, hand-written model, the same model rebuilt as a graph by crossframe.nn.presets: same table, same weights)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("mlp 64-128-64-10", {"name": "mlp", **MLP}, {"name": "graph", "layers": mlp_layers(MLP)}),
    ("cnn 16-32 conv, 64 dense", {"name": "cnn", **CNN}, {"name": "graph", "layers": cnn_layers(CNN)}),
]


def _rate(backend: str, model: dict[str, Any], steps: int, out: str, tag: str) -> float:
    clock = RunClock(f"clock-{tag}")
    cfg = mlp_run_config(backend, tag, out, DATA, model, steps, 64, clock.name)
    with clock.installed():
        crossframe.run(cfg, quiet=True)
    steady = clock.end - clock.first_log
    return (steps - clock.log_every) / steady if steady > 0 else math.nan


def run(quick: bool = False, log: Callable[[str], None] | None = None, threads: int = 1) -> list[dict[str, Any]]:
    """One row per backend and case: median steady steps/s of each side and their ratio."""
    say = log or (lambda text: print(text, file=sys.stderr))
    steps = pick(400, 100, 40, quick)
    rounds = pick(5, 2, 1, quick)
    undo, cores = pin_to_one_core()
    if "torch" in BACKENDS and threads:
        import torch

        torch.set_num_threads(threads)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="crossframe-bench-graph-") as out:
            for backend in BACKENDS:
                for case, hand, graph in (CASES[:1] if smoke() else CASES):
                    rates: dict[str, list[float]] = {"hand": [], "graph": []}
                    for r in range(rounds):
                        order = [("hand", hand), ("graph", graph)]
                        for side, model in order if r % 2 == 0 else order[::-1]:
                            rates[side].append(_rate(backend, model, steps, out, f"{backend}-{side}-{r}"))
                    hand_rate, graph_rate = median(rates["hand"]), median(rates["graph"])
                    rows.append({"backend": backend, "case": case, "steps": steps, "rounds": rounds, "cores": cores,
                                 "hand_steps_per_s": hand_rate, "graph_steps_per_s": graph_rate,
                                 "ratio": graph_rate / hand_rate, "spread_hand": spread(rates["hand"]),
                                 "spread_graph": spread(rates["graph"])})
                    say(f"{backend} {case}: graph {graph_rate:.0f} / hand {hand_rate:.0f} steps/s "
                        f"= {graph_rate / hand_rate:.3f}")
    finally:
        undo()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as Markdown."""
    return markdown_table(["backend", "case", "hand-written steps/s", "graph steps/s", "graph / hand", "spread"],
                          [[r["backend"], r["case"], f"{r['hand_steps_per_s']:.0f}", f"{r['graph_steps_per_s']:.0f}",
                            f"{r['ratio']:.3f}", f"{max(r['spread_hand'], r['spread_graph']):.2f}"] for r in rows])


if __name__ == "__main__":
    quick_run = "--quick" in sys.argv
    print(table(run(quick=quick_run)))
