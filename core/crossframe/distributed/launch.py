"""The worker processes of a multi-process job: describe them (:class:`Job`), start them, watch them.

(:func:`crossframe.train.launch.launch` is the ``crossframe run`` side that drives this.)

When ``launch.nproc_per_node > 1`` or ``launch.nnodes > 1``, the process the user started does not
train; it starts ``nproc_per_node`` workers on this machine, each running ``python -m crossframe
run`` on the resolved config with ``CROSSFRAME_WORKER=1`` (so it trains instead of launching):

- by default (``Backend.launch_workers``): worker subprocesses started here with the
  ``CROSSFRAME_*`` variables (:func:`run_local`); the framework's own initialisation
  (``jax.distributed``, ``TF_CONFIG``) connects them.
- a backend may launch through its framework's own launcher instead: the torch backend uses
  torch's elastic launcher (the machinery behind ``torchrun``, in ``crossframe_torch.distributed``).
- ``launch.launcher: ray``: the same workers placed on a Ray cluster (:mod:`crossframe.distributed.ray`).

Watchdog: when a worker exits non-zero, the others are terminated (SIGTERM, then SIGKILL after
:data:`GRACE_S`) and the launcher raises one :class:`DistributedError` naming the rank and its last
error line. Rank 0 writes the run directory; the launcher only reads its final checkpoint.

Interrupts: the workers run in sessions of their own (as ``torchrun`` starts them), so a Ctrl-C at the
terminal reaches the launcher alone, which passes SIGINT or SIGTERM on to every worker once. The
workers agree on a step, checkpoint it and exit with :attr:`Interrupted.exit_code`; the launcher
waits up to :data:`INTERRUPT_GRACE_S` for them and raises :class:`JobInterrupted`. A second signal is
passed on too, and stops the workers at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.config.loading import dump_yaml
from crossframe.distributed.world import ERROR_DIR_ENV, RUN_DIR_ENV, WORKER_ENV, free_port_block
from crossframe.errors import ConfigError, DistributedError, Interrupted

#: seconds a worker gets between SIGTERM and SIGKILL once another worker has failed
GRACE_S = 5.0
#: seconds the workers get, after an interrupt, to reach the agreed step and checkpoint it
INTERRUPT_GRACE_S = 30.0
POLL_S = 0.1


class JobInterrupted(KeyboardInterrupt):
    """The workers stopped on a signal (``signum``), each after checkpointing the step they agreed on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Job:
    """What every worker of one job runs, and where the launcher finds their errors."""

    args: list[str]  # the worker's command line after the interpreter (``-m crossframe run ...``)
    env: dict[str, str]  # variables common to every worker
    error_dir: Path
    nproc: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    timeout_s: float

    @property
    def world_size(self) -> int:
        """Worker processes in the whole job."""
        return self.nproc * self.nnodes

    def rank_env(self, local_rank: int) -> dict[str, str]:
        """The ``CROSSFRAME_*`` variables of local worker ``local_rank`` on this node."""
        return {"CROSSFRAME_RANK": str(self.node_rank * self.nproc + local_rank),
                "CROSSFRAME_WORLD_SIZE": str(self.world_size),
                "CROSSFRAME_LOCAL_RANK": str(local_rank), "CROSSFRAME_LOCAL_WORLD_SIZE": str(self.nproc),
                "CROSSFRAME_MASTER_ADDR": self.master_addr, "CROSSFRAME_MASTER_PORT": str(self.master_port)}


def check_launch(cfg: Any) -> None:
    """Fail in one line before starting anything when the launch settings cannot work."""
    launch = cfg.launch
    if cfg.strategy == "single":
        raise ConfigError(f"strategy: 'single' runs one process, but launch asks for "
                          f"{launch.nproc_per_node * launch.nnodes}; use --strategy data_parallel or fully_sharded")
    if launch.node_rank >= launch.nnodes:
        raise ConfigError(f"launch.node_rank: {launch.node_rank} must be in 0..{launch.nnodes - 1} "
                          f"for nnodes {launch.nnodes}")


def prepare_job(cfg: Any, run_dir: Path, checkpoint: Any, quiet: bool, workdir: Path) -> Job:
    """Write the resolved config for the workers and describe the job."""
    launch = cfg.launch
    config_file = workdir / "config.yaml"
    config_file.write_text(dump_yaml(cfg), encoding="utf-8")
    error_dir = workdir / "errors"
    error_dir.mkdir()
    args = ["-m", "crossframe", "run", str(config_file), "--sample-tokens", "0"]
    if checkpoint is not None:
        args += ["--resume", str(checkpoint.path)]
    if quiet:
        args.append("--quiet")
    port = launch.master_port
    if launch.nnodes == 1 and "master_port" not in launch.model_fields_set:
        # one machine and no port asked for: never collide with another job (TensorFlow's workers listen on
        # master_port + rank, so the whole block must be free)
        port = free_port_block(launch.nproc_per_node)
    env = {WORKER_ENV: "1", RUN_DIR_ENV: str(run_dir), ERROR_DIR_ENV: str(error_dir)}
    return Job(args, env, error_dir, launch.nproc_per_node, launch.nnodes, launch.node_rank,
               launch.master_addr, port, float(launch.collective_timeout_s))


