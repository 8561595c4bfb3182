"""Resource metrics for each log window, under ``sys/``.

The loop tells the monitor, per step, how long it waited for the batch and how long the whole
iteration took (two ``perf_counter`` reads it makes anyway); at each log step the monitor adds:

* ``sys/rss_mb``: the process's resident memory now;
* ``sys/cpu_percent``: CPU time of the process over the window's wall time (100 = one core busy);
* ``sys/data_wait_share``: the share of step time spent getting the batch from the loader;
* ``sys/step_ms_p50``, ``sys/step_ms_p95``: host-side iteration time percentiles in the window
  (with an asynchronous backend, steady-state iterations wait for the device, so they measure it);
* ``sys/device_mb``, ``sys/device_peak_mb``: device memory in use now and at peak, where the
  backend can tell (CUDA, XLA and TF accelerators; not the host CPU).

psutil reads RSS and CPU time when installed; otherwise ``/proc`` and ``os.times`` do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _rss_reader() -> Callable[[], float | None]:
    """A function returning the resident set size in MiB (psutil, else /proc/self/statm, else None)."""
    try:
        import psutil

        process = psutil.Process()
        return lambda: process.memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil is in the monitor extra and dev
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

        def statm() -> float | None:
            try:
                with open("/proc/self/statm") as handle:
                    return int(handle.read().split()[1]) * page / 2**20
            except OSError:
                return None

        return statm


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class ResourceMonitor:
    """Collects per-step timings and turns them into ``sys/`` metrics once per log window."""

    def __init__(self, device_peak_mb: Callable[[], float | None] | None = None,
                 device_mb: Callable[[], float | None] | None = None) -> None:
        self._device = {"sys/device_mb": device_mb, "sys/device_peak_mb": device_peak_mb}
        self._rss = _rss_reader()
        self._data: list[float] = []
        self._steps: list[float] = []
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()

    def record(self, data_seconds: float, step_seconds: float) -> None:
        """One step: seconds spent getting the batch, and seconds the whole iteration took."""
        self._data.append(data_seconds)
        self._steps.append(step_seconds)

    def window(self) -> dict[str, Any]:
        """The ``sys/`` metrics of the steps recorded since the last call; starts a new window."""
        wall, cpu = time.perf_counter(), _cpu_seconds()
        out: dict[str, Any] = {}
        rss = self._rss()
        if rss is not None:
            out["sys/rss_mb"] = rss
        if wall > self._wall:
            out["sys/cpu_percent"] = 100.0 * (cpu - self._cpu) / (wall - self._wall)
        if self._steps:
            steps = np.asarray(self._steps)
            total = float(steps.sum())
            out["sys/data_wait_share"] = float(sum(self._data) / total) if total > 0 else 0.0
            p50, p95 = np.percentile(steps, [50, 95])
            out["sys/step_ms_p50"], out["sys/step_ms_p95"] = float(p50) * 1e3, float(p95) * 1e3
        for key, read in self._device.items():
            value = read() if read is not None else None
            if value is not None:
                out[key] = float(value)
        self._data, self._steps = [], []
        self._wall, self._cpu = wall, cpu
        return out
