"""The backend interface: the compiled pieces a framework supplies to the one training loop.

The loop owns everything else (data order, schedule, eval cadence, checkpoints, hooks). A
backend holds its native state in an opaque object and works *state in, state out*, so the
three framework styles fit one contract:

- PyTorch (eager, mutable): the state holds an ``nn.Module`` and a ``torch.optim`` optimizer;
  ``train_step`` mutates them and returns the same object.
- JAX (functional): the state is a pytree of parameters and optax state; ``train_step`` is a
  ``jax.jit`` function with donated buffers that returns a new state.
- TensorFlow (graph): the state holds ``tf.Variable`` s and optimizer slots; ``train_step`` is a
  ``tf.function`` that assigns to them and returns the same object.

Values returned by ``train_step`` and ``eval_step`` stay on the device; the loop passes them
to :meth:`Backend.fetch` only every ``train.log_every`` steps and once per evaluation.
Gradient accumulation (``TrainSetup.grad_accum`` micro-batches per call), global-norm
clipping and mixed precision happen inside ``train_step``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from crossframe.losses import LossSetup
from crossframe.models.spec import ModelSpec, Params

if TYPE_CHECKING:
    from collections.abc import Callable

    from crossframe.export.base import ExportArtifact, ExportRequest

DEVICE_PREFERENCE = ("gpu", "tpu", "cpu")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do on this machine; the core checks every run against it first."""

    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    strategies: tuple[str, ...]
    models: tuple[str, ...]
    optimizers: tuple[str, ...]
    compile: bool = False
    can_train: bool = True
    #: the step honours ``TrainSetup.objective`` (class weights, focal loss, label smoothing)
    weighted_losses: bool = False
    #: strategies whose DP-SGD step sums clipped gradients over every worker and adds the noise once
    private_strategies: tuple[str, ...] = ("single",)
    notes: dict[str, str] = field(default_factory=dict)  # e.g. {"tpu": "install torch_xla"}


@dataclass(frozen=True)
class CompilePreference:
    """A backend's rule for ``train.compile: auto`` on one device and strategy.

    ``enabled``: whether to compile; ``reason``: one line saying why (named in the run's log);
    ``measurable``: whether a measurement on this machine may override the rule (``False`` where the
    rule is a constraint: a strategy that cannot compile, a framework that always compiles).
    """

    enabled: bool
    reason: str
    measurable: bool = True


@dataclass
class DistillSetup:
    """A teacher for :class:`TrainSetup`: its spec and canonical weights, and the loss mix.

    The step's loss becomes ``(1 - alpha) * label_loss + alpha * T**2 * KL(softmax(t/T) || softmax(s/T))``
    (mean over examples, or over counted tokens for language models), with teacher logits ``t``
    computed in the same compiled step without gradients.
    """

    spec: ModelSpec
    weights: Params
    temperature: float = 2.0
    alpha: float = 0.5


