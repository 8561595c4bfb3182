"""torch across processes: ``torch.distributed`` process groups, DDP (``data_parallel``) and FSDP2
``fully_shard`` (``fully_sharded``).

- :func:`init` joins the job through ``init_process_group`` (gloo on CPU, nccl on CUDA) with the
  run's ``launch.collective_timeout_s``; under torchrun the agent's store is used (``env://``).
- ``data_parallel``: the module is wrapped in ``DistributedDataParallel``, which averages gradients
  over processes during backward; each process keeps full weights, so canonical export is local.
- ``fully_sharded``: ``fully_shard`` (FSDP2) shards every parameter and its optimizer state on dim 0
  over a 1-D device mesh (transformer blocks are their own groups); gradients are reduce-scattered
  and averaged. Export gathers full tensors on every rank (a collective), load scatters them back.

Both averages equal the single-process big-batch gradient when every process has the same number
of rows (the core's loader guarantees it); token losses with masks are divided by the *global*
counted tokens (:func:`mean_over_ranks`), as one process would.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from crossframe.backend import TrainSetup, WorldInfo
from crossframe.distributed.launch import INTERRUPT_GRACE_S, POLL_S, Job, JobInterrupted, failure_line, first_failure
from crossframe.errors import CapabilityError, DistributedError, Interrupted
from crossframe.models.spec import Params
from crossframe_torch.models import to_canonical, to_native
from crossframe_torch.optim import export_optimizer_state, load_optimizer_state

STRATEGIES = ("single", "data_parallel", "fully_sharded")


def init(world: WorldInfo, device: str) -> None:
    """Join the process group (once per process); raises :class:`DistributedError` if the
    rendezvous fails or times out."""
    if dist.is_initialized():
        return
    if device not in ("cpu", "gpu") or (device == "gpu" and not torch.cuda.is_available()):
        raise CapabilityError(f"strategy: '{world.strategy}' on torch runs on cpu or CUDA gpus, not '{device}' here")
    backend = "nccl" if device == "gpu" else "gloo"
    if device == "gpu":
        if world.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"launch.nproc_per_node: local rank {world.local_rank} has no GPU of its own "
                                   f"({torch.cuda.device_count()} visible); use at most one worker per GPU")
        torch.cuda.set_device(world.local_rank)
    timeout = datetime.timedelta(seconds=world.collective_timeout_s)
    try:
        if world.world_size == 1:  # one process: an in-memory store, no port to collide on
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            for key, value in (("MASTER_ADDR", world.master_addr), ("MASTER_PORT", str(world.master_port)),
                               ("RANK", str(world.rank)), ("WORLD_SIZE", str(world.world_size)),
                               ("LOCAL_RANK", str(world.local_rank))):
                os.environ[key] = value  # under torchrun the same values it set (world_from_env read them)
            dist.init_process_group(backend, init_method="env://", rank=world.rank, world_size=world.world_size,
                                    timeout=timeout)
    except Exception as exc:  # any rendezvous failure becomes one line
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise DistributedError(f"launch: rank {world.rank} could not join the {world.world_size}-process group "
                               f"at {world.master_addr}:{world.master_port} ({backend}): {line}") from None


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active(setup: TrainSetup) -> bool:
    """Whether ``setup`` trains as part of a multi-process (or multi-replica) job."""
    return setup.world is not None and setup.world.strategy != "single"


def sharded(setup: TrainSetup) -> bool:
    """Whether ``setup`` shards parameters with FSDP."""
    return setup.world is not None and setup.world.strategy == "fully_sharded"


def check_setup(setup: TrainSetup) -> None:
    """Refuse, in one line, what the torch strategies do not combine with."""
    if not sharded(setup):
        return
    if setup.masks:
        raise CapabilityError("strategy: 'fully_sharded' on torch does not apply pruning masks; "
                              "fine-tune pruned models with data_parallel")
    if setup.compile:
        raise CapabilityError("train.compile: torch.compile with strategy 'fully_sharded' is not supported here; "
                              "use data_parallel or compile: false")


def shard_module(module: torch.nn.Module, setup: TrainSetup, device: torch.device) -> torch.nn.Module:
    """FSDP2 ``fully_shard`` the module in place (transformer blocks first) for ``fully_sharded``;
    otherwise the module unchanged. Call before the optimizer is built."""
    if not sharded(setup):
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    assert setup.world is not None
    mesh = init_device_mesh(device.type, (setup.world.world_size,))
    from crossframe_torch.lowering import repeated_blocks

    for block in repeated_blocks(module):  # gather and free their weights one block at a time
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def data_parallel(module: torch.nn.Module, setup: TrainSetup, device: torch.device) -> torch.nn.Module:
    """The module wrapped in DDP for ``data_parallel`` (what the steps call); otherwise itself."""
    if not active(setup) or sharded(setup):
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


def sync_gradients(forward: Any, sync: bool) -> None:
    """Whether the next DDP backward all-reduces (what ``DistributedDataParallel.no_sync`` toggles):
    off for all but the last micro-batch of an accumulated step, so gradients accumulate locally and
    are averaged once. FSDP and compiled modules keep reducing every micro-batch."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(forward, DistributedDataParallel):
        forward.require_backward_grad_sync = sync


