"""``--jobs N``: N worker processes on this machine, threads per trial set so N x threads <= cores.

Each child gets its thread count through the environment every framework reads at start-up
(OpenMP/MKL/OpenBLAS for numpy and torch, TensorFlow's intra/inter-op pools, XLA's CPU flags) and,
on Linux, its own slice of the CPU cores (affinity), which is what holds XLA's CPU runtime. A child
dies with its parent (``PR_SET_PDEATHSIG``), so a killed tuner leaves no orphans training.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossframe.errors import ConfigError, RunError
from crossframe.tune.plan import STORAGE_ENV, Plan

POLL_S = 0.5
LOG_DIR = "workers"


def available_cores() -> list[int]:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def threads_per_job(jobs: int, cores: int) -> int:
    """Threads for each of ``jobs`` trials at once so that ``jobs * threads <= cores`` (at least 1)."""
    return max(1, cores // max(1, jobs))


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap the thread pools of numpy, torch, TensorFlow and XLA."""
    n = str(threads)
    xla = os.environ.get("XLA_FLAGS", "")
    extra = f"--xla_cpu_multi_thread_eigen={'false' if threads == 1 else 'true'} intra_op_parallelism_threads={n}"
    return {
        "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "NUMEXPR_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1",
        "XLA_FLAGS": f"{xla} {extra}".strip(),
    }


def _child_setup(cores: list[int]) -> Callable[[], None]:
    """What runs in the child before ``exec``: die with the parent, keep to ``cores``."""

    def setup() -> None:
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if cores and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cores)

    return setup


def worker_env(plan: Plan, threads: int) -> dict[str, str]:
    """What a worker process adds to its environment: thread caps, this crossframe on ``PYTHONPATH``,
    and the storage URL when it is not the study's own file (it may hold a password)."""
    core = str(Path(__file__).resolve().parent.parent.parent)
    env = {**thread_env(threads), "PYTHONPATH": os.pathsep.join(p for p in (core, os.environ.get("PYTHONPATH", ""))
                                                                if p)}
    if not plan.default_storage:
        env[STORAGE_ENV] = plan.storage
    return env


def start_workers(plan: Plan, jobs: int) -> list[tuple[subprocess.Popen, Path]]:
    """Start ``jobs`` worker processes on ``plan``'s study; each writes its output to ``workers/<pid>-K.log``."""
    study_dir, deadline_s = plan.study_dir, plan.tune.timeout_s
    cores = available_cores()
    threads = threads_per_job(jobs, len(cores))
    env = {**os.environ, **worker_env(plan, threads)}
    logs = study_dir / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for index in range(jobs):
        mine = cores[index * threads:(index + 1) * threads] if jobs * threads <= len(cores) else []
        cmd = [sys.executable, "-m", "crossframe.tune.worker", str(study_dir), "--index", str(index)]
        if deadline_s is not None:
            cmd += ["--deadline-s", str(deadline_s)]
        log = logs / f"{os.getpid()}-{index}.log"
        with open(log, "wb") as handle:
            proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                    preexec_fn=_child_setup(mine))
        procs.append((proc, log))
    return procs


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or ["(no output)"])[-1].removeprefix("error: ")


def stop_workers(procs: list[tuple[subprocess.Popen, Path]]) -> None:
    """Terminate the workers still running and reap them."""
    for proc, _ in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc, _ in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def watch_workers(procs: list[tuple[subprocess.Popen, Path]], poll: Callable[[], Any]) -> None:
    """Call ``poll()`` while the workers run; the first worker to fail stops the others and raises
    its one-line error (exit 2 for a config error, 1 otherwise)."""
    try:
        while True:
            poll()
            codes = [proc.poll() for proc, _ in procs]
            bad = [(code, log) for code, (_, log) in zip(codes, procs, strict=True) if code not in (None, 0)]
            if bad:
                code, log = bad[0]
                stop_workers(procs)
                poll()
                error = ConfigError if code == 2 else RunError
                raise error(f"tune: a worker failed ({log}): {_last_line(log)}")
            if all(code == 0 for code in codes):
                poll()
                return
            time.sleep(POLL_S)
    except BaseException:
        stop_workers(procs)
        raise
