"""How many CPU threads a run's framework may use, chosen on purpose and applied before it starts.

On a small machine that has any other load, a framework that spreads one op over every core
waits at each barrier for a core it does not have: two OpenMP threads on a busy 2-core machine
run several times slower than one. So ``threads: auto`` counts the cores this process may use
and subtracts the ones other processes keep busy (the 1-minute load average), then keeps at
most half the cores on larger machines (hyper-threads and the data pipeline need room).

:func:`thread_environment` gives the environment variables that fix the thread pools of torch,
TensorFlow and XLA before they are imported (child processes get them too); a backend applies
the same count to an already-imported framework through ``Backend.set_threads``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: Variables read by OpenMP, MKL, OpenBLAS and TensorFlow when their thread pools start.
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
#: XLA's CPU flag that keeps Eigen's matmuls and convolutions on the calling thread.
XLA_SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and the reason it was chosen (printed at the start of a run)."""

    threads: int
    reason: str


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cores() -> float:
    """Cores other processes keep busy: the 1-minute load average (0 where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def auto_threads(cores: int, load: float) -> int:
    """The ``auto`` rule: idle cores (``cores - load``, rounded down, at least 1), and at most half
    of the cores when there are more than two."""
    idle = max(1, int(cores - load))
    cap = cores if cores <= 2 else max(1, cores // 2)
    return max(1, min(idle, cap))


def choose_threads(requested: int | str | None = "auto") -> ThreadChoice:
    """Resolve a ``threads`` setting (a positive count, or ``auto``/``None``) into a count with its reason.

    ``auto`` honours ``OMP_NUM_THREADS`` when the environment sets it; otherwise :func:`auto_threads`.
    """
    if requested not in (None, "auto"):
        count = int(requested)  # validated by the config schema or the CLI
        return ThreadChoice(count, "as configured")
    preset = os.environ.get("OMP_NUM_THREADS", "")
    if preset.isdigit() and int(preset) > 0:  # the user's (or a launcher's) choice for this process tree
        return ThreadChoice(int(preset), "from OMP_NUM_THREADS")
    cores, load = available_cores(), busy_cores()
    count = auto_threads(cores, load)
    return ThreadChoice(count, f"auto: {cores} cores, load {load:.1f}")


def thread_environment(threads: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables that give every framework ``threads`` intra-op threads and one
    inter-op thread, as a new dict built from ``environ`` (default: ``os.environ``)."""
    env = dict(os.environ if environ is None else environ)
    for name in POOL_VARIABLES:
        env[name] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_cpu_multi_thread_eigen")]
    if threads == 1:
        flags.append(XLA_SINGLE_THREAD_FLAG)
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    return env


def apply_thread_environment(threads: int) -> None:
    """Set :func:`thread_environment` in this process (effective for frameworks not imported yet)."""
    wanted = thread_environment(threads)
    for name in (*POOL_VARIABLES, "TF_NUM_INTEROP_THREADS", "XLA_FLAGS"):
        if name in wanted:
            os.environ[name] = wanted[name]
        else:
            os.environ.pop(name, None)


__all__ = ["ThreadChoice", "apply_thread_environment", "auto_threads", "available_cores", "busy_cores",
           "choose_threads", "thread_environment"]
