"""Training orders other than a plain shuffle: ``train.sampler: oversample``."""

from __future__ import annotations

import numpy as np

from crossframe.data.dataset import Dataset
from crossframe.data.loader import BatchLoader


class OversampleLoader(BatchLoader):
    """Every class drawn as often as the largest one, in a seeded order that resumes exactly.

    Epoch ``e`` holds ``K * max_count`` examples: each class's examples, permuted, repeated and
    cut to ``max_count`` (so within a class every example appears before any repeats), then all
    shuffled together. Both draws come from ``default_rng([seed, e, 0x05])``: the order of a step
    is a pure function of (seed, step), as for :class:`BatchLoader`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, **shard: int) -> None:
        if dataset.task != "classification":
            from crossframe.errors import ConfigError

            raise ConfigError(f"train.sampler: 'oversample' needs classification data; this dataset is {dataset.task}")
        labels = dataset.y
        self._members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self._per_class = max(len(m) for m in self._members)
        super().__init__(dataset, batch_size, seed, **shard)
        self.steps_per_epoch = self.epoch_size // batch_size

    @property
    def epoch_size(self) -> int:
        """Examples per (balanced) epoch: classes times the largest class's count."""
        return len(self._members) * self._per_class

    def order(self, epoch: int) -> np.ndarray:
        """The balanced example order of ``epoch`` (cached for the current epoch)."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch, 0x05])
            parts = []
            for members in self._members:
                reps = -(-self._per_class // len(members))
                tiled = np.concatenate([rng.permutation(members) for _ in range(reps)])
                parts.append(tiled[:self._per_class])
            self._order = rng.permutation(np.concatenate(parts))
            self._epoch = epoch
        return self._order
