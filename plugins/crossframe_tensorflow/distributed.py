"""Data parallel training on TensorFlow's own ``tf.distribute``: one step, many replicas.

- One process: ``tf.distribute.MirroredStrategy`` over this host's devices: every visible GPU,
  or on the host CPU as many logical CPU devices as ``CROSSFRAME_TF_CPU_DEVICES`` asks (default 1).
  The logical devices are configured by :func:`init_distributed`, before TensorFlow starts its
  runtime (TensorFlow refuses to change them afterwards); so :func:`available_devices` answers the
  backend's capabilities without starting it.
- Several processes (``world.world_size > 1``): ``TF_CONFIG`` is written from the world (worker
  ``i`` listens on ``master_addr:master_port + i``, this process is task ``rank``) and a
  ``tf.distribute.MultiWorkerMirroredStrategy`` is built on it, with a collective timeout of
  ``world.collective_timeout_s``. It drives every visible GPU of the process (one per process when
  several processes share a host: the one of its ``local_rank``), or one CPU device.

The variables and optimizer slots are created under ``strategy.scope()`` (mirrored on every replica's
device). The backend's one train step (:func:`crossframe_tensorflow.backend._train_function`) runs
per replica through ``strategy.run`` inside one ``tf.function``; a :class:`Replicas` object is the
step's only contact with the strategy:

- ``count``: replicas in sync; each replica divides its example losses by ``grad_accum * count``
  times its per-replica batch (token losses: by the all-reduced count of counted tokens), so the
  *sum* of the replicas' gradients is the gradient of the global batch's mean loss;
- ``all_sum``: the strategy's all-reduce (``ReplicaContext.all_reduce``; NCCL or ring
  collectives as TensorFlow chooses); clipping then sees the global norm on every replica;
- ``update``: ``merge_call`` into ``strategy.extended.update``, which runs the optimizer rule,
  loss scaling and pruning masks on each device's copy of the variables.

Each process's batch is ``grad_accum`` micro-batches of ``local_replicas * batch_size`` rows (its
contiguous part of the global micro-batch, see :mod:`crossframe.distributed.sharding`); replica ``j``
takes rows ``[j * b, (j + 1) * b)`` of every micro-batch, so replica order is global order.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from crossframe.backend import TrainSetup, WorldInfo
from crossframe.errors import CapabilityError, DistributedError
from crossframe_tensorflow import devices
from crossframe_tensorflow.devices import tf

#: split the host CPU into this many logical devices for MirroredStrategy in one process
CPU_DEVICES_ENV = "CROSSFRAME_TF_CPU_DEVICES"
#: across machines: every node's address, comma-separated, node 0 first (workers listen there)
NODE_HOSTS_ENV = "CROSSFRAME_TF_NODE_HOSTS"

StepFn = Callable[..., dict[str, tf.Tensor]]
#: what a collective raises when a peer died, hung past the timeout, or cannot be reached
COLLECTIVE_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                       tf.errors.CancelledError)


_NOISE = ("Graph execution error", "Detected at node", "File ", "[[", "Additional GRPC", ":UNKNOWN", "RPC:",
          "The error could be", "This is usually")


def _first_line(exc: Exception) -> str:
    """The reason in a TensorFlow error's message: its first line that is not framing or a traceback."""
    lines = [line for line in str(getattr(exc, "message", exc)).splitlines() if line.strip()]
    reasons = [line.strip() for line in lines if not line[0].isspace() and not line.startswith(_NOISE)]
    return (reasons or [line.strip() for line in lines] or [type(exc).__name__])[0]


def collective_failure(world: WorldInfo, exc: Exception) -> str:
    """One line for a failed all-reduce: this rank, TensorFlow's reason (first line), what to check."""
    return (f"rank {world.rank} of {world.world_size}: a collective of MultiWorkerMirroredStrategy failed "
            f"({type(exc).__name__}: {_first_line(exc)}); another worker stopped, hung longer than "
            f"launch.collective_timeout_s={world.collective_timeout_s:g}, or cannot be reached")


# ---------------------------------------------------------------------- the runtime, before it starts


def runtime_started() -> bool:
    """Whether TensorFlow's eager runtime is initialised (after which devices and collectives are fixed)."""
    from tensorflow.python.eager import context  # no public API says this; assume started if it changes

    return getattr(context.context(), "_context_handle", True) is not None


def available_devices() -> tuple[str, ...]:
    """:func:`crossframe_tensorflow.devices.available_devices`, without starting the runtime.

    Before the runtime starts only physical devices are listed (listing logical ones would start it,
    and then neither logical CPU devices nor multi-worker collectives could be configured).
    """
    if runtime_started():
        return devices.available_devices()
    prepare_runtime()
    kinds = {"gpu": "GPU", "tpu": "TPU"}
    return ("cpu", *(name for name, kind in kinds.items() if tf.config.list_physical_devices(kind)))


