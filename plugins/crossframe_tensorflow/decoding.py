"""Generation from a lowered graph with a key/value cache per attention layer (tensorflow).

The prompt runs through one ``tf.function`` trace (per prompt length), each new token through another
(traced once): the caches go in and come back as tensors ``[B, kv_heads, T_max, head_dim]``, with the new
positions written by a padded select.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from crossframe.errors import CapabilityError
from crossframe.nn.decoding import generate_with_cache
from crossframe_tensorflow.devices import tf


def is_graph_lm(spec: Any) -> bool:
    """Whether ``spec`` is a graph that reads token ids (a decoder language model)."""
    return spec.graph is not None and spec.graph.takes_ids


def graph_generate(backend: Any, state: Any, prompt: np.ndarray, max_new_tokens: int,
                   sample: Callable[[np.ndarray], np.ndarray], stop_ids: Collection[int] = ()) -> np.ndarray:
    """Extend ``prompt`` ``[B, T0]`` by ``max_new_tokens`` with the graph's KV cache, in the state's precision;
    see :func:`crossframe.nn.decoding.generate_with_cache`."""
    spec = state.setup.spec
    if not is_graph_lm(spec):
        raise CapabilityError(f"generate: model '{spec.name}' does not read token ids; only a language model "
                              f"generates")
    window = int(spec.graph.input_shape[0])
    model, dtype = state.model, state.dtype

    @tf.function
    def run(ids: tf.Tensor, cache: dict, start: tf.Tensor) -> tuple[tf.Tensor, dict]:
        logits, cache = model.call_cached(ids, cache, start, dtype)
        return logits[:, -1], cache

    b = int(np.asarray(prompt).shape[0])
    with tf.device(state.device):
        holder = {"cache": model.new_cache(b, dtype)}

    def step(ids: np.ndarray, start: int) -> np.ndarray:
        with tf.device(state.device):
            logits, holder["cache"] = run(tf.constant(ids, tf.int32), holder["cache"], tf.constant(start, tf.int32))
        return logits.numpy()

    def full(ids: np.ndarray) -> np.ndarray:
        return backend.predict(state, ids)[:, -1]

    return generate_with_cache(step, full, prompt, max_new_tokens, sample, window, stop_ids)
