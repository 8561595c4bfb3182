"""Where this process sits in a multi-worker job, read from the environment the launcher sets.

The launcher (:mod:`crossframe.distributed.launch`, torch's elastic launcher, or Ray) gives each
worker ``CROSSFRAME_RANK``, ``CROSSFRAME_WORLD_SIZE``, ``CROSSFRAME_LOCAL_RANK``,
``CROSSFRAME_LOCAL_WORLD_SIZE``, ``CROSSFRAME_MASTER_ADDR`` and ``CROSSFRAME_MASTER_PORT``; torchrun's
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` are read
when those are absent. With none set, the process is a world of one.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crossframe import hookimpl
from crossframe.backend import WorldInfo
from crossframe.errors import DistributedError

#: set (to "1") in every worker a launcher starts, so ``crossframe run`` trains instead of launching again
WORKER_ENV = "CROSSFRAME_WORKER"
#: the run directory the launcher chose (all ranks agree on it; only rank 0 writes there)
RUN_DIR_ENV = "CROSSFRAME_RUN_DIR"
#: a directory where a failing worker leaves ``rank_<r>.err`` holding its one-line error
ERROR_DIR_ENV = "CROSSFRAME_ERROR_DIR"
#: test-only fault injection: ``RANK:STEP`` makes that rank ``os._exit(3)`` after finishing that step
FAULT_ENV = "CROSSFRAME_FAULT_EXIT"
#: test-only: ``RANK:STEP`` makes that rank send SIGINT to the launcher after that step, as a Ctrl-C would
FAULT_SIGNAL_ENV = "CROSSFRAME_FAULT_SIGNAL"

_FIELDS = (  # WorldInfo field, our variable, torchrun's variable
    ("rank", "CROSSFRAME_RANK", "RANK"),
    ("world_size", "CROSSFRAME_WORLD_SIZE", "WORLD_SIZE"),
    ("local_rank", "CROSSFRAME_LOCAL_RANK", "LOCAL_RANK"),
    ("local_world_size", "CROSSFRAME_LOCAL_WORLD_SIZE", "LOCAL_WORLD_SIZE"),
    ("master_addr", "CROSSFRAME_MASTER_ADDR", "MASTER_ADDR"),
    ("master_port", "CROSSFRAME_MASTER_PORT", "MASTER_PORT"),
)


def world_from_env(cfg: Any, environ: Mapping[str, str] | None = None) -> WorldInfo:
    """This process's :class:`WorldInfo` for run config ``cfg`` (its ``strategy`` and ``launch``).

    Raises :class:`DistributedError` naming the variable when a value is malformed or out of range.
    """
    env = os.environ if environ is None else environ
    launch = cfg.launch
    values: dict[str, Any] = {"rank": 0, "world_size": 1, "local_rank": 0, "local_world_size": 1,
                              "master_addr": launch.master_addr, "master_port": launch.master_port}
    for name, ours, torchrun in _FIELDS:
        var = ours if env.get(ours, "") != "" else torchrun if env.get(torchrun, "") != "" else None
        if var is None:
            continue
        raw = env[var]
        if name == "master_addr":
            values[name] = raw
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise DistributedError(f"{var}: '{raw}' is not an integer") from None
    world, rank = values["world_size"], values["rank"]
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"CROSSFRAME_RANK: {rank} is outside 0..{world - 1} for a world of {world}")
    if not 0 <= values["local_rank"] < max(values["local_world_size"], 1):
        raise DistributedError(f"CROSSFRAME_LOCAL_RANK: {values['local_rank']} is outside "
                               f"0..{values['local_world_size'] - 1}")
    if not 1 <= values["master_port"] <= 65535:
        raise DistributedError(f"CROSSFRAME_MASTER_PORT: {values['master_port']} is not a port (1..65535)")
    if world > 1 and cfg.strategy == "single":
        raise DistributedError(f"strategy: 'single' cannot run {world} workers; "
                               "use --strategy data_parallel or fully_sharded")
    return WorldInfo(strategy=cfg.strategy, collective_timeout_s=float(launch.collective_timeout_s), **values)


def is_worker(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by a crossframe launcher (so it must not launch again)."""
    env = os.environ if environ is None else environ
    return env.get(WORKER_ENV, "") not in ("", "0") or "TORCHELASTIC_RUN_ID" in env  # or started by torchrun


