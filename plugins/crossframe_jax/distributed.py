"""Beyond one device for the jax backend: one device mesh, named shardings and the same jitted step.

A run with ``strategy: data_parallel`` or ``fully_sharded`` trains on a one-axis mesh (axis
``"data"``) over every device of the requested kind in the job: all local devices of a single
process, and across processes (after :func:`init_distributed` has called
``jax.distributed.initialize``, CPU collectives through gloo) the devices of every process, ordered
by process so that process ``r``'s devices hold rows ``[r * b * L, (r + 1) * b * L)`` of each global
micro-batch (``L`` devices per process, ``b`` = ``train.batch_size`` rows per device).

- ``data_parallel``: parameters and optimizer state replicated (``P()``), the batch sharded over
  ``"data"``.
- ``fully_sharded``: parameters and their optimizer slots sharded too, each over its largest axis
  that the mesh size divides (replicated when none does).

The step is the single-device step of :func:`crossframe_jax.backend.make_train_fn`, written on
*global* arrays, jitted with output shardings: XLA's partitioner inserts the collectives (the
gradient all-reduce, or reduce-scatter and all-gather when sharded), so the loss and the update are
those of one device with the whole global batch (token counts summed over it). With
``train.grad_accum = k`` the batch goes in already split as ``[k, rows, ...]`` with the row axis
sharded, so each micro-batch is spread over every device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from crossframe.backend import TrainSetup, WorldInfo
from crossframe.errors import CapabilityError, DistributedError
from crossframe.models.spec import Params
from crossframe_jax import devices
from crossframe_jax.models import load_canonical
from crossframe_jax.optim import OptState, load_optimizer_state

#: the strategies this module adds to ``single``
STRATEGIES = ("data_parallel", "fully_sharded")
#: the mesh axis the batch (and, fully sharded, the parameters) is split over
AXIS = "data"


# --------------------------------------------------------------------------- processes


def forced_host_devices(environ: Mapping[str, str] | None = None) -> int:
    """How many CPU devices XLA will create in this process (``--xla_force_host_platform_device_count``
    in ``XLA_FLAGS``, or ``jax_num_cpu_devices``); 1 when neither is set."""
    env = os.environ if environ is None else environ
    found = re.findall(r"--xla_force_host_platform_device_count=(\d+)", env.get("XLA_FLAGS", ""))
    configured = int(getattr(jax.config, "jax_num_cpu_devices", -1) or -1)
    return max([1, configured, *(int(n) for n in found)])


def ensure_cpu_threads(environ: MutableMapping[str, str] | None = None) -> None:
    """Give XLA's CPU client twice as many threads as host devices when there are several.

    The client's pool holds ``max(cores, devices)`` threads; with exactly one per device, an
    all-reduce across host devices now and then waits forever for its last participant (seen on
    a 2-core machine with 4 forced devices: 3 runs in 6 hung within 1000 steps; none in 10 with
    the larger pool). ``PJRT_NPROC`` sets the size and is read when the client starts, so this
    runs when the plugin is imported; a value the user set is kept.
    """
    env = os.environ if environ is None else environ
    devices_wanted = forced_host_devices(env)
    if devices_wanted > 1 and "PJRT_NPROC" not in env:
        env["PJRT_NPROC"] = str(max(os.cpu_count() or 1, 2 * devices_wanted))


ensure_cpu_threads()


def init_distributed(world: WorldInfo, device: str) -> None:
    """Join a multi-process job with ``jax.distributed.initialize`` (gloo collectives on the CPU).

    Nothing to do for one process: its mesh spans its local devices. The coordinator runs in
    rank 0 at ``master_addr:master_port``; ``collective_timeout_s`` bounds the wait for every
    process to connect, the heartbeat after which a silent process counts as dead, and the wait
    at shutdown. With ``device: gpu`` and several processes per node, each drives the GPU of its
    local rank.
    """
    if world.world_size <= 1:
        return
    if jax.distributed.is_initialized():
        return
    timeout = max(1, math.ceil(world.collective_timeout_s))
    # jax aborts the process (no Python exception) when it cannot reach the coordinator or bind
    # its port; checking both first turns those into one-line errors
    if world.rank == 0:
        _check_port_free(world)
    else:
        _wait_for_coordinator(world, timeout)
    from jax._src import xla_bridge

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if xla_bridge.backends_are_initialized():
        # listing devices (capabilities, resolve_device) started a backend without the distributed
        # client; no array exists yet, so a fresh one joins the job instead
        from jax.extend.backend import clear_backends

        clear_backends()
    local_ids = [world.local_rank] if device == "gpu" and world.local_world_size > 1 else None
    try:
        jax.distributed.initialize(
            coordinator_address=f"{world.master_addr}:{world.master_port}",
            num_processes=world.world_size,
            process_id=world.rank,
            local_device_ids=local_ids,
            initialization_timeout=timeout,
            heartbeat_timeout_seconds=timeout,
            shutdown_timeout_seconds=timeout,
        )
    except Exception as exc:  # jax raises RuntimeError/XlaRuntimeError with multi-line messages
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(f"launch: rank {world.rank} of {world.world_size} could not join the jax job at "
                               f"{world.master_addr}:{world.master_port} within {timeout} s ({first})") from None


@contextlib.contextmanager
def collective_errors() -> Iterator[None]:
    """Turn a failed computation of a multi-process job (gloo reports a peer gone as a read error,
    surfacing where the host first waits for a result) into one :class:`DistributedError` line."""
    try:
        yield
    except jax.errors.JaxRuntimeError as exc:
        raise_collective_error(exc)


def raise_collective_error(exc: Exception) -> None:
    """Re-raise ``exc`` as one :class:`DistributedError` line in a multi-process job, else unchanged."""
    if not jax.distributed.is_initialized():
        raise exc
    lines = str(exc).strip().splitlines()
    raise DistributedError(f"collective: worker {jax.process_index()} of {jax.process_count()} lost its peers "
                           f"({lines[0] if lines else type(exc).__name__}); another worker probably died") from None


def _check_port_free(world: WorldInfo) -> None:
    """Raise :class:`DistributedError` when rank 0 cannot bind the coordinator's port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", world.master_port))
        except OSError as exc:
            raise DistributedError(f"launch.master_port: rank 0 cannot start the jax coordinator on port "
                                   f"{world.master_port} ({exc.strerror or exc}); choose a free port") from None