def first_failure(job: Job, failures: Mapping[int, tuple[int | None, float]]) -> int:
    """The rank that failed first among ``{rank: (exitcode, when seen)}``.

    A rank that raised left an error file whose time tells when; one that died without a word is
    placed at the time it was seen. Ranks that exited with an error code come before ranks the
    launcher killed (negative codes), since those only followed; and a rank whose error is a
    failed collective (a :class:`DistributedError`) comes after one that ended any other way, since
    a collective fails *because* a peer stopped: a peer that dies abruptly is only seen at the next
    poll, possibly after the survivor has already reported the broken collective.
    """
    def when(rank: int) -> tuple[bool, bool, float, int]:
        code, seen = failures[rank]
        err = job.error_dir / f"rank_{rank}.err"
        at = err.stat().st_mtime if err.is_file() else seen
        return (code is None or code < 0, _collective_failure(err), at, rank)

    return min(failures, key=when)


def _collective_failure(err: Path) -> bool:
    """Whether the error file ``err`` reports a failed collective (a consequence of another rank)."""
    try:
        return err.read_text(encoding="utf-8").startswith(f"{DistributedError.__name__}:")
    except OSError:
        return False


def failure_line(job: Job, rank: int, exitcode: int | None) -> str:
    """One line naming the failed rank, how it ended and its last error line."""
    how = (f"was killed by signal {-exitcode}" if exitcode is not None and exitcode < 0
           else f"exited with code {exitcode}")
    err = job.error_dir / f"rank_{rank}.err"
    last = err.read_text(encoding="utf-8").strip() if err.is_file() else ""
    detail = last or "no error message (crashed, killed or out of memory?); see its output above"
    return f"worker rank {rank} of {job.world_size} {how}: {detail}; the job was stopped"


# ---------------------------------------------------------------------------------------- local workers

class SignalRelay:
    """While active (in the main thread), SIGINT and SIGTERM sent to the launcher are passed on to the
    running workers instead of stopping the launcher; :attr:`signum` is the first one received."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, procs: Mapping[int, subprocess.Popen]) -> None:
        self.procs = procs
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _relay(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def __enter__(self) -> SignalRelay:
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._relay)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def run_local(job: Job) -> None:
    """Start this node's workers as subprocesses and watch them until all end, one fails, or all stop
    on an interrupt (:class:`JobInterrupted`)."""
    procs: dict[int, subprocess.Popen] = {}
    with SignalRelay(procs) as relay:
        try:
            for local in range(job.nproc):
                env = {**os.environ, **job.env, **job.rank_env(local)}
                procs[job.node_rank * job.nproc + local] = subprocess.Popen(
                    [sys.executable, *job.args], env=env, start_new_session=True)
            watch(procs, job, relay)
        finally:
            stop_all(procs.values(), INTERRUPT_GRACE_S if relay.signum else GRACE_S)


def watch(procs: Mapping[int, subprocess.Popen], job: Job, relay: SignalRelay | None = None) -> None:
    """Poll workers until all have ended.

    On the first exit that is neither 0 nor an interrupt, stop the rest and raise :class:`DistributedError`.
    Workers that stopped on an interrupt (exit :attr:`Interrupted.exit_code`) end together at the step
    they agreed on; once all have ended, :class:`JobInterrupted` is raised. A job whose workers have not
    all ended :data:`INTERRUPT_GRACE_S` after the first one stopped so is stopped.
    """
    running = dict(procs)
    interrupted_at: float | None = None
    while running:
        if interrupted_at is not None and time.monotonic() - interrupted_at > INTERRUPT_GRACE_S:
            stop_all(running.values())
            raise DistributedError(f"workers {sorted(running)} did not stop within {INTERRUPT_GRACE_S:g} s of "
                                   "an interrupt; they were killed (the last periodic checkpoint resumes)")
        for rank, proc in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[rank]
            if code == Interrupted.exit_code:
                interrupted_at = interrupted_at or time.monotonic()
            elif code != 0:
                now = time.time()
                failed = {r: (p.poll(), now) for r, p in procs.items()
                          if p.poll() not in (None, 0, Interrupted.exit_code)}
                stop_all(running.values())
                first = first_failure(job, failed)
                raise DistributedError(failure_line(job, first, failed[first][0]))
        time.sleep(POLL_S)
    if interrupted_at is not None:
        raise JobInterrupted(relay.signum if relay is not None and relay.signum else signal.SIGINT)


def stop_all(procs: Any, grace_s: float = GRACE_S) -> None:
    """SIGTERM every running process, then SIGKILL those still alive after ``grace_s``."""
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in alive:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
