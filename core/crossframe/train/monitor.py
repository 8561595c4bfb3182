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

RSS comes from ``/proc/self/statm`` (read through one descriptor kept open), else psutil, else
nothing; CPU time from ``os.times``. A window costs a few microseconds of pure Python (no numpy, no
psutil call): it runs inside the timed loop once per ``log_every`` steps, with cold caches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def _rss_reader() -> Callable[[], float | None]:
    """A function returning the resident set size in MiB (/proc/self/statm, else psutil, else None).

    The statm descriptor stays open for the process's life (one ``pread`` per window, about a tenth
    of psutil's ``memory_info``); it is opened once, at the first monitor.
    """
    fd = _statm_fd()
    if fd is not None:
        page = os.sysconf("SC_PAGE_SIZE")

        def statm() -> float | None:
            try:
                return int(os.pread(fd, 128, 0).split()[1]) * page / 2**20
            except (OSError, IndexError, ValueError):
                return None

        return statm
    try:
        import psutil

        process = psutil.Process()
        return lambda: process.memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil is in the monitor extra and dev
        return lambda: None


_STATM: dict[int, int | None] = {}  # process id -> its statm descriptor (a forked child opens its own)


def _statm_fd() -> int | None:
    """A read-only descriptor of this process's ``/proc/<pid>/statm``, shared by its monitors (None off Linux)."""
    pid = os.getpid()
    if pid not in _STATM:
        try:
            _STATM[pid] = os.open(f"/proc/{pid}/statm", os.O_RDONLY) if hasattr(os, "pread") else None
        except OSError:
            _STATM[pid] = None
    return _STATM[pid]


def percentile(ordered: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted, non-empty ``ordered``, interpolated linearly between
    the closest ranks (numpy's default method), in pure Python: for the few dozen values of a window
    this is several times faster than ``np.percentile``."""
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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
            steps = sorted(self._steps)
            total = sum(steps)
            out["sys/data_wait_share"] = float(sum(self._data) / total) if total > 0 else 0.0
            out["sys/step_ms_p50"] = percentile(steps, 50) * 1e3
            out["sys/step_ms_p95"] = percentile(steps, 95) * 1e3
        for key, read in list(self._device.items()):
            value = read() if read is not None else None
            if value is not None:
                out[key] = float(value)
            else:  # the device keeps no such figure (the host CPU): not asked again
                del self._device[key]
        self._data, self._steps = [], []
        self._wall, self._cpu = wall, cpu
        return out