def _wait_for_coordinator(world: WorldInfo, timeout: float) -> None:
    """Wait until rank 0's coordinator accepts connections, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((world.master_addr, world.master_port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise DistributedError(f"launch: rank {world.rank} found no jax coordinator at {world.master_addr}:"
                                       f"{world.master_port} within {timeout:g} s (launch.collective_timeout_s); "
                                       "is rank 0 running?") from None
            time.sleep(0.1)


def shutdown_distributed() -> None:
    """Leave the job (``jax.distributed.shutdown``) when this process joined one.

    Not while an exception propagates (a collective failed because a peer died, say): the
    shutdown barrier would wait for peers that are gone and then abort the process, before the
    worker's one-line error is recorded for the launcher. jax's exit handler shuts down anyway.
    """
    if jax.distributed.is_initialized() and sys.exc_info()[0] is None:
        jax.distributed.shutdown()


def max_over_ranks(value: int) -> int:
    """The largest ``value`` over the job's processes (``process_allgather`` through the coordinator's
    collectives), or ``value`` in a one-process job."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    try:
        gathered = multihost_utils.process_allgather(np.asarray([value], np.int64))
    except (jax.errors.JaxRuntimeError, ValueError) as exc:  # gloo reports a peer gone as a ValueError here
        raise_collective_error(exc)
    return int(np.max(gathered))


def _kind_devices(device: str, local: bool) -> list[Any]:
    """Devices of crossframe kind ``device`` (this process's, or the whole job's), by process then id."""
    found = jax.local_devices() if local else jax.devices()
    if device == "cpu":
        found = jax.local_devices(backend="cpu") if local else jax.devices("cpu")
    platforms = {"cpu": ("cpu",), "gpu": devices.GPU_PLATFORMS, "tpu": ("tpu",)}.get(device)
    if platforms is None:
        raise CapabilityError(f"device: unknown device '{device}'")
    chosen = [d for d in found if d.platform.lower() in platforms]
    if not chosen:
        raise CapabilityError(f"device: '{device}' requested, but jax sees no such device")
    return sorted(chosen, key=lambda d: (d.process_index, d.id))