def cpu_devices_wanted() -> int:
    """Logical CPU devices asked for through ``CROSSFRAME_TF_CPU_DEVICES`` (1 when unset)."""
    raw = os.environ.get(CPU_DEVICES_ENV, "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise DistributedError(f"{CPU_DEVICES_ENV}: '{raw}' is not a positive number of logical CPU devices")
    return n


def configure_cpu_devices(n: int) -> None:
    """Split the first physical CPU into ``n`` logical devices (a no-op when it already is).

    Must happen before the runtime starts; afterwards a different count fails with one line.
    """
    have = len(tf.config.list_logical_devices("CPU")) if runtime_started() else None
    if have == n:
        return
    if have is not None:
        raise DistributedError(f"{CPU_DEVICES_ENV}: {n} logical CPU devices asked for, but TensorFlow already "
                               f"started with {have}; set it before the first TensorFlow call in the process")
    cpu = tf.config.list_physical_devices("CPU")[0]
    if n > 1 or tf.config.get_logical_device_configuration(cpu):
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def prepare_runtime() -> None:
    """Apply ``CROSSFRAME_TF_CPU_DEVICES`` if the runtime has not started yet (else leave it).

    Called as early as the backend can (capabilities, state creation), so single-device and
    mirrored states can live in one process: ``/CPU:0`` is the first logical device either way.
    """
    if os.environ.get(CPU_DEVICES_ENV, "").strip() and not runtime_started():
        configure_cpu_devices(cpu_devices_wanted())


def tf_config(world: WorldInfo, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``TF_CONFIG`` for ``world``: worker ``i`` at ``HOST:master_port + i``, this process task ``rank``.

    ``HOST`` is ``master_addr`` (every worker on one machine), or with ``CROSSFRAME_TF_NODE_HOSTS``
    (one address per node, comma-separated, node 0 first) the address of worker ``i``'s node
    ``i // local_world_size``: TensorFlow needs every worker's own address, which ``master_addr``
    alone does not give across machines.
    """
    env = os.environ if environ is None else environ
    last = world.master_port + world.world_size - 1
    if last > 65535:
        raise DistributedError(f"launch.master_port: TensorFlow workers listen on master_port..master_port+"
                               f"{world.world_size - 1}, past 65535; choose a lower port")
    hosts = [h.strip() for h in env.get(NODE_HOSTS_ENV, "").split(",") if h.strip()]
    per_node = max(1, world.local_world_size)
    if hosts and len(hosts) * per_node != world.world_size:
        raise DistributedError(f"{NODE_HOSTS_ENV}: {len(hosts)} node addresses given, but the job has "
                               f"{world.world_size} workers, {per_node} per node; give one address per node")
    workers = [f"{hosts[i // per_node] if hosts else world.master_addr}:{world.master_port + i}"
               for i in range(world.world_size)]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": world.rank}}


# ---------------------------------------------------------------------- joining the job


def init_distributed(world: WorldInfo, device: str) -> Replicas:
    """The strategy for ``world`` on ``device`` (``cpu`` / ``gpu`` / ``tpu``), wrapped as :class:`Replicas`."""
    if world.strategy == "fully_sharded":
        raise CapabilityError("strategy: 'fully_sharded' requested, but backend 'tensorflow' supports only "
                              "'single' or 'data_parallel' (tf.distribute mirrors variables; it does not shard them)")
    if device == "tpu":
        raise CapabilityError("strategy: 'data_parallel' on backend 'tensorflow' runs on cpu or gpu "
                              "(TPUStrategy is not wired in)")
    if world.world_size > 1:
        if runtime_started():
            raise DistributedError("launch: TensorFlow started before joining the multi-worker job; "
                                   "MultiWorkerMirroredStrategy must be built first in the process")
        if device == "gpu" and world.local_world_size > 1:
            gpus = tf.config.list_physical_devices("GPU")  # one GPU per process on a shared host
            tf.config.set_visible_devices(gpus[world.local_rank % len(gpus)], "GPU")
        os.environ["TF_CONFIG"] = json.dumps(tf_config(world))
        _bound_registration(world)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=world.collective_timeout_s)
        try:
            strategy: tf.distribute.Strategy = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=options)
        except tf.errors.OpError as exc:  # a peer that never registered, an address that cannot be bound
            workers = ", ".join(tf_config(world)["cluster"]["worker"])
            raise DistributedError(f"rank {world.rank} of {world.world_size}: could not join the TensorFlow job "
                                   f"({workers}): {type(exc).__name__}: {_first_line(exc)} "
                                   f"(waited up to launch.collective_timeout_s={world.collective_timeout_s:g})"
                                   ) from None
    else:
        if device == "cpu":
            configure_cpu_devices(cpu_devices_wanted())
        kind = devices.tf_device(device).strip("/").split(":")[0]
        names = [d.name for d in tf.config.list_logical_devices(kind)]
        # more than one GPU: NCCL all-reduce (the default); CPU devices: plain device-to-device sums
        cross = None if kind == "GPU" and len(names) > 1 else tf.distribute.ReductionToOneDevice()
        strategy = tf.distribute.MirroredStrategy(names, cross_device_ops=cross)
    return Replicas(strategy, world)


def _bound_registration(world: WorldInfo) -> None:
    """Give TensorFlow's coordination service (which MultiWorkerMirroredStrategy starts) our timeout.

    Without it a worker waits for absent peers to register, and for heartbeats of dead ones, for
    TensorFlow's defaults (minutes); with it the wait ends after ``collective_timeout_s``. The job
    layout is the one the strategy would configure itself (workers only, led by worker 0).
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    timeout_ms = max(1000, int(world.collective_timeout_s * 1000))
    context.context().configure_coordination_service(
        service_type="standalone", service_leader="/job:worker/replica:0/task:0",
        cluster_register_timeout_in_ms=timeout_ms, heartbeat_timeout_in_ms=timeout_ms,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=world.world_size)])


