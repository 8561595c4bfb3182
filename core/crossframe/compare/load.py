"""The machine's load while one backend of a comparison runs, and whether it spoiled the figures.

A framework's speed is only comparable when each backend had the cores it was given. During each
child run the parent reads the whole machine's busy CPU time (``/proc/stat``) and the child's own
CPU time; the difference, over the wall time, is how many cores other processes kept busy. A run
is flagged as contended when those other processes took more than the cores the run left free
(``cores - threads``) by a quarter of a core: then some of the run's threads had to share a core.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: other processes may use this many cores beyond the free ones before a run is flagged
CONTENTION_SLACK = 0.25


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``), or ``None`` off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal; guest is inside user
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float | None:
    """The 1-minute load average, where the OS has one."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


@dataclass
class LoadMeter:
    """Measures other processes' CPU use between :meth:`start` and :meth:`stop` (one child at a time)."""

    threads: int
    cores: int
    _busy: float | None = None
    _child: float = 0.0
    _wall: float = 0.0
    _load: float | None = None

    def start(self) -> None:
        """Take the starting readings, just before the child starts."""
        self._busy, self._child = machine_busy_seconds(), children_cpu_seconds()
        self._wall, self._load = time.perf_counter(), load_average()

    def stop(self) -> dict[str, Any]:
        """Readings since :meth:`start` (call after the child was waited for) as a results.json record."""
        wall = time.perf_counter() - self._wall
        busy = machine_busy_seconds()
        child_cpu = children_cpu_seconds() - self._child
        record: dict[str, Any] = {"threads": self.threads, "cores": self.cores, "load_avg_start": self._load,
                                  "load_avg_end": load_average(), "child_cpu_cores": None,
                                  "other_cores": None, "contended": False, "why": None}
        if wall > 0:
            record["child_cpu_cores"] = child_cpu / wall
        if busy is not None and self._busy is not None and wall > 0:
            other = max(0.0, (busy - self._busy - child_cpu) / wall)
            record["other_cores"] = other
            free = max(0, self.cores - self.threads)
            if other > free + CONTENTION_SLACK:
                record["contended"] = True
                record["why"] = (f"other processes kept {other:.2f} of {self.cores} cores busy during this run, "
                                 f"more than the {free} it left free besides its {self.threads} thread(s)")
        return record


__all__ = ["CONTENTION_SLACK", "LoadMeter", "children_cpu_seconds", "load_average", "machine_busy_seconds"]