def local_device(device: str) -> Any:
    """This process's first device of kind ``device`` (after ``jax.distributed.initialize``,
    ``jax.devices()`` lists every process's devices and only this process's are usable here)."""
    return _kind_devices(device, local=True)[0]


def local_replicas(world: WorldInfo, device: str) -> int:
    """Data-parallel replicas this process drives: its devices of kind ``device`` (1 for ``single``)."""
    if world.strategy == "single":
        return 1
    return len(_kind_devices(device, local=True))


# --------------------------------------------------------------------------- placement


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where everything lives: the mesh, and the shardings of parameters, slots and batches."""

    mesh: Mesh
    strategy: str
    grad_accum: int

    @functools.cached_property
    def replicated(self) -> NamedSharding:
        """A full copy on every device."""
        return NamedSharding(self.mesh, P())

    @functools.cached_property
    def rows(self) -> NamedSharding:
        """Leading axis (rows) split over the devices."""
        return NamedSharding(self.mesh, P(AXIS))

    @functools.cached_property
    def split_rows(self) -> NamedSharding:
        """``[grad_accum, rows, ...]`` with the rows split over the devices."""
        return NamedSharding(self.mesh, P(None, AXIS))

    @property
    def size(self) -> int:
        """Devices in the mesh (data-parallel replicas in the job)."""
        return int(self.mesh.devices.size)

    @property
    def multiprocess(self) -> bool:
        """Whether the mesh spans devices of several processes."""
        return jax.process_count() > 1

    def param_sharding(self, shape: tuple[int, ...]) -> NamedSharding:
        """Replicated (data parallel), or split over the largest axis the mesh size divides."""
        if self.strategy != "fully_sharded" or self.size == 1:
            return self.replicated
        axes = [a for a, n in enumerate(shape) if n >= self.size and n % self.size == 0]
        if not axes:
            return self.replicated
        axis = max(axes, key=lambda a: shape[a])  # the first of the largest
        return NamedSharding(self.mesh, P(*([None] * axis), AXIS))

    def params(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, NamedSharding]:
        """Shardings of the parameter pytree, by name."""
        return {name: self.param_sharding(tuple(shape)) for name, shape in shapes.items()}

    def opt_state(self, opt_shape: Any, params: Mapping[str, NamedSharding],
                  shapes: Mapping[str, tuple[int, ...]]) -> Any:
        """Shardings of an optimizer state: each slot like its parameter, scalars replicated."""

        def pick(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
            key = getattr(path[-1], "key", None) if path else None
            if key in params and tuple(leaf.shape) == tuple(shapes[key]):
                return params[key]
            return self.replicated

        return jax.tree_util.tree_map_with_path(pick, opt_shape)

    def batch(self, a: np.ndarray, split: bool) -> jax.Array:
        """This process's rows as its part of the global batch, sharded over ``"data"``.

        ``split``: ``a`` holds ``grad_accum`` micro-batches one after another; it goes in as
        ``[grad_accum, rows, ...]`` with the rows sharded, so every micro-batch spans all devices.
        """
        a = np.asarray(a)
        a = a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)
        if split:
            a = a.reshape(self.grad_accum, a.shape[0] // self.grad_accum, *a.shape[1:])
        sharding = self.split_rows if split else self.rows
        if self.multiprocess:
            return jax.make_array_from_process_local_data(sharding, a)
        return jax.device_put(a, sharding)

    def copy(self, a: np.ndarray) -> jax.Array:
        """An array every process holds in full, replicated on every device (DP-SGD's noise)."""
        a = np.asarray(a)
        if self.multiprocess:
            return jax.make_array_from_process_local_data(self.replicated, a, a.shape)
        return jax.device_put(a, self.replicated)

    def whole(self, a: np.ndarray | None) -> jax.Array | None:
        """An array every process holds in full (eval and predict inputs), split over the devices
        when its rows divide evenly, else replicated."""
        if a is None:
            return None
        a = np.asarray(a)
        a = a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)
        even = a.ndim > 0 and a.shape[0] % self.size == 0
        sharding = self.rows if even else self.replicated
        if self.multiprocess:
            return jax.make_array_from_process_local_data(sharding, a, a.shape)
        return jax.device_put(a, sharding)


