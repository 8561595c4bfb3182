"""Adapter dropout (``train.lora.dropout``): which inputs of an adapter's path are kept, the same on every backend.

While training, an adapted linear computes ``x @ W + scale * (drop(x) @ A) @ B`` (``+ b``), where ``drop``
zeroes a ``rate`` share of ``x`` and scales the rest by ``1 / (1 - rate)``; at evaluation it is the identity
(``x @ (W + scale * A @ B)``, as with rate 0). The mask is not drawn from a framework's generator: it is a
counter-based integer hash that each backend computes with its own integer ops, so torch, jax and tensorflow
drop the same entries and their loss curves agree (as with rate 0). Element ``j`` of the flattened input of
adapted linear ``site`` (its index in sorted order) in forward call ``call`` (``step * grad_accum +
micro_batch``) is kept iff ``mix(mix(mix(run ^ call) ^ site_constant) + j) >= threshold``, all in uint32
arithmetic (``mix``: two rounds of xor-shift and multiply by ``0x45d9f3b``; every product of a 32-bit value
and the multiplier fits in int64, so int64 frameworks compute it exactly and mask to 32 bits).

Being a pure function of (seed, step, micro-batch, site, position), it repeats exactly on resume and under
activation checkpointing's recomputation. :func:`keep_mask` is the numpy reference.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MASK = 0xFFFFFFFF
MULTIPLIER = 0x45D9F3B


def mix(x: int | np.ndarray) -> int | np.ndarray:
    """The 32-bit integer hash (on python ints or uint64/int64 arrays holding values below 2**32)."""
    x = x ^ (x >> 16)
    x = (x * MULTIPLIER) & MASK
    x = x ^ (x >> 16)
    x = (x * MULTIPLIER) & MASK
    return x ^ (x >> 16)


def run_constant(seed: int) -> int:
    """The run's constant, from its seed."""
    return int(mix((int(seed) ^ 0x5EED) & MASK))


def site_constants(names: list[str] | Mapping[str, object]) -> dict[str, int]:
    """``{adapted linear: its constant}``, by the linear's index in sorted order."""
    return {name: int(mix(i + 1)) for i, name in enumerate(sorted(names))}


def threshold(rate: float) -> int:
    """The kept entries' hashes are at least this (a share ``1 - rate`` of all 32-bit values)."""
    return min(MASK, round(rate * 2**32))


def call_base(run: int, call: int, site: int) -> int:
    """The hash's offset for one adapted linear (``site`` constant) in one forward call."""
    return int(mix(int(mix((run ^ call) & MASK)) ^ site))


def keep_mask(shape: tuple[int, ...], run: int, call: int, site: int, rate: float) -> np.ndarray:
    """The numpy reference: which entries of an input of ``shape`` the adapter keeps (bool)."""
    base = call_base(run, call, site)
    j = np.arange(int(np.prod(shape)), dtype=np.uint64)
    return (mix((j + np.uint64(base)) & np.uint64(MASK)) >= threshold(rate)).reshape(shape)
