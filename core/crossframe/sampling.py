"""Choosing the next token from logits, on the host, the same way for every backend.

Greedy when ``temperature == 0``; otherwise softmax at ``temperature``, then optionally top-k and
top-p (nucleus) filtering, then a draw from a seeded ``numpy`` generator, so a given seed gives
the same text on every backend whose logits agree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Sampler = Callable[[np.ndarray], np.ndarray]


def make_sampler(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0) -> Sampler:
    """A function ``logits [B, V] -> ids [B]`` with its own seeded random stream."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if top_k is not None and top_k < 1:
        raise ValueError("top_k must be >= 1")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError("top_p must be in (0, 1]")
    rng = np.random.default_rng(seed)

    def sample(logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64)
        if temperature == 0:
            return logits.argmax(axis=-1)
        probs = softmax(logits / temperature)
        if top_k is not None and top_k < probs.shape[-1]:
            keep = np.zeros(probs.shape, dtype=bool)  # exactly k per row (ties broken by index)
            np.put_along_axis(keep, np.argsort(-logits, axis=-1, kind="stable")[:, :top_k], True, axis=-1)
            probs = np.where(keep, probs, 0.0)
        if top_p is not None and top_p < 1.0:
            order = np.argsort(-probs, axis=-1)
            sorted_probs = np.take_along_axis(probs, order, axis=-1)
            sorted_probs /= sorted_probs.sum(axis=-1, keepdims=True)
            keep_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p  # always keeps the first
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, axis=-1)
            probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
        draws = rng.random((probs.shape[0], 1))
        return np.minimum((np.cumsum(probs, axis=-1) < draws).sum(axis=-1), probs.shape[-1] - 1)

    return sample


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def generate_by_recompute(predict: Callable[[np.ndarray], np.ndarray], prompt: np.ndarray, max_new_tokens: int,
                          sample: Sampler, max_seq_len: int) -> np.ndarray:
    """Autoregressive generation with a full forward pass per token (any backend's ``predict``).

    The context is the last ``max_seq_len`` tokens. Backends with a KV cache offer a faster
    ``generate``; this is the portable fallback and the reference it is tested against.
    """
    tokens = np.asarray(prompt, dtype=np.int64)
    for _ in range(max_new_tokens):
        logits = predict(tokens[:, -max_seq_len:])[:, -1, :]
        tokens = np.concatenate([tokens, sample(logits)[:, None].astype(np.int64)], axis=1)
    return tokens
