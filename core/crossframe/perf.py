"""Throughput figures: the device's measured matmul peak, MFU, peak memory (a model's FLOPs per step
live with the models, :func:`crossframe.models.flops.flops_per_step`)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

import numpy as np


def probe_peak(matmul_once: Callable[[], object], size: int, seconds: float = 0.2) -> float:
    """Best FLOP/s of ``matmul_once`` (one ``size x size`` matmul that returns when it is done)."""
    matmul_once()  # warm-up: compilation, thread pools, page faults
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        matmul_once()
        took = time.perf_counter() - start
        spent += took
        best = max(best, 2.0 * size**3 / took)
    return best


def numpy_matmul_peak(size: int = 1024, seconds: float = 0.2) -> float:
    """FLOP/s of repeated float32 ``size x size`` matmuls in numpy (a host-side fallback probe)."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    return probe_peak(lambda: a @ b, size, seconds)


def peak_host_memory_mb() -> float:
    """The process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20