def local_replicas(world: WorldInfo, device: str) -> int:
    """Replicas this process drives, without starting the runtime (GPUs, or logical CPU devices in one process)."""
    if world.strategy == "single" and world.world_size == 1:
        return 1
    gpus = len(tf.config.list_physical_devices("GPU")) if device == "gpu" else 0
    if world.world_size > 1:
        return 1 if not gpus or world.local_world_size > 1 else gpus
    if gpus:
        return gpus
    if runtime_started() and device == "cpu":
        return len(tf.config.list_logical_devices("CPU"))
    return cpu_devices_wanted() if device == "cpu" else 1


def shutdown_distributed() -> None:
    """Forget ``TF_CONFIG`` (the collectives of MultiWorkerMirroredStrategy end with the process)."""
    os.environ.pop("TF_CONFIG", None)


def replicas_for(backend: Any, setup: TrainSetup) -> Replicas:
    """The backend's strategy for ``setup`` (joining the job now if nobody called ``init_distributed``),
    or a plain :class:`Replicas` for one device."""
    world = setup.world
    if world is None or (world.strategy == "single" and world.world_size == 1):
        prepare_runtime()
        return Replicas()
    if getattr(backend, "_replicas", None) is None:
        backend.init_distributed(world, setup.device)
    replicas: Replicas = backend._replicas
    if setup.compile:
        raise CapabilityError("train.compile: backend 'tensorflow' compiles steps with XLA only for strategy "
                              "'single' (tf.distribute's replica steps are not XLA-compiled here)")
    return replicas


# ---------------------------------------------------------------------- what the step sees