def make_plan(setup: TrainSetup) -> Plan:
    """The mesh over every device of ``setup.device`` in the job, for ``setup.world.strategy``."""
    world = setup.world
    assert world is not None
    mesh = Mesh(np.array(_kind_devices(setup.device, local=False)), (AXIS,), axis_types=(AxisType.Auto,))
    return Plan(mesh, world.strategy, int(setup.grad_accum))


# --------------------------------------------------------------------------- states


def _program_class() -> type:
    from crossframe_jax.backend import JaxProgram

    @dataclasses.dataclass(frozen=True)
    class ShardedProgram(JaxProgram):  # type: ignore[misc, valid-type]
        """A :class:`~crossframe_jax.backend.JaxProgram` whose functions run on a mesh (see :class:`Plan`)."""

        plan: Plan | None = None
        param_shardings: dict[str, NamedSharding] = dataclasses.field(default_factory=dict)
        opt_shardings: Any = None

    return ShardedProgram


_SHARDED: list[type] = []


def sharded_program_class() -> type:
    """The program class of sharded states (created once, after the backend module is imported)."""
    if not _SHARDED:
        _SHARDED.append(_program_class())
    return _SHARDED[0]


def is_sharded(state: Any) -> bool:
    """Whether ``state`` (a ``JaxState``) lives on a mesh."""
    return getattr(state.program, "plan", None) is not None