def end_worker(code: int) -> None:
    """End a launched worker with ``code`` the way :mod:`multiprocessing` ends its children: wait for
    non-daemon threads, run the ``atexit`` handlers, flush the standard streams, then ``os._exit``,
    skipping interpreter teardown.

    torch's gloo process group can abort (SIGABRT, "terminate called without an active exception")
    while C++ objects are torn down at interpreter exit, even after ``destroy_process_group`` and a
    successful run; a worker has nothing left to do at that point, so it does not tear down.
    """
    import atexit
    import sys
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what multiprocessing's children call
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it by binding to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: where the kernel picks the source ports of outgoing connections when /proc does not say
_EPHEMERAL_DEFAULT = (32768, 60999)
#: the lowest port a launcher picks (below it live the well-known and registered services people run)
_LOWEST_PICKED = 20000


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the source ports of outgoing connections (Linux's ``ip_local_port_range``)."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def free_port_block(count: int, host: str = "127.0.0.1", tries: int = 200) -> int:
    """The first of ``count`` consecutive TCP ports that are all free on ``host`` now, chosen *outside* the
    kernel's ephemeral range.

    A launcher picks ports seconds before its workers bind them. A port the OS handed out by binding to
    port 0 comes from the ephemeral range, so in that gap any outgoing connection on the machine (a
    collective's, another test's) may take it as its source port; a port below that range can only be
    taken by someone who asks for it by number. Falls back to :func:`free_port` (one port) when no block
    is found.
    """
    import random

    low, _ = ephemeral_ports()
    top = low - count if low - count > _LOWEST_PICKED else 65535 - count
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(_LOWEST_PICKED, top)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    return free_port(host)


def record_failure(exc: BaseException, rank: int | None = None) -> None:
    """Leave this worker's one-line error where the launcher looks (``$CROSSFRAME_ERROR_DIR``)."""
    directory = os.environ.get(ERROR_DIR_ENV)
    if not directory:
        return
    if rank is None:
        rank = int(os.environ.get("CROSSFRAME_RANK") or os.environ.get("RANK") or 0)
    line = (str(exc).strip().splitlines() or [""])[-1] or type(exc).__name__
    with contextlib.suppress(OSError):  # reporting must never hide the error itself
        (Path(directory) / f"rank_{rank}.err").write_text(f"{type(exc).__name__}: {line}\n", encoding="utf-8")


def fault_step(world: WorldInfo, environ: Mapping[str, str] | None = None, variable: str = FAULT_ENV) -> int | None:
    """The step after which this rank must fail (test-only ``CROSSFRAME_FAULT_EXIT=RANK:STEP``, or the
    ``variable`` given), or None."""
    env = os.environ if environ is None else environ
    spec = env.get(variable, "")
    if not spec:
        return None
    try:
        rank, step = (int(v) for v in spec.split(":"))
    except ValueError:
        raise DistributedError(f"{variable}: '{spec}' is not RANK:STEP") from None
    return step if rank == world.rank else None


class _FaultExit:
    """Test-only: ends this worker abruptly (``os._exit(3)``, no cleanup) after a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, run: Any, step: int, batch: Any, logs: Any) -> None:
        """Die right after step ``self.step``, as a crashed or killed worker would."""
        if step == self.step:
            import sys

            sys.stderr.write(f"crossframe: fault injection ({FAULT_ENV}) ends this worker after step {step}\n")
            sys.stderr.flush()
            os._exit(3)


class _FaultSignal:
    """Test-only: interrupts the launcher (this worker's parent) after a given step, as a Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, run: Any, step: int, batch: Any, logs: Any) -> None:
        """Send SIGINT to the launcher right after step ``self.step``, then wait until the launcher has
        passed it back to this worker (so the test knows which log boundary the ranks agree at)."""
        if step == self.step:
            import signal
            import time

            os.kill(os.getppid(), signal.SIGINT)
            deferred = getattr(signal.getsignal(signal.SIGINT), "__self__", None)  # the loop's DeferredSignals
            deadline = time.monotonic() + 60.0
            while getattr(deferred, "received", 0) is None and time.monotonic() < deadline:
                time.sleep(0.01)


def fault_injector(world: WorldInfo) -> str | None:
    """Register the ``CROSSFRAME_FAULT_EXIT`` or ``CROSSFRAME_FAULT_SIGNAL`` hook for this rank; returns
    its plugin name (or None).

    Used by the tests of worker failure and interrupts; never set them in real runs.
    """
    exit_step, signal_step = fault_step(world), fault_step(world, variable=FAULT_SIGNAL_ENV)
    if exit_step is None and signal_step is None:
        return None
    from crossframe.plugins import get_plugin_manager

    name = "crossframe-fault-injection"
    get_plugin_manager().register(_FaultExit(exit_step) if exit_step is not None else _FaultSignal(signal_step), name)
    return name
