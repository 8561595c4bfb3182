"""Throughput figures: the device's measured matmul peak, MFU, peak memory (a model's FLOPs per step
live with the models, :func:`crossframe.models.flops.flops_per_step`)."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- the peak, measured once

PEAK_PROBES = 5  # probe rounds whose best is the peak (spread over time, so a burst of other load is missed)


def cache_dir() -> Path:
    """crossframe's per-user cache: ``CROSSFRAME_CACHE_DIR``, else ``$XDG_CACHE_HOME/crossframe``,
    else ``~/.cache/crossframe``."""
    if os.environ.get("CROSSFRAME_CACHE_DIR"):
        return Path(os.environ["CROSSFRAME_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crossframe"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Peak:
    """A device's matmul peak in FLOP/s and where the figure comes from (``probe``, ``cached probe``
    or ``observed``: a run went faster than the probe, so its own rate became the peak)."""

    flops: float
    source: str
    key: str


def peak_key(framework: str, device: str, precision: str, threads: int) -> str:
    """What a peak depends on: the framework and its version, the device, precision, threads, the CPU."""
    return f"{framework}|{device}|{precision}|threads={threads}|{cpu_model()}"


def _read_peaks(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_peaks(path: Path, peaks: dict[str, Any]) -> None:
    """Write the cache atomically; a cache that cannot be written is not an error (the run goes on)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(peaks, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def device_peak(key: str, probe: Callable[[], float], rounds: int = PEAK_PROBES) -> Peak:
    """The peak for ``key``: from the cache when measured before, else the best of ``rounds`` probes
    (each a call of ``probe``, returning FLOP/s), cached for every later run on this machine."""
    path = cache_dir() / "peaks.json"
    entry = _read_peaks(path).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) and entry["flops"] > 0:
        return Peak(float(entry["flops"]), f"cached {entry.get('source', 'probe')}", key)
    best = max(probe() for _ in range(rounds))
    raise_peak(key, best, "probe")
    return Peak(best, "probe", key)


def raise_peak(key: str, flops: float, source: str) -> None:
    """Record ``flops`` as the peak for ``key`` if it is higher than the cached one."""
    path = cache_dir() / "peaks.json"
    peaks = _read_peaks(path)
    old = peaks.get(key, {})
    if isinstance(old, dict) and isinstance(old.get("flops"), (int, float)) and old["flops"] >= flops:
        return
    peaks[key] = {"flops": flops, "source": source, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_peaks(path, peaks)