def _raw(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The Python function behind a ``jax.jit`` object."""
    return getattr(fn, "__wrapped__", fn)


def create_state(backend: Any, setup: TrainSetup) -> Any:
    """A training state on the mesh: parameters and optimizer state placed by :class:`Plan`,
    steps jitted with their shardings."""
    from crossframe_jax import backend as jb

    program = backend._program(setup, training=True)
    assert program.tx is not None
    plan = make_plan(setup)
    shapes = {p.name: tuple(p.shape) for p in setup.spec.table}
    param_sh = plan.params(shapes)
    params = load_canonical(setup.spec, setup.weights, param_sh)
    extra: dict[str, Any] = {}
    if setup.masks:  # pruning masks (checked, replicated); the weights start pruned
        extra["masks"] = jb._native_masks(setup, plan.replicated)
        params = jb.apply_masks(params, extra["masks"])
    teacher_forward = None
    if setup.distill is not None:  # the teacher replicated, run in the same step
        extra["teacher"] = load_canonical(setup.distill.spec, setup.distill.weights, plan.replicated)
        teacher_forward = jb._teacher_forward(setup, program.device, devices.compute_dtype(setup.precision))
    tx = program.tx
    opt_shape = jax.eval_shape(lambda p: OptState(tx.init(p), jnp.zeros((), jnp.int32)), params)
    opt_sh = plan.opt_state(opt_shape, param_sh, shapes)
    opt = jax.jit(lambda p: OptState(tx.init(p), jnp.zeros((), jnp.int32)), out_shardings=opt_sh)(params)

    train = (_private_train(jb, program, plan, param_sh, opt_sh) if setup.privacy is not None
             else _train(jb, setup, program, plan, teacher_forward, param_sh, opt_sh))
    evaluate_jit = jax.jit(_raw(program.evaluate), out_shardings=plan.replicated)
    predict_jit = jax.jit(_raw(program.predict), out_shardings=plan.replicated)

    def evaluate(params: Any, *arrays: np.ndarray | None) -> Any:
        with collective_errors():
            return evaluate_jit(params, *(plan.whole(a) for a in arrays))

    def predict(params: Any, x: np.ndarray) -> Any:
        with collective_errors():
            return predict_jit(params, plan.whole(x))

    fields = {f.name: getattr(program, f.name) for f in dataclasses.fields(program)}
    fields.update(train=train, evaluate=evaluate, predict=predict, extra=(extra,) if extra else ())
    sharded = sharded_program_class()(**fields, plan=plan, param_shardings=param_sh, opt_shardings=opt_sh)
    return jb.JaxState(sharded, params, opt)


def _train(jb: Any, setup: TrainSetup, program: Any, plan: Plan, teacher_forward: Any, param_sh: Any,
           opt_sh: Any) -> Callable[..., Any]:
    """The train function on the mesh: :func:`crossframe_jax.backend.make_train_fn` on global arrays."""
    split = setup.grad_accum > 1
    step = jax.jit(_raw(jb.make_train_fn(setup, program.forward, program.tx, program.traces, teacher_forward,
                                         presplit=split)),
                   donate_argnums=(0, 1), out_shardings=(param_sh, opt_sh, plan.replicated))

    def train(params: Any, opt: Any, x: np.ndarray, y: np.ndarray, mask: np.ndarray | None, lr: Any,
              *rest: Any) -> Any:
        try:  # (not a context manager: this runs every step)
            return step(params, opt, plan.batch(x, split), plan.batch(y, split),
                        None if mask is None else plan.batch(mask, split), lr, *rest)
        except jax.errors.JaxRuntimeError as exc:
            raise_collective_error(exc)
            raise

    train.jitted = step  # type: ignore[attr-defined]  # for inspection (tests lower it to see the collectives)
    return train


def _private_train(jb: Any, program: Any, plan: Plan, param_sh: Any, opt_sh: Any) -> Callable[..., Any]:
    """DP-SGD's train function on a data-parallel mesh: the single-device DP step of
    :func:`crossframe_jax.privacy.make_train_fn`, written on the *global* batch, jitted with the rows
    sharded. Each device clips its own examples; XLA turns the sum over the batch's rows into an
    all-reduce of the clipped sums, and the noise (drawn by every process from ``(seed, step)``,
    replicated) is added once to that global sum, so every device takes the one-device step."""
    from crossframe_jax import privacy

    setup = program.setup
    if plan.strategy == "fully_sharded":
        raise CapabilityError("train.privacy: DP-SGD on jax runs with strategy data_parallel, not fully_sharded")
    step = jax.jit(_raw(privacy.make_train_fn(setup, program.forward, program.tx, program.traces,
                                              jb._uses_rng(setup))),
                   donate_argnums=(0, 1), out_shardings=(param_sh, opt_sh, plan.replicated))

    def train(params: Any, opt: Any, x: np.ndarray, y: np.ndarray, w: np.ndarray, noise: Mapping[str, np.ndarray],
              lr: Any, *rest: Any) -> Any:
        try:
            return step(params, opt, plan.batch(x, False), plan.batch(y, False), plan.batch(w, False),
                        {name: plan.copy(value) for name, value in noise.items()}, lr, *rest)
        except jax.errors.JaxRuntimeError as exc:
            raise_collective_error(exc)
            raise

    train.jitted = step  # type: ignore[attr-defined]
    return train


def gathered(state: Any) -> Any:
    """The state with parameters and optimizer state replicated (a collective: every process calls it),
    so :meth:`~crossframe_jax.backend.JaxBackend.export_state` can copy full arrays to the host."""
    program = state.program
    with collective_errors():  # a failed step shows here first when a checkpoint is due
        if program.plan.strategy != "fully_sharded" or not program.plan.multiprocess:
            jax.block_until_ready((state.params, state.opt_state))
            return state  # replicated, or every shard is addressable here
        gather = jax.jit(lambda t: t, out_shardings=program.plan.replicated)
        params, opt = jax.block_until_ready(gather((state.params, state.opt_state)))
    return dataclasses.replace(state, params=params, opt_state=opt)


def load_state(state: Any, weights: Params, optimizer_state: Params | None) -> Any:
    """A new sharded state holding canonical weights (and optimizer state from any backend)."""
    program = state.program
    setup = state.setup
    params = load_canonical(setup.spec, weights, program.param_shardings)
    if program.extra and program.extra[0].get("masks"):
        from crossframe_jax.backend import apply_masks

        params = apply_masks(params, program.extra[0]["masks"])
    opt = state.opt_state
    if optimizer_state is not None and program.tx is not None:
        opt = load_optimizer_state(setup.optimizer, program.tx, params, setup.spec, optimizer_state,
                                   program.plan.replicated)
        opt = jax.jit(lambda t: t, out_shardings=program.opt_shardings)(opt)
    return dataclasses.replace(state, params=params, opt_state=opt)
