"""Saliency maps and integrated gradients, on the backend's :meth:`~crossframe.backend.Backend.input_gradients`.

Integrated gradients (Sundararajan et al., 2017) of output ``t`` at ``x`` against ``baseline``:
``(x - baseline) * mean over the path of grad f_t``, the path integral taken with the trapezoid rule
over ``steps`` intervals. They satisfy *completeness*: summed over the input they equal
``f_t(x) - f_t(baseline)``, up to the quadrature error, which :func:`integrated_gradients` reports
(``completeness_gap``) so a user can raise ``steps`` until it is small.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def saliency(backend: Any, state: Any, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``|d f_t / d x|`` per input position (the absolute gradient of each example's target output)."""
    return np.abs(backend.input_gradients(state, x, targets, "output"))


def integrated_gradients(backend: Any, state: Any, x: np.ndarray, targets: np.ndarray, steps: int = 64,
                         baseline: np.ndarray | None = None, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Attributions shaped like ``x`` and each example's completeness gap
    ``sum(attributions) - (f_t(x) - f_t(baseline))``."""
    x = np.asarray(x, np.float32)
    base = np.zeros_like(x) if baseline is None else np.broadcast_to(np.asarray(baseline, np.float32), x.shape)
    alphas = np.linspace(0.0, 1.0, steps + 1)
    weights = np.full(steps + 1, 1.0 / steps)
    weights[[0, -1]] = 0.5 / steps  # trapezoid rule
    avg = np.zeros(x.shape, np.float64)
    for i in range(len(x)):  # one example's path in batches of points
        path = (base[i][None] + alphas.reshape(-1, *([1] * (x.ndim - 1))) * (x[i] - base[i])[None]).astype(np.float32)
        tgt = np.full(len(path), targets[i])
        grads = np.concatenate([backend.input_gradients(state, path[j:j + batch_size], tgt[j:j + batch_size], "output")
                                for j in range(0, len(path), batch_size)])
        avg[i] = np.tensordot(weights, grads.astype(np.float64), axes=1)
    attributions = (x - base).astype(np.float64) * avg
    rows = np.arange(len(x))
    f_x = backend.predict(state, x)[rows, targets].astype(np.float64)
    f_b = backend.predict(state, np.ascontiguousarray(base))[rows, targets].astype(np.float64)
    gap = attributions.reshape(len(x), -1).sum(axis=1) - (f_x - f_b)
    return attributions, gap
