"""``crossframe tune --launcher ray --jobs N``: the N workers as Ray tasks on a cluster.

Each task reserves ``threads`` CPUs and runs the same worker a local ``--jobs`` starts
(``python -m crossframe.tune.worker STUDY_DIR --index K``) as a subprocess, with the thread
variables set, so trials train exactly as they do here. ``ray.init()`` joins the cluster named by
``RAY_ADDRESS`` or starts a local one. Every node needs the same Python environment, the study
directory on a shared file system, and the storage: pass ``--storage`` an RDB server URL for a
real cluster (the default SQLite file only suits one machine or a file system with working locks).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from crossframe.errors import ConfigError, RunError, UsageError
from crossframe.tune.parallel import POLL_S, _child_setup, threads_per_job, worker_env
from crossframe.tune.plan import Plan


def _run_worker(study_dir: str, index: int, env: dict[str, str], deadline_s: float | None) -> tuple[int, str]:
    """Ray task body: one worker process to its end; its exit code and last line of output."""
    cmd = [sys.executable, "-m", "crossframe.tune.worker", study_dir, "--index", str(index)]
    if deadline_s is not None:
        cmd += ["--deadline-s", str(deadline_s)]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False,
                          preexec_fn=_child_setup([]))
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return proc.returncode, (errors or lines or ["(no output)"])[-1]


def _threads(ray: Any, jobs: int) -> int:
    """CPUs per task: the cluster's CPUs shared among ``jobs``, and no more than the smallest node has."""
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    total = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(threads_per_job(jobs, total), int(min(nodes)) if nodes else 1))


def run_on_ray(plan: Plan, jobs: int, poll: Callable[[], Any]) -> None:
    """Run ``jobs`` workers as Ray tasks, calling ``poll()`` while they run; the first to fail stops the
    others and raises its one-line error."""
    try:
        import ray
    except ImportError:
        raise UsageError("--launcher: 'ray' needs Ray; install crossframe[ray]") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        threads = _threads(ray, jobs)
        env = worker_env(plan, threads)
        task = ray.remote(num_cpus=threads, max_retries=0)(_run_worker)
        study_dir = str(plan.study_dir.resolve())
        pending = [task.remote(study_dir, index, env, plan.tune.timeout_s) for index in range(jobs)]
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            poll()
            for ref in done:
                code, line = ray.get(ref)
                if code != 0:
                    for other in pending:
                        ray.cancel(other, force=True)
                    error = ConfigError if code == 2 else RunError
                    raise error(f"tune: a Ray worker failed: {line}")
        poll()
    finally:
        if started_here:
            ray.shutdown()
