"""Generation from a lowered graph with a key/value cache per attention layer (jax).

The prompt runs through one jitted call (compiled per prompt length), each new token through another
(compiled once): both are one ``jax.jit`` function, kept on the state's program, that takes the caches as a
donated argument and writes them with ``lax.dynamic_update_slice``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crossframe.nn.decoding import generate_with_cache
from crossframe_jax import devices
from crossframe_jax.lowering import make_cached_forward, new_cache


def is_graph_lm(spec: Any) -> bool:
    """Whether ``spec`` is a graph that reads token ids (a decoder language model)."""
    return spec.graph is not None and spec.graph.takes_ids


def cached_step(state: Any) -> Callable[..., Any]:
    """The jitted ``run(params, ids, cache, start) -> (last logits [B, vocab] float32, cache)`` of the state's
    graph, built once per program (compiled once per ``ids`` shape: the prompt's, then ``[B, 1]``)."""
    program = state.program
    if "step" not in program.generation:
        dtype = devices.compute_dtype(state.setup.precision, training=False)
        forward = make_cached_forward(state.setup.spec.graph, dtype)
        traces = program.traces

        def run(params: Any, ids: jax.Array, cache: dict, start: jax.Array) -> tuple[jax.Array, dict]:
            traces["generate"] = traces.get("generate", 0) + 1  # while tracing only
            logits, cache = forward(params, ids, cache, start)
            return logits[:, -1].astype(jnp.float32), cache

        program.generation["step"] = jax.jit(run, donate_argnums=(2,))
    return program.generation["step"]


def graph_generate(backend: Any, state: Any, prompt: np.ndarray, max_new_tokens: int,
                   sample: Callable[[np.ndarray], np.ndarray], stop_ids: Collection[int] = ()) -> np.ndarray:
    """Extend ``prompt`` ``[B, T0]`` by ``max_new_tokens`` with the graph's KV cache, in the state's precision;
    see :func:`crossframe.nn.decoding.generate_with_cache`."""
    graph = state.setup.spec.graph
    dtype = devices.compute_dtype(state.setup.precision, training=False)
    run = cached_step(state)
    b = int(np.asarray(prompt).shape[0])
    holder = {"cache": new_cache(graph, b, dtype or jnp.float32)}

    def step(ids: np.ndarray, start: int) -> np.ndarray:
        logits, holder["cache"] = run(state.params, ids.astype(np.int32), holder["cache"], np.int32(start))
        return np.asarray(logits)

    def full(ids: np.ndarray) -> np.ndarray:
        return backend.predict(state, ids)[:, -1]

    return generate_with_cache(step, full, prompt, max_new_tokens, sample, int(graph.input_shape[0]), stop_ids)
