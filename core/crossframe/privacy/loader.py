"""The private training order: each step's batch carries its noise, and optionally is a Poisson sample.

:class:`PrivateLoader` wraps the run's :class:`~crossframe.data.loader.BatchLoader`. Its batch at a
step is the wrapped batch (or, with ``poisson``, every training example taken independently with
probability ``q = expected_batch / N``, padded to a fixed number of rows with weight-0 examples so the
compiled steps keep one shape), plus ``dp_noise/<name>`` arrays from :func:`step_noise`. Both are pure
functions of ``(seed, step)``, so a resumed run sees exactly what it would have seen.

With several workers every process draws the same Poisson sample and the same noise; it keeps its
own part of each micro-batch of the sample (``shard``, which the training floor passes in:
:func:`crossframe.data.sharding.shard_rows`, as the wrapped loader shards a shuffled batch) and the
whole noise, which its backend adds once, after the clipped sums are all-reduced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from crossframe.privacy.setup import NOISE_PREFIX, WEIGHT_KEY, PrivacySetup, step_noise

POISSON_STREAM = 0x5A3  # the Poisson sample's stream, apart from the noise and the shuffles


def poisson_capacity(expected: int, micro_batches: int) -> int:
    """Rows a Poisson batch is padded to: the mean plus six standard deviations, a multiple of the
    micro-batches (a larger sample, about one step in a billion, gets its own shape)."""
    rows = expected + math.ceil(6 * math.sqrt(expected)) + 1
    return -(-rows // micro_batches) * micro_batches


class PrivateLoader:
    """A loader whose batches carry DP-SGD noise (and a Poisson sample with ``setup.poisson``)."""

    def __init__(self, loader: Any, setup: PrivacySetup, shapes: Sequence[tuple[str, tuple[int, ...]]],
                 micro_batches: int = 1, *, parts: int = 1,
                 shard: Callable[[int], np.ndarray] | None = None) -> None:
        """``parts``: the equal parts each micro-batch splits into (workers times their replicas);
        ``shard(rows)``: this worker's positions within a global batch of ``rows`` (None: all of them)."""
        self.loader, self.setup, self.shapes = loader, setup, list(shapes)
        self.micro_batches = micro_batches
        self.shard = shard
        self.parts = micro_batches * parts
        self.capacity = poisson_capacity(setup.expected_batch, self.parts)

    def __getattr__(self, name: str) -> Any:  # steps_per_epoch, batch_size, dataset, ...
        return getattr(self.loader, name)

    def poisson_indices(self, step: int) -> np.ndarray:
        """The examples sampled at ``step``: each independently with probability ``sample_rate``."""
        n = len(self.loader.dataset)
        rng = np.random.default_rng([int(self.setup.seed) % 2**63, POISSON_STREAM, int(step)])
        return np.flatnonzero(rng.random(n) < self.setup.sample_rate)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The step's batch with ``dp_noise/<name>`` (and ``dp_weight`` with Poisson sampling)."""
        out = self._poisson_batch(step) if self.setup.poisson else dict(self.loader.batch(step))
        for name, noise in step_noise(self.setup, step, self.shapes).items():
            out[NOISE_PREFIX + name] = noise
        return out

    def _poisson_batch(self, step: int) -> dict[str, np.ndarray]:
        data = self.loader.dataset
        idx = self.poisson_indices(step)
        rows = max(self.capacity, -(-len(idx) // self.parts) * self.parts)
        pad = rows - len(idx)
        take = np.concatenate([idx, np.zeros(pad, np.int64)])  # padding repeats example 0 at weight 0
        weights = np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])
        if self.shard is not None:  # this worker's part of every micro-batch of the global sample
            mine = self.shard(rows)
            take, weights = take[mine], weights[mine]
        return {"x": data.x[take], "y": data.y[take], WEIGHT_KEY: weights}

    def iterate(self, start: int, stop: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(step, batch)`` for 0-based steps ``start <= step < stop``."""
        for step in range(start, stop):
            yield step, self.batch(step)


__all__ = ["PrivateLoader", "poisson_capacity"]
