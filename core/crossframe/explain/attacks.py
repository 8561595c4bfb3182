"""Accuracy under L-infinity attacks: FGSM and PGD on :meth:`~crossframe.backend.Backend.input_gradients`.

- FGSM (Goodfellow et al., 2015): ``x' = clip(x + eps * sign(grad_x loss))``;
- PGD (Madry et al., 2018): ``steps`` steps of size ``alpha`` (default ``2.5 * eps / steps``) from
  ``x``, each projected back into the ``eps`` ball around ``x``.

``clip`` keeps inputs within the range the evaluation data spans (``[min(x), max(x)]``), so an image
scaled to ``[0, 1]`` stays a valid image. Deterministic: no random start.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crossframe.errors import ConfigError

ATTACKS = ("fgsm", "pgd")


def attack(backend: Any, state: Any, x: np.ndarray, y: np.ndarray, method: str, eps: float, steps: int = 10,
           alpha: float | None = None, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Adversarial versions of ``x`` (float32) for labels ``y``."""
    if method not in ATTACKS:
        raise ConfigError(f"--attack: '{method}' is not an attack; use one of {', '.join(ATTACKS)}")
    if eps < 0:
        raise ConfigError(f"--eps: must be >= 0, got {eps}")
    lo, hi = bounds if bounds is not None else (-np.inf, np.inf)
    x = np.asarray(x, np.float32)
    if method == "fgsm":
        grad = backend.input_gradients(state, x, y, "loss")
        return np.clip(x + eps * np.sign(grad), lo, hi).astype(np.float32)
    if steps < 1:
        raise ConfigError(f"--attack-steps: must be >= 1, got {steps}")
    step = alpha if alpha is not None else 2.5 * eps / steps
    adv = x.copy()
    for _ in range(steps):
        grad = backend.input_gradients(state, adv, y, "loss")
        adv = np.clip(adv + step * np.sign(grad), x - eps, x + eps)
        adv = np.clip(adv, lo, hi).astype(np.float32)
    return adv


def robust_accuracy(backend: Any, state: Any, x: np.ndarray, y: np.ndarray, method: str, eps: float,
                    steps: int = 10, batch_size: int = 512) -> dict[str, float]:
    """Clean and attacked accuracy over ``(x, y)``: ``{"accuracy": ..., "<method>_accuracy": ...}``."""
    bounds = (float(np.min(x)), float(np.max(x)))
    clean = attacked = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        clean += int(np.sum(np.argmax(backend.predict(state, xb), axis=1) == yb))
        adv = attack(backend, state, xb, yb, method, eps, steps, bounds=bounds)
        attacked += int(np.sum(np.argmax(backend.predict(state, adv), axis=1) == yb))
    return {"accuracy": clean / len(x), f"{method}_accuracy": attacked / len(x)}
