"""A seeded, resumable, shardable order of packed blocks: the language-model twin of ``BatchLoader``.

The token stream (a store split, documents joined by EOT) is cut into the packed blocks of
:func:`~crossframe.text.sequences.packed_block_count`: block ``b`` is
``tokens[b * seq_len : b * seq_len + seq_len + 1]``.

Order. Epoch ``e`` visits the blocks in ``permutation(seed, e)``; step ``s`` takes the
``s % steps_per_epoch``-th run of ``batch_size`` blocks of epoch ``s // steps_per_epoch`` (the
``n_blocks % batch_size`` blocks left at an epoch's end are skipped that epoch; the permutation
changes which). The batch of a step is a pure function of (seed, epoch, step): a resumed run, or
another backend, sees exactly the same batches.

Sharding. ``batch_size`` is the *global* batch. With ``world_size`` ranks, rank ``r`` takes the
``r``-th of ``world_size`` equal contiguous parts of each of the ``micro_batches`` micro-batches of
the step's sorted global batch (see :mod:`crossframe.data.sharding`; ``batch_size`` must
divide by ``micro_batches * world_size``). The permutation holds each block once, so at every step the
ranks' blocks are disjoint and together are exactly the global batch: no overlap, no gap, and W
ranks train on the same blocks as one process with the same ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from crossframe.data.sharding import shard_rows
from crossframe.errors import ConfigError
from crossframe.text.sequences import Batch, gather_blocks, packed_block_count
from crossframe.text.store import TokenSplit


class LMBatchLoader:
    """Training batches ``{"x": [B, T], "y": [B, T]}`` of packed blocks, reshuffled every epoch."""

    def __init__(self, tokens: TokenSplit | np.ndarray, seq_len: int, batch_size: int, seed: int, *,
                 rank: int = 0, world_size: int = 1, micro_batches: int = 1, dtype: type = np.int32) -> None:
        self.tokens = tokens.tokens if isinstance(tokens, TokenSplit) else tokens
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank: must be in 0..{world_size - 1} for world_size {world_size} (got {rank})")
        if batch_size < 1 or batch_size % world_size:
            raise ConfigError(f"train.batch_size: {batch_size} must be a positive multiple of the "
                              f"world size {world_size} (it is the global batch)")
        self.n_blocks = packed_block_count(len(self.tokens), seq_len)
        if batch_size > self.n_blocks:
            raise ConfigError(f"train.batch_size: {batch_size} exceeds the {self.n_blocks} blocks of "
                              f"{seq_len + 1} tokens in {len(self.tokens)} training tokens")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size, self.dtype = rank, world_size, dtype
        self.local_batch_size = batch_size // world_size
        self._rows = shard_rows(batch_size, micro_batches, rank, world_size)
        self.steps_per_epoch = self.n_blocks // batch_size
        self._epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    @property
    def tokens_per_step(self) -> int:
        """Target tokens in one global batch: ``batch_size * seq_len``."""
        return self.batch_size * self.seq_len

    def epoch_of(self, step: int) -> int:
        """The epoch that 0-based ``step`` falls in."""
        return step // self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The block order of ``epoch`` (cached for the current epoch)."""
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            self._epoch = epoch
        return self._order

    def global_indices(self, step: int) -> np.ndarray:
        """Block indices of the whole (all ranks') batch at 0-based ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0 (got {step})")
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.batch_size
        return self.order(epoch)[start:start + self.batch_size]

    def indices(self, step: int) -> np.ndarray:
        """Block indices of this rank's part of the batch at ``step`` (ascending)."""
        return np.sort(self.global_indices(step))[self._rows]

    def batch(self, step: int) -> Batch:
        """This rank's batch at 0-based ``step``: ``{"x": [B/W, T], "y": [B/W, T]}``.

        Rows come in block order (a sorted read of the memmap; row order does not change a loss).
        """
        return gather_blocks(self.tokens, self.indices(step), self.seq_len, self.dtype)

    def iterate(self, start: int, stop: int) -> Iterator[tuple[int, Batch]]:
        """``(step, batch)`` for 0-based steps ``start <= step < stop``."""
        for step in range(start, stop):
            yield step, self.batch(step)


def eval_batches(tokens: TokenSplit | np.ndarray, seq_len: int, batch_size: int, *,
                 dtype: type = np.int32) -> Iterator[Batch]:
    """Every packed block of ``tokens`` in order, in batches (the last may be smaller).

    For a loss that scores each token once with full context, use
    :func:`~crossframe.text.sequences.sliding_windows` instead.
    """
    data = tokens.tokens if isinstance(tokens, TokenSplit) else tokens
    n_blocks = packed_block_count(len(data), seq_len)
    for lo in range(0, n_blocks, batch_size):
        yield gather_blocks(data, np.arange(lo, min(lo + batch_size, n_blocks)), seq_len, dtype)
