"""Lowering cost: how long each backend takes to turn a graph of neutral layers into its native model.

The issue's bar: lowering happens once, before the first step, and a graph of 50 layers lowers in under a
second. Two graphs:

``dense-50``
    flatten, then 24 x (dense 64, GELU), then dense 10: 50 layers (8x8x1 inputs, 10 classes).
``gpt-12``
    the built-in ``gpt`` with 12 blocks (width 64, 4 heads, vocabulary 256, 64 positions): 76 leaf layers
    (tables, norms, attention, dense, activations) in 12 repeated blocks.

For each installed backend, timed in this process (median of the repeats, after one untimed run that pays
the imports): ``graph_s``, building the neutral graph and its spec from the config (``build_model``);
``lower_s``, ``backend.inference_state(spec, weights)`` (lowering plus loading the canonical weights onto
the device: what a run does before its first step); ``first_call_s``, the first ``predict`` on a batch of 8
(torch runs eagerly; jax compiles with XLA; tensorflow traces its ``tf.function``). The native baseline for
``dense-50`` is the same model written by hand in the framework (``torch.nn.Sequential``; jax parameters put
on the device and a jitted function; ``tf.Variable`` s and a ``tf.function``), loaded with the same weights:
its build and first call are timed the same way. No timing is asserted anywhere.

Run it alone with ``python -m benchmarks --only lowering``.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, smoke

TITLE = "Lowering a graph to each framework's native model (seconds, before the first step)"
BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
DENSE_BLOCKS = 24
WIDTH = 64


def graphs() -> dict[str, tuple[str, dict[str, Any], Any]]:
    """name -> (model name, params, DataInfo) of the two graphs."""
    from crossframe.data.dataset import DataInfo

    dense = ["flatten", *[layer for _ in range(DENSE_BLOCKS) for layer in ({"dense": WIDTH}, "gelu")], {"dense": 10}]
    gpt = {"n_layer": 12, "n_head": 4, "d_model": 64, "max_seq_len": 64}
    return {"dense-50": ("graph", {"layers": dense}, DataInfo("classification", (8, 8, 1), 10)),
            "gpt-12": ("gpt", gpt, DataInfo("language_modeling", (64,), 256))}


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The median wall time of ``repeats`` calls of ``fn`` and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _batch(info: Any) -> np.ndarray:
    rng = np.random.default_rng(0)
    if info.task == "language_modeling":
        return rng.integers(0, info.num_outputs, size=(8, *info.input_shape)).astype(np.int64)
    return rng.normal(size=(8, *info.input_shape)).astype(np.float32)


# --------------------------------------------------------------------------- native baselines of dense-50


def _native_torch(weights: dict[str, np.ndarray], names: list[str]) -> Callable[[np.ndarray], Any]:
    import torch
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    for i, name in enumerate(names):
        kernel = weights[f"{name}.weight"]
        linear = nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T))
            linear.bias.copy_(torch.from_numpy(weights[f"{name}.bias"]))
        layers.append(linear)
        if i < len(names) - 1:
            layers.append(nn.GELU())
    model = nn.Sequential(*layers).eval()

    def call(x: np.ndarray) -> Any:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return call


def _native_jax(weights: dict[str, np.ndarray], names: list[str]) -> Callable[[np.ndarray], Any]:
    import jax

    params = jax.device_put({k: np.asarray(v) for k, v in weights.items()}, jax.devices("cpu")[0])

    @jax.jit
    def forward(p: dict[str, Any], x: Any) -> Any:
        h = x.reshape(x.shape[0], -1)
        for i, name in enumerate(names):
            h = h @ p[f"{name}.weight"] + p[f"{name}.bias"]
            if i < len(names) - 1:
                h = jax.nn.gelu(h, approximate=False)
        return h

    return lambda x: np.asarray(forward(params, x))


def _native_tensorflow(weights: dict[str, np.ndarray], names: list[str]) -> Callable[[np.ndarray], Any]:
    import tensorflow as tf

    variables = {k: tf.Variable(v) for k, v in weights.items()}

    @tf.function
    def forward(x: Any) -> Any:
        h = tf.reshape(x, (tf.shape(x)[0], -1))
        for i, name in enumerate(names):
            h = h @ variables[f"{name}.weight"] + variables[f"{name}.bias"]
            if i < len(names) - 1:
                h = tf.nn.gelu(h, approximate=False)
        return h

    return lambda x: forward(x).numpy()


NATIVE = {"torch": _native_torch, "jax": _native_jax, "tensorflow": _native_tensorflow}


# --------------------------------------------------------------------------- the benchmark


def bench(backend_name: str, graph_name: str, repeats: int) -> dict[str, Any]:
    """One backend, one graph: the seconds of each phase, crossframe's and (dense-50) the native model's."""
    from crossframe.models import build_model
    from crossframe.train.runner import make_backend

    model, params, info = graphs()[graph_name]
    backend = make_backend(backend_name)
    build_model(model, params, info)  # untimed: imports and caches of the first build
    graph_s, spec = _median_seconds(lambda: build_model(model, params, info), repeats)
    weights = spec.init(seed=0)
    backend.inference_state(spec, weights)  # untimed: the framework's imports and first allocations
    lower_s, state = _median_seconds(lambda: backend.inference_state(spec, weights), repeats)
    x = _batch(info)
    start = time.perf_counter()
    ours = backend.predict(state, x)
    first_call_s = time.perf_counter() - start
    row: dict[str, Any] = {"backend": backend_name, "graph": graph_name, "layers": len(spec.graph.nodes()),
                           "parameters": int(sum(w.size for w in weights.values())), "graph_s": graph_s,
                           "lower_s": lower_s, "first_call_s": first_call_s}
    if graph_name == "dense-50":
        names = [n.path for n in spec.graph.nodes() if n.kind == "dense"]
        native_s, call = _median_seconds(lambda: NATIVE[backend_name](weights, names), repeats)
        start = time.perf_counter()
        theirs = call(x)
        row.update(native_build_s=native_s, native_first_call_s=time.perf_counter() - start,
                   lower_over_native=lower_s / native_s,
                   max_abs_diff=float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(theirs)))))
    return row


def run(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per installed backend and graph."""
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    repeats = 1 if smoke() else (3 if quick else 5)
    rows = []
    names = ["dense-50"] if smoke() else list(graphs())  # CI's smoke run: the first graph only
    for backend in BACKENDS:
        for name in names:
            row = bench(backend, name, repeats)
            say(f"{backend} {name}: {row['layers']} layers lower in {row['lower_s']:.3f} s "
                f"(graph {row['graph_s']:.3f} s, first call {row['first_call_s']:.2f} s)")
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as Markdown."""
    def native(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "-"

    return markdown_table(
        ["backend", "graph", "layers", "graph build s", "lowering s", "native build s", "first call s",
         "native first call s"],
        [[r["backend"], r["graph"], str(r["layers"]), f"{r['graph_s']:.3f}", f"{r['lower_s']:.3f}",
          native(r, "native_build_s"), f"{r['first_call_s']:.2f}", native(r, "native_first_call_s")]
         for r in rows])


if __name__ == "__main__":
    print(table(run(quick="--quick" in sys.argv)))
