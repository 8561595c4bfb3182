"""Generation with a key/value cache, the host side shared by every backend.

A backend supplies two functions over its lowered graph: ``step(ids, start)`` runs ``ids`` ``[B, n]`` at
positions ``start..start+n-1`` against its cache (filling it) and returns the last position's logits
``[B, vocab]``; ``full(ids)`` runs a window ``[B, window]`` without a cache. The loop runs the prompt
once, then one token at a time; past the window each token is computed from the last ``window``
tokens without the cache (the sliding window of :func:`crossframe.sampling.generate_by_recompute`,
which it equals token for token).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np

Step = Callable[[np.ndarray, int], np.ndarray]
Full = Callable[[np.ndarray], np.ndarray]


def generate_with_cache(step: Step, full: Full, prompt: np.ndarray, max_new_tokens: int,
                        sample: Callable[[np.ndarray], np.ndarray], window: int,
                        stop_ids: Collection[int] = ()) -> np.ndarray:
    """Extend ``prompt`` (int ids ``[B, T0]``) by up to ``max_new_tokens``: ``[B, T0 + n]``.

    Stops early once every row has produced one of ``stop_ids`` (that token is kept; rows that
    stopped earlier are padded with their stop token).
    """
    prompt = np.asarray(prompt, dtype=np.int64)
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError(f"generate: prompt must be int ids [B, T0] with T0 >= 1, got shape {prompt.shape}")
    b, t0 = prompt.shape
    seq = np.zeros((b, t0 + max_new_tokens), np.int64)
    seq[:, :t0] = prompt
    done = np.zeros(b, bool)
    stops = np.asarray(sorted(stop_ids), np.int64)
    cur = t0
    for i in range(max_new_tokens):
        if cur > window:
            logits = full(seq[:, cur - window:cur])
        elif i == 0:
            logits = step(seq[:, :cur], 0)
        else:
            logits = step(seq[:, cur - 1:cur], cur - 1)
        ids = np.asarray(sample(np.asarray(logits, np.float32)), np.int64).reshape(b)
        if stops.size:
            ids = np.where(done, seq[:, cur - 1], ids)
            done |= np.isin(ids, stops)
        seq[:, cur] = ids
        cur += 1
        if stops.size and done.all():
            break
    return seq[:, :cur]
