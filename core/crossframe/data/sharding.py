"""Which rows of a global step batch belong to which process.

A step's global batch holds ``micro_batches`` (``train.grad_accum``) micro-batches one after another;
each micro-batch holds ``world_size`` equal contiguous parts, one per process (a process's part is
``batch_size * local_replicas`` rows). Process ``r`` takes part ``r`` of every micro-batch, in order,
so its ``k``-th micro-batch is exactly its part of the single-process ``k``-th micro-batch: W processes
with per-replica batch ``b`` see the rows one process with batch ``W * b`` sees, split without overlap
or gap.
"""

from __future__ import annotations

import numpy as np

from crossframe.errors import ConfigError


def check_shardable(batch_size: int, micro_batches: int, world_size: int) -> None:
    """Raise :class:`ConfigError` unless a global batch of ``batch_size`` splits evenly."""
    if world_size < 1 or micro_batches < 1 or batch_size % (micro_batches * world_size):
        raise ConfigError(f"train.batch_size: the global batch of {batch_size} rows does not split into "
                          f"{micro_batches} micro-batches (train.grad_accum) of {world_size} equal parts "
                          "(one per worker process)")


def shard_rows(batch_size: int, micro_batches: int, rank: int, world_size: int) -> np.ndarray:
    """Positions (ascending) of process ``rank``'s rows within a global batch of ``batch_size`` rows."""
    check_shardable(batch_size, micro_batches, world_size)
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank: must be in 0..{world_size - 1} for world_size {world_size} (got {rank})")
    micro = batch_size // micro_batches
    part = micro // world_size
    starts = np.arange(micro_batches, dtype=np.int64) * micro + rank * part
    return (starts[:, None] + np.arange(part, dtype=np.int64)[None, :]).reshape(-1)
