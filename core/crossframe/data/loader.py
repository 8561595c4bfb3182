"""A seeded, resumable batch order: the batch at a step is a pure function of (seed, epoch, step)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from crossframe.data.dataset import Dataset
from crossframe.data.sharding import shard_rows
from crossframe.errors import ConfigError

Batch = dict[str, np.ndarray]


class BatchLoader:
    """Training batches of ``batch_size`` examples, reshuffled every epoch.

    Epoch ``e`` visits the examples in ``permutation(seed, e)``; step ``s`` takes the
    ``s % steps_per_epoch``-th slice of epoch ``s // steps_per_epoch``. The last partial slice
    of an epoch is dropped so every step has the same shape (compiled steps never retrace).
    A resumed run therefore sees exactly the batches it would have seen.

    Sharding: ``batch_size`` is the *global* step batch; with ``world_size > 1`` process ``rank``
    gets its part of each of the ``micro_batches`` micro-batches of the sorted global batch (see
    :mod:`crossframe.data.sharding`), so W processes together train on exactly the rows one
    process would.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 micro_batches: int = 1) -> None:
        if batch_size > len(dataset):
            raise ConfigError(
                f"train.batch_size: {batch_size} (times train.grad_accum) exceeds the "
                f"{len(dataset)} training examples")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = len(dataset) // batch_size
        self.rank, self.world_size = rank, world_size
        self._rows = shard_rows(batch_size, micro_batches, rank, world_size) if world_size > 1 else None
        self._epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def epoch_of(self, step: int) -> int:
        """The epoch that step ``step`` (0-based) falls in."""
        return step // self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch`` (cached for the current epoch)."""
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._epoch = epoch
        return self._order

    def indices(self, step: int) -> np.ndarray:
        """Example indices of the batch consumed at 0-based ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.batch_size
        return self.order(epoch)[start:start + self.batch_size]

    def batch(self, step: int) -> Batch:
        """This process's batch at 0-based ``step``: ``{"x": ..., "y": ...}``."""
        idx = np.sort(self.indices(step))  # sorted gather is cache-friendly; order within a batch is irrelevant
        if self._rows is not None:
            idx = idx[self._rows]
        return {"x": self.dataset.x[idx], "y": self.dataset.y[idx]}

    def iterate(self, start: int, stop: int) -> Iterator[tuple[int, Batch]]:
        """``(step, batch)`` for 0-based steps ``start <= step < stop``."""
        for step in range(start, stop):
            yield step, self.batch(step)


def eval_batches(dataset: Dataset, batch_size: int) -> Iterator[Batch]:
    """The whole of ``dataset`` in order, in batches (the last one may be smaller)."""
    return dataset.eval_batches(batch_size)