class Replicas:
    """The train step's view of the replicas; without a strategy, one device and no collectives."""

    def __init__(self, strategy: tf.distribute.Strategy | None = None, world: WorldInfo | None = None) -> None:
        self.strategy = strategy
        self.world = world
        self.count = 1 if strategy is None else int(strategy.num_replicas_in_sync)
        world_size = 1 if world is None else world.world_size
        self.local = self.count // world_size  # replicas this process drives
        self._anchor: tf.Variable | None = None
        if strategy is not None:
            with strategy.scope():  # a mirrored variable that ``update`` runs against on each device
                self._anchor = tf.Variable(0, dtype=tf.int32, trainable=False, name="replica_anchor")

    @contextlib.contextmanager
    def scope(self, device: str) -> Iterator[None]:
        """Where the state's variables are created: ``tf.device(device)``, or ``strategy.scope()`` (mirrored)."""
        with tf.device(device) if self.strategy is None else self.strategy.scope():
            yield

    def placement(self, device: str) -> str:
        """The device the steps pin their ops to: none under a strategy (each replica runs on its own)."""
        return device if self.strategy is None else ""

    def all_sum(self, values: Any) -> Any:
        """Sum tensors over all replicas (``None`` leaves pass through); identity on one device."""
        if self.strategy is None:
            return values
        flat = tf.nest.flatten(values)
        present = [i for i, v in enumerate(flat) if v is not None]
        summed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [flat[i] for i in present])
        for i, value in zip(present, summed, strict=True):
            flat[i] = value
        return tf.nest.pack_sequence_as(values, flat)

    def max_over_ranks(self, value: int) -> int:
        """The largest ``value`` over every replica of every worker (a MAX all-reduce across the job)."""
        if self.strategy is None:
            return value
        per_replica = self.strategy.run(lambda: tf.constant([value], tf.int64))
        return int(tf.reduce_max(self.strategy.gather(per_replica, axis=0)))  # tf's ReduceOp has no MAX

    def replica_seed(self, seed: tf.Tensor) -> tf.Tensor:
        """A per-replica random seed (dropout masks differ between replicas); unchanged on one device."""
        if self.strategy is None:
            return seed
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int32), alg="philox")

    def update(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` (assignments to variables) once per device, on that device's copies."""
        if self.strategy is None:
            fn(*args)
            return

        present = [i for i, a in enumerate(args) if a is not None]  # MultiWorkerMirrored drops None args

        def per_device(_anchor: tf.Variable, *local: Any) -> tf.Tensor:
            full: list[Any] = [None] * len(args)
            for i, value in zip(present, local, strict=True):
                full[i] = value
            fn(*full)
            return tf.constant(0)

        def merge(strategy: tf.distribute.Strategy, *merged: Any) -> Any:
            return strategy.extended.update(self._anchor, per_device, args=merged, group=True)

        tf.distribute.get_replica_context().merge_call(merge, args=tuple(args[i] for i in present))

    def compile(self, step: StepFn, grad_accum: int, language_model: bool) -> DistributedTrain:
        """The train function: ``step(x, y, mask, lr)`` run on every replica inside one ``tf.function``."""
        assert self.strategy is not None
        return DistributedTrain(self, step, grad_accum, language_model)


class DistributedTrain:
    """Called like the single-device train function, ``(x, y, [mask,] lr)`` with this process's batch.

    Splits the batch over the local replicas (replica ``j``: rows ``[j * b, (j + 1) * b)`` of each of
    the ``grad_accum`` micro-batches), runs the step through ``strategy.run`` and returns the first
    replica's outputs (losses and norms are all-reduced, so every replica holds the same values).
    """

    def __init__(self, replicas: Replicas, step: StepFn, grad_accum: int, language_model: bool) -> None:
        strategy = replicas.strategy
        assert strategy is not None
        self.replicas, self.strategy, self.k, self.lm = replicas, strategy, grad_accum, language_model

        def train(x: Any, y: Any, mask: Any, lr: tf.Tensor) -> dict[str, tf.Tensor]:
            out = strategy.run(step, args=(x, y, mask, lr))
            return {key: strategy.experimental_local_results(value)[0] for key, value in out.items()}

        self.function = tf.function(train, reduce_retracing=True)
        self._concrete: dict[tuple[tuple[int, ...], ...], Any] = {}

    def _split(self, value: tf.Tensor) -> Any:
        local = self.replicas.local
        if local == 1:
            return self.strategy.experimental_distribute_values_from_function(lambda ctx: value)
        rows = int(value.shape[0])
        if rows % (self.k * local):
            raise DistributedError(f"train.batch_size: this process's batch of {rows} rows does not split into "
                                   f"{self.k} micro-batches (train.grad_accum) for {local} replicas")
        b = rows // (self.k * local)
        array = np.asarray(value)
        parts = array.reshape(self.k, local, b, *array.shape[1:])
        first = 0 if self.replicas.world is None else self.replicas.world.rank * local

        def part(ctx: tf.distribute.InputContext) -> tf.Tensor:
            j = int(ctx.replica_id_in_sync_group) - first
            return tf.constant(np.ascontiguousarray(parts[:, j].reshape(self.k * b, *array.shape[1:])))

        return self.strategy.experimental_distribute_values_from_function(part)

    def __call__(self, *args: tf.Tensor) -> dict[str, tf.Tensor]:
        """One optimizer step on this process's batch: ``(x, y, lr)`` or ``(x, y, mask, lr)``."""
        *inputs, lr = args
        x, y, mask = (*inputs, None) if not self.lm else inputs
        split = [self._split(t) for t in (x, y)]
        inputs = (*split, None if mask is None else self._split(mask), lr)
        return self._call_traced(tuple(tuple(t.shape) for t in (x, y)), inputs)

    def _call_traced(self, key: tuple[tuple[int, ...], ...], inputs: tuple[Any, ...]) -> dict[str, tf.Tensor]:
        """``self.function`` on ``inputs``: traced once per batch shape ``key`` and called directly after
        (half the call overhead); a broken collective is one :class:`DistributedError` line."""
        try:
            concrete = self._concrete.get(key)
            if concrete is None:
                concrete = self._concrete[key] = self.function.get_concrete_function(*inputs)
            return concrete(*inputs)
        except COLLECTIVE_FAILURES as exc:
            world = self.replicas.world
            if world is None or world.world_size == 1:
                raise
            raise DistributedError(collective_failure(world, exc)) from None

    def tracing_count(self) -> int:
        """How many times the ``tf.function`` has been traced."""
        return int(self.function.experimental_get_tracing_count())