@dataclass(frozen=True)
class WorldInfo:
    """Where this process sits in a multi-worker job (see :mod:`crossframe.distributed`)."""

    strategy: Literal["single", "data_parallel", "fully_sharded"] = "single"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    collective_timeout_s: float = 120.0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that logs, shows progress and writes files)."""
        return self.rank == 0


@dataclass
class TrainSetup:
    """Everything a backend needs to build a trainable state."""

    spec: ModelSpec
    weights: Params
    optimizer: str = "sgd"
    optimizer_params: dict[str, Any] = field(default_factory=lambda: {"lr": 0.01})
    device: str = "cpu"  # resolved: cpu | gpu | tpu
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum: int = 1
    clip_norm: float | None = None
    compile: bool = False
    seed: int = 0
    activation_checkpointing: bool = False
    #: pruning masks by canonical name (1 keeps, 0 prunes; canonical layout). The backend applies
    #: them inside the compiled step, after the update, so pruned weights stay exactly zero.
    masks: dict[str, np.ndarray] | None = None
    #: knowledge distillation: the teacher's model runs inside the student's step.
    distill: DistillSetup | None = None
    #: this process's place in a multi-worker job (``None``: a single process, one device).
    world: WorldInfo | None = None
    #: classification training loss with class weights, focal term or label smoothing (see
    #: :mod:`crossframe.losses`); ``None``: plain cross-entropy. ``eval_step`` ignores it.
    objective: LossSetup | None = None
    #: DP-SGD (a :class:`crossframe.privacy.PrivacySetup`): per-example clipping and the seeded noise each
    #: batch carries (``dp_noise/<name>``, ``dp_weight``); the backend's ``privacy.py`` runs the step.
    privacy: Any = None
    #: ``train.freeze`` / LoRA: canonical names that never change (no gradient step, no weight decay)
    frozen: frozenset[str] = frozenset()

    @property
    def loss(self) -> str:
        """``cross_entropy`` (classification), ``mse`` (regression) or ``token_cross_entropy``.

        ``token_cross_entropy`` (language modelling): batches are ``{"x", "y"}`` int token ids
        ``[B, T]`` and an optional float ``"mask"`` ``[B, T]`` (1 where a target counts). The
        loss of a step is ``sum(ce * mask) / sum(mask)`` over the *whole* batch, so ``grad_accum``
        micro-batches give exactly the gradient of one big batch even when masks differ.
        ``eval_step`` returns ``loss_sum`` (summed over counted tokens) and ``count`` (counted
        tokens); ``predict`` returns logits ``[B, T, vocab]``.
        """
        return {"classification": "cross_entropy", "regression": "mse",
                "language_modeling": "token_cross_entropy"}[self.spec.data_info.task]

    @property
    def decay_mask(self) -> dict[str, bool]:
        """Whether weight decay applies, by canonical parameter name."""
        return {p.name: p.decay and p.name not in self.frozen for p in self.spec.table}


class Backend(ABC):
    """A training backend. Implementations import their framework lazily (in methods)."""

    name: str = ""

    @abstractmethod
    def framework_version(self) -> str:
        """The version of the framework behind this backend."""

    @abstractmethod
    def capabilities(self) -> Capabilities:
        """Devices found, precisions, strategies, models and optimizers supported."""

    @abstractmethod
    def create_state(self, setup: TrainSetup) -> Any:
        """Build the native model from canonical weights, plus optimizer state, on the device."""

    @abstractmethod
    def train_step(self, state: Any, batch: dict[str, np.ndarray], lr: float) -> tuple[Any, dict[str, Any]]:
        """One optimizer step on ``batch`` (``grad_accum * batch_size`` examples) at rate ``lr``.

        Returns the new state and device values, at least ``loss`` (mean over the batch) and,
        when clipping is on, ``grad_norm`` (before clipping).
        """

    @abstractmethod
    def eval_step(self, state: Any, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Device sums for one eval batch: ``loss_sum``, ``count`` and ``confusion`` or error sums.

        A classifier may add its ``logits`` ``[B, C]`` (float32, on the device): the loop keeps them
        only when a score metric is configured, and otherwise asks :meth:`predict` for them.
        """

    @abstractmethod
    def predict(self, state: Any, x: np.ndarray) -> np.ndarray:
        """Model outputs (logits or regression values) as float32 numpy, in eval mode."""

    @abstractmethod
    def fetch(self, values: Any) -> Any:
        """Copy a nest of device values to host numpy (the only place the loop syncs)."""

    @abstractmethod
    def export_state(self, state: Any) -> tuple[Params, Params]:
        """Canonical weights and canonical optimizer state (``<slot>/<param>`` and ``step``)."""

    @abstractmethod
    def load_state(self, state: Any, weights: Params, optimizer_state: Params | None) -> Any:
        """Replace weights (and optimizer state when given) with canonical values; returns the state."""

    def inference_state(self, spec: ModelSpec, weights: Params, device: str = "cpu",
                        precision: str = "fp32") -> Any:
        """A state for :meth:`predict` only (by default a training state with plain SGD)."""
        return self.create_state(TrainSetup(spec, weights, device=device, precision=precision))  # type: ignore[arg-type]

    def input_gradients(self, state: Any, x: np.ndarray, targets: np.ndarray,
                        objective: Literal["output", "loss"] = "output") -> np.ndarray:
        """Gradients of the model's outputs with respect to its inputs ``x``, float32, shaped like ``x``.

        ``objective="output"``: of ``sum_i f(x)[i, targets[i]]`` (one output, a class logit or a
        regression output, per example); ``"loss"``: of ``sum_i cross_entropy(f(x)[i], targets[i])``
        (classification). In eval mode (no dropout), float32. Saliency, integrated gradients and
        adversarial attacks (:mod:`crossframe.explain`) are built on it; the conformance kit checks it
        against finite differences of the numpy reference. The default: the backend cannot.
        """
        from crossframe.errors import CapabilityError

        raise CapabilityError(f"explain: backend '{self.name}' does not compute input gradients")

    def set_threads(self, threads: int) -> None:
        """Use ``threads`` intra-op CPU threads (and one inter-op thread) from now on.

        Called once, right after the backend is created, with the run's thread count (see
        :mod:`crossframe.threads`; the environment already holds it for frameworks not yet
        imported). The default does nothing; a backend whose framework can change its pools at
        run time does so here. It must not fail when the pools can no longer change.
        """
        return None

    def measure_peak_flops(self, device: str, precision: str) -> float:
        """The device's practical matmul peak in FLOP/s, measured by a short probe (for MFU).

        The default times float32 matmuls in numpy; the first-party backends override it with a
        probe in their own framework on ``device`` at ``precision`` (numpy's BLAS may use narrower
        vector kernels than the framework does, and it cannot see an accelerator).
        """
        from crossframe.perf import numpy_matmul_peak

        return numpy_matmul_peak()

    def compile_preference(self, device: str, strategy: str) -> CompilePreference:
        """What ``train.compile: auto`` picks on ``device`` (``cpu``, ``gpu``, ``tpu``) with ``strategy``
        when no measurement of this machine is cached (see :mod:`crossframe.train.compile_choice`).
        The default: no compilation, the backend states no rule."""
        return CompilePreference(False, "the backend states no preference", measurable=False)

    def peak_device_memory_mb(self, device: str) -> float | None:
        """Peak memory allocated on ``device`` by this process so far, in MiB; ``None`` when the
        framework cannot tell (the default, and on the host, where
        :func:`crossframe.perf.peak_host_memory_mb` applies)."""
        return None

    def device_memory_mb(self, device: str) -> float | None:
        """Memory allocated on ``device`` by this process now, in MiB; ``None`` when the framework
        cannot tell (the default, and on the host). Read once per log window for ``sys/device_mb``."""
        return None

    def profiler(self, directory: Any, device: str) -> Any:
        """A context manager that runs the framework's own profiler while it is open and writes
        the trace under ``directory`` (a :class:`pathlib.Path`, created by the caller) when it
        closes, in a form TensorBoard's profile plugin or Perfetto opens (``crossframe run
        --profile N``). The default: ``None``, meaning the backend has no profiler; the loop then
        says so in one line."""
        return None

    def init_distributed(self, world: WorldInfo, device: str) -> None:
        """Join the multi-worker job ``world`` describes; called once per process before
        :meth:`create_state` when ``world.world_size > 1`` or ``world.strategy != "single"``.

        A backend connects its framework's own collectives here (torch ``init_process_group``,
        ``jax.distributed.initialize``, tf ``TF_CONFIG``) with a timeout of
        ``world.collective_timeout_s``. The default handles one process only.
        """
        if world.world_size != 1:
            from crossframe.errors import CapabilityError

            raise CapabilityError(f"launch: backend '{self.name}' cannot run {world.world_size} worker "
                                  "processes; use nproc_per_node=1 and nnodes=1")

    def local_replicas(self, world: WorldInfo, device: str) -> int:
        """How many data-parallel replicas this process drives (each takes ``train.batch_size``
        rows of every micro-batch); the default is one."""
        return 1

    def launch_workers(self, job: Any) -> bool | None:
        """Start and watch the worker processes of a :class:`crossframe.distributed.launch.Job` on this node.

        A backend overrides it to use its framework's own launcher (torch: the elastic launcher behind
        ``torchrun``), stopping every worker with one DistributedError line when one fails. The default
        returns ``False``: the core's launcher then starts them as subprocesses with the ``CROSSFRAME_*``
        variables (:func:`crossframe.distributed.launch.run_local`), which lives a floor above this contract.
        """
        return False

    def shutdown_distributed(self) -> None:
        """Leave the multi-worker job (destroy process groups and the like); the default does nothing."""
        return None

    def max_over_ranks(self, value: int) -> int:
        """The largest ``value`` over every process of the job: a collective, so every rank calls it at
        the same step (the loop does so at its log boundaries, to agree on where an interrupted job stops).

        The default serves one process: it returns ``value``.
        """
        return value

    #: the module (``"crossframe_torch.export"``) that implements this backend's exports: ``FORMATS``,
    #: ``export(request, format, options)`` and ``load(artifact)``; ``None``: the backend exports nothing
    export_module: str | None = None
    #: the module (``"crossframe_torch.quantize"``) of this backend's native int8 deployment step:
    #: ``STEP`` (``torch-int8``), ``FORMAT``, ``write_deployed(request, fp32_export, tolerance)`` returning
    #: ``(path, fp32_path or None, extra)`` and ``load_deployed(path, extra, threads)``; ``None``: none
    int8_module: str | None = None

    @staticmethod
    def _plugin_module(name: str | None) -> Any:
        """A module named by one of the attributes above, imported on first use (it imports converters)."""
        import importlib

        return importlib.import_module(name) if name else None

    def _exports(self) -> Any:
        """The export module, imported on first use."""
        return self._plugin_module(self.export_module)

    def native_int8(self) -> Any:
        """The native int8 deployment module (see :attr:`int8_module`), or ``None``."""
        return self._plugin_module(self.int8_module)

    def export_formats(self) -> tuple[str, ...]:
        """Formats :meth:`export` writes (``onnx`` and the native ones, the default native first); none by default."""
        module = self._exports()
        return tuple(module.FORMATS) if module else ()

    def export(self, request: ExportRequest, format: str, options: dict[str, Any]) -> ExportArtifact:
        """Write ``request``'s model in ``format`` under ``request.out_dir`` (see :mod:`crossframe.export`).

        ``options`` are the exporter's validated params (``opset`` for ONNX). Dynamic batch (and
        sequence) axes are exported; a converter failure raises one-line ExportError naming the op.
        """
        from crossframe.errors import CapabilityError

        module = self._exports()
        if module is None or format not in module.FORMATS:
            raise CapabilityError(f"export: backend '{self.name}' cannot export '{format}'")
        return module.export(request, format, options)

    def load_export(self, artifact: ExportArtifact) -> Callable[[np.ndarray], np.ndarray]:
        """A function running a native-format artefact this backend wrote: numpy batch in, float32 out."""
        from crossframe.errors import CapabilityError

        module = self._exports()
        if module is None:
            raise CapabilityError(f"export: backend '{self.name}' cannot load '{artifact.format}' artefacts")
        return module.load(artifact)

    def resolve_device(self, requested: str) -> str:
        """``auto`` becomes the best device found; an explicit name is returned unchanged."""
        if requested != "auto":
            return requested
        found = self.capabilities().devices
        return next(d for d in DEVICE_PREFERENCE if d in found)
