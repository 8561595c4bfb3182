"""Permutation importance: how much a score drops when one input feature's values are shuffled.

Neutral: it only calls ``predict``, so it works on any backend (an inference-only one too). For each
feature (an input position: a column of tabular data, a pixel-channel of an image), the feature's
values are permuted across the examples ``repeats`` times with a seeded generator, and the importance
is the baseline score minus the mean permuted score. Scores: accuracy (classification) or negative
mean squared error (regression), so a larger importance always means the model leans on it more.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def score(outputs: np.ndarray, y: np.ndarray, task: str) -> float:
    """Accuracy of ``argmax(outputs)`` (classification) or ``-mean((outputs - y)^2)`` (regression)."""
    if task == "classification":
        return float(np.mean(np.argmax(outputs, axis=1) == y))
    return -float(np.mean((outputs - np.asarray(y, np.float64).reshape(outputs.shape)) ** 2))


def permutation_importance(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, task: str,
                           repeats: int = 5, seed: int = 0, batch_size: int = 4096) -> tuple[np.ndarray, float]:
    """Importance per input position (shaped like one example) and the baseline score."""
    def scored(inputs: np.ndarray) -> float:
        outs = np.concatenate([predict(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])
        return score(outs, y, task)

    baseline = scored(x)
    flat = x.reshape(len(x), -1)
    importance = np.zeros(flat.shape[1])
    rng = np.random.default_rng([seed, 0x9E])
    for j in range(flat.shape[1]):
        drops = []
        for _ in range(repeats):
            shuffled = flat.copy()
            shuffled[:, j] = flat[rng.permutation(len(flat)), j]
            drops.append(baseline - scored(shuffled.reshape(x.shape)))
        importance[j] = float(np.mean(drops))
    return importance.reshape(x.shape[1:]), baseline
