"""What a backend's DP-SGD step needs, and the noise it adds: drawn here, in numpy, from the run's seed.

The noise of optimizer step ``s`` is a pure function of ``(seed, s)``: standard normals drawn from
``numpy.random.default_rng([seed, NOISE_STREAM, s])`` in the canonical parameter table's order and
canonical layouts, times ``noise_multiplier * max_grad_norm``. Every backend adds these same numbers
to its sum of clipped per-example gradients, so the three backends train the same DP model from the
same seed, and a resumed run draws exactly the noise it would have drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: batch keys the private loader adds: ``dp_noise/<canonical name>`` (float32, canonical layout)
NOISE_PREFIX = "dp_noise/"
#: per-example weights ``[rows]`` (1 for a sampled example, 0 for Poisson padding)
WEIGHT_KEY = "dp_weight"
NOISE_STREAM = 0x0D9  # keeps the noise stream apart from the data order's streams
CLIP_EPS = 1e-6  # per-example scale min(1, C / (norm + CLIP_EPS)), as global clipping


@dataclass(frozen=True)
class PrivacySetup:
    """DP-SGD settings for :class:`crossframe.backend.TrainSetup` (``train.privacy``, resolved).

    ``expected_batch`` divides the noisy sum of clipped gradients: the step's rows (batch_size *
    grad_accum), which with Poisson sampling is the *expected* sample size ``q * N``.
    """

    noise_multiplier: float
    max_grad_norm: float
    expected_batch: int
    seed: int = 0
    delta: float = 1e-5
    sample_rate: float = 0.0  # q = expected_batch / training examples
    accountant: str = "rdp"
    poisson: bool = False

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise added to the *sum* of clipped gradients: sigma * C."""
        return self.noise_multiplier * self.max_grad_norm


def step_noise(setup: PrivacySetup, step: int, shapes: Sequence[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """The noise of 0-based optimizer ``step``: ``{name: N(0, (sigma C)^2) float32 array}`` in table order."""
    rng = np.random.default_rng([int(setup.seed) % 2**63, NOISE_STREAM, int(step)])
    std = np.float32(setup.noise_std)
    return {name: rng.standard_normal(shape, dtype=np.float32) * std for name, shape in shapes}


def batch_noise(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The ``dp_noise/<name>`` arrays of a private batch, by canonical name."""
    return {k[len(NOISE_PREFIX):]: v for k, v in batch.items() if k.startswith(NOISE_PREFIX)}


def batch_weights(batch: Mapping[str, Any]) -> np.ndarray:
    """The batch's per-example weights (ones when the batch has no Poisson padding)."""
    weights = batch.get(WEIGHT_KEY)
    return np.ones(len(batch["y"]), np.float32) if weights is None else np.asarray(weights, np.float32)


def clip_factors(norms: np.ndarray, max_grad_norm: float) -> np.ndarray:
    """``min(1, C / (norm + CLIP_EPS))`` per example: the numpy reference every backend matches."""
    return np.minimum(1.0, max_grad_norm / (np.asarray(norms) + CLIP_EPS))


__all__ = ["CLIP_EPS", "NOISE_PREFIX", "WEIGHT_KEY", "PrivacySetup", "batch_noise", "batch_weights", "clip_factors",
           "step_noise"]