def max_over_ranks(value: int) -> int:
    """The largest ``value`` over all processes (one small all-reduce on the group's device), or
    ``value`` when no process group is running."""
    if not dist.is_available() or not dist.is_initialized():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (an all-reduce on the device; no host sync)."""
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def _full(value: Any) -> Any:
    """A DTensor gathered to a full tensor on every rank; anything else unchanged."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def plain_outputs(values: dict[str, Any]) -> dict[str, Any]:
    """Step outputs without DTensors (a clipped FSDP grad norm is one), so ``fetch`` can read them."""
    return {k: _full(v) for k, v in values.items()}


def export_sharded(state: Any) -> tuple[Params, Params]:
    """Full canonical weights and optimizer state of an FSDP state, gathered on every rank."""
    spec = state.setup.spec
    layouts = {p.name: p.layout for p in spec.table}
    full = {name: _full(param.detach()) for name, param in state.params.items()}
    weights = {p.name: to_canonical(p.layout, full[p.name]).float().cpu().contiguous().numpy().copy()
               for p in spec.table}
    gathered = {}
    for name, param in state.params.items():
        slots = state.optimizer.state.get(param, {})
        gathered[full[name]] = {k: _full(v) for k, v in slots.items()}
    proxy = SimpleNamespace(state=gathered)
    opt = export_optimizer_state(proxy, state.setup.optimizer, full, layouts, state.step)  # type: ignore[arg-type]
    return weights, opt


@torch.no_grad()
def load_sharded(state: Any, weights: Params, optimizer_state: Params | None) -> Any:
    """Install full canonical weights (and optimizer state) into an FSDP state, each rank keeping its shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    spec = state.setup.spec
    spec.check_weights(weights)
    for p in spec.table:
        param = state.params[p.name]
        value = to_native(p.layout, torch.from_numpy(np.ascontiguousarray(weights[p.name])))
        value = value.to(param.device, param.dtype).contiguous()
        param.copy_(distribute_tensor(value, param.device_mesh, param.placements))
    if optimizer_state is not None and state.optimizer is not None:
        layouts = {p.name: p.layout for p in spec.table}
        state.step = load_optimizer_state(state.optimizer, state.setup.optimizer, state.params, layouts,
                                          optimizer_state)
        for param, slots in state.optimizer.state.items():
            for key, value in list(slots.items()):
                if key != "step" and isinstance(value, torch.Tensor) and not isinstance(value, DTensor):
                    slots[key] = distribute_tensor(value.contiguous(), param.device_mesh, param.placements)
    return state


# ---------------------------------------------------------------------- launching: torch's elastic launcher


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables for the duration (torch's agent hands its environment to the workers)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def launch_workers(job: Job) -> None:
    """Run the workers under torch's elastic launcher (what ``torchrun`` runs) with a static rendezvous.

    Equivalent to ``torchrun --nproc-per-node N --nnodes M --node-rank K --master-addr A
    --master-port P -m crossframe run CONFIG`` with ``CROSSFRAME_WORKER=1``; no restarts, and a
    failed worker stops the others within the agent's shutdown timeout.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException  # only the launcher needs these
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=job.nnodes, max_nodes=job.nnodes, nproc_per_node=job.nproc,
        run_id=f"crossframe-{job.master_port}", rdzv_backend="static",
        rdzv_endpoint=f"{job.master_addr}:{job.master_port}",
        rdzv_configs={"rank": job.node_rank, "timeout": int(max(job.timeout_s, 30))},
        max_restarts=0, monitor_interval=POLL_S, start_method="spawn",
        shutdown_timeout=int(INTERRUPT_GRACE_S))  # on a signal the agent passes it on, then waits this long
    quiet_loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.distributed.launcher")]
    levels = [lg.level for lg in quiet_loggers]
    for lg in quiet_loggers:
        lg.setLevel(logging.CRITICAL)  # the one-line error below replaces the agent's failure report
    try:
        with _environ(job.env):
            elastic_launch(config, sys.executable)(*job.args)
    except SignalException as exc:  # the launcher was interrupted; the agent passed the signal on and waited
        raise JobInterrupted(int(exc.sigval)) from None
    except ChildFailedError as exc:
        if all(f.exitcode == Interrupted.exit_code for f in exc.failures.values()):
            raise JobInterrupted(signal.SIGINT) from None  # a worker was signalled directly; all agreed
        failed = {r: (f.exitcode, float(f.timestamp)) for r, f in exc.failures.items()}
        rank = first_failure(job, failed)
        raise DistributedError(failure_line(job, rank, failed[rank][0])) from None
    except Exception as exc:  # rendezvous failures and the like
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise DistributedError(f"launch: torch's elastic launcher failed at {job.master_addr}:{job.master_port}: "
                               f"{line}") from None
    finally:
        for lg, level in zip(quiet_loggers, levels, strict=True):
            lg.setLevel(level)
