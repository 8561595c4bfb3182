"""``launch.launcher: ray``: place a job's workers on a Ray cluster.

Each worker is a Ray actor (one CPU, or one GPU with ``device: gpu``) that runs the same command a
local launch runs (``python -m crossframe run CONFIG`` with ``CROSSFRAME_WORKER=1`` and the
``CROSSFRAME_*`` variables) as a subprocess, so every backend joins the job through its own
initialisation exactly as it does on one machine. Rank 0's actor picks the rendezvous address
(its node's IP and a free port). The launcher watches the actors: the first worker to exit non-zero
stops the others and ends the job with one line naming its rank.

We use plain actors rather than Ray Train's ``TorchTrainer``: the worker initialises its framework's
collectives itself (torch's process group, ``jax.distributed``, ``TF_CONFIG``), so one mechanism
serves all backends and behaves like the local launcher. ``ray.init()`` joins the cluster named by
``RAY_ADDRESS`` or starts a local one; the workers need the same Python environment and a shared
file system for the run directory (only rank 0 writes it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from crossframe.distributed.launch import GRACE_S, POLL_S, Job, failure_line, first_failure
from crossframe.errors import DistributedError


class _WorkerActor:
    """One worker: runs the crossframe command as a subprocess and can stop it (Ray actor body)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a port free on it now (rank 0's actor gives the rendezvous address)."""
        import ray

        from crossframe.distributed.world import free_port

        ip = ray.util.get_node_ip_address()
        return ip, free_port("0.0.0.0")

    def node(self) -> str:
        """The IP of the node this actor was placed on."""
        import ray

        return ray.util.get_node_ip_address()

    def run(self, args: list[str], env: dict[str, str]) -> int:
        """Run the worker to its end; returns its exit code."""
        self.proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **env})
        return self.proc.wait()

    def stop(self, grace_s: float) -> None:
        """SIGTERM the worker, then SIGKILL it after ``grace_s``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_on_ray(job: Job, gpus_per_worker: float = 0.0) -> None:
    """Start ``job.world_size`` workers as Ray actors and watch them (see the module docstring)."""
    try:
        import ray
    except ImportError:
        raise DistributedError("launch.launcher: 'ray' needs Ray; install crossframe[ray]") from None
    started_here = not ray.is_initialized()
    if started_here:
        local = not os.environ.get("RAY_ADDRESS")
        ray.init(**({"num_cpus": max(os.cpu_count() or 1, job.world_size)} if local else {}),
                 include_dashboard=False, log_to_driver=True, configure_logging=False)
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_concurrency=2)(_WorkerActor)
    actors = [actor_cls.remote() for _ in range(job.world_size)]
    try:
        addr, port = ray.get(actors[0].address.remote())
        nodes = ray.get([a.node.remote() for a in actors])
        per_node: dict[str, list[int]] = defaultdict(list)
        for rank, ip in enumerate(nodes):
            per_node[ip].append(rank)
        refs: dict[Any, int] = {}
        for rank, actor in enumerate(actors):
            mates = per_node[nodes[rank]]
            env = {**job.env,
                   "CROSSFRAME_RANK": str(rank), "CROSSFRAME_WORLD_SIZE": str(job.world_size),
                   "CROSSFRAME_LOCAL_RANK": str(mates.index(rank)),
                   "CROSSFRAME_LOCAL_WORLD_SIZE": str(len(mates)),
                   "CROSSFRAME_MASTER_ADDR": addr, "CROSSFRAME_MASTER_PORT": str(port)}
            refs[actor.run.remote(job.args, env)] = rank
        _watch(ray, refs, actors, job)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _watch(ray: Any, refs: dict[Any, int], actors: list[Any], job: Job) -> None:
    """Wait for every worker; on the first non-zero exit stop the rest and raise one line."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
        for ref in done:
            code = ray.get(ref)
            if code == 0:
                continue
            now = time.time()
            failed = {refs[ref]: (code, now)}
            for other in list(pending):  # others that ended in the same moment, to name the first
                ready, _ = ray.wait([other], timeout=0)
                if ready and (c := ray.get(other)) != 0:
                    failed[refs[other]] = (c, now)
            ray.get([a.stop.remote(GRACE_S) for a in actors], timeout=GRACE_S * 2)
            rank = first_failure(job, failed)
            raise DistributedError(failure_line(job, rank, failed[rank][0]).replace("worker rank", "ray worker rank"))
