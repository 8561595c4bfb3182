"""The JAX backend: a parameter pytree, pure forward functions, optax, one jit-compiled step.

The state is functional. ``train_step`` calls one ``jax.jit`` function
``(params, opt_state, x, y, mask, lr) -> (params, opt_state, out)`` whose parameter and optimizer
buffers are donated (updated in place on the device), and returns a new :class:`JaxState`; the
state passed in must not be used again. Gradient accumulation (``lax.scan`` over contiguous
micro-batches), global-norm clipping, mixed precision, dropout keys and the optimizer update all
happen inside that one compiled function, so a step is one dispatch and never syncs with the host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from crossframe.backend import Backend, Capabilities, CompilePreference, TrainSetup, WorldInfo
from crossframe.errors import CapabilityError, ConfigError
from crossframe.models.spec import ModelSpec, Params
from crossframe_jax import devices, distributed
from crossframe_jax.models import Forward, export_canonical, load_canonical, make_forward, place
from crossframe_jax.optim import (
    SUPPORTED,
    OptState,
    build_transform,
    export_optimizer_state,
    init_state,
    load_optimizer_state,
)

MODELS = ("mlp", "cnn", "gpt", "graph", "hf")
CLIP_EPS = 1e-6  # scale = min(1, clip_norm / (norm + CLIP_EPS)), as crossframe.testing.reference


@dataclass(frozen=True)
class JaxProgram:
    """What does not change during a run: the setup, the device and the compiled functions."""

    setup: TrainSetup
    device: Any
    forward: Forward
    tx: optax.GradientTransformation | None
    train: Callable[..., Any] | None  # jit: (params, opt_state, x, y, mask, lr) -> (params, opt_state, out)
    evaluate: Callable[..., Any]  # jit: (params, x, y, mask) -> device sums
    predict: Callable[..., Any]  # jit: (params, x) -> float32 outputs
    traces: dict[str, int] = field(default_factory=dict)  # how often each function was traced
    #: language models: the jitted cached step of generation, built on first use (see crossframe_jax.decoding)
    generation: dict[str, Any] = field(default_factory=dict)
    #: extra arguments of ``train`` after ``lr``: ``()``, or ``({"masks": ..., "teacher": ...},)`` on the device
    extra: tuple[Any, ...] = ()

    @functools.cached_property
    def plain(self) -> bool:
        """Whether ``train`` runs as is at every step: it exists, no DP-SGD, and no token mask to pass (decided
        once: the step reads it, not the setup's properties)."""
        return self.train is not None and self.setup.privacy is None and self.setup.loss != "token_cross_entropy"


@dataclass(slots=True)
class JaxState:
    """The native state of a jax run; every step returns a new one (the old one's buffers are donated).

    Never changed in place. Not a frozen dataclass: building one goes through ``object.__setattr__`` per field,
    which the loop would pay at every step."""

    program: JaxProgram
    params: dict[str, jax.Array]
    opt_state: OptState | None

    @property
    def setup(self) -> TrainSetup:
        """The setup the state was built from."""
        return self.program.setup


# --------------------------------------------------------------------------- pure functions


def token_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-token softmax cross-entropy ``[B, T]`` (float32) of logits ``[B, T, V]`` and int targets ``[B, T]``."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, y.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def token_mask(y: jax.Array, mask: jax.Array | None) -> jax.Array:
    """The float32 weights of the targets: ``mask``, or ones (built in the graph) when there is none."""
    return jnp.ones(y.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)


def per_example_loss(loss: str, out: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy on integer labels, or squared error averaged over the outputs; float32."""
    out = out.astype(jnp.float32)
    if loss == "cross_entropy":
        picked = jnp.take_along_axis(out, y[:, None].astype(jnp.int32), axis=1)[:, 0]
        return jax.nn.logsumexp(out, axis=1) - picked
    return jnp.mean(jnp.square(out - y), axis=1)


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def _count_trace(traces: dict[str, int], name: str) -> None:
    traces[name] = traces.get(name, 0) + 1  # runs while tracing only, never per step


def distill_term(student: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` over the last axis (per example or token), float32."""
    log_s = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, axis=-1)
    log_t = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1) * (temperature * temperature)


def make_train_fn(setup: TrainSetup, forward: Forward, tx: optax.GradientTransformation,
                  traces: dict[str, int], teacher_forward: Forward | None = None,
                  presplit: bool = False) -> Callable[..., Any]:
    """The jit-compiled step, with params and optimizer state donated.

    ``presplit``: batches arrive as ``[grad_accum, rows, ...]`` (sharded runs, see ``distributed.py``).

    ``train(params, opt, x, y, mask, lr[, extra])``: ``mask`` is None except for language models
    given one (a None and an array each compile once: at most two variants per shape). ``extra``
    (not donated) holds ``masks`` (0/1 by name, multiplied into the parameters after the update)
    and ``teacher`` (the teacher's parameters, for ``setup.distill``); without it the step is the
    plain one, with no extra op.
    """
    k, loss_name, clip = setup.grad_accum, setup.loss, setup.clip_norm
    lm = loss_name == "token_cross_entropy"
    uses_rng = _uses_rng(setup)
    seed = int(setup.seed)
    distill = setup.distill
    frozen = setup.frozen
    graph = setup.spec.graph
    adapter_dropout = graph is not None and graph.lora_dropout > 0  # train.lora.dropout: the core's masks

    def call_of(step: jax.Array, i: Any) -> jax.Array | None:
        """The forward call that keys the adapters' dropout masks: ``step * grad_accum + micro_batch``."""
        return (step * k + i).astype(jnp.uint32) if adapter_dropout else None

    def run(params: Mapping[str, jax.Array], x: jax.Array, key: jax.Array | None, call: jax.Array | None
            ) -> jax.Array:
        kwargs: dict[str, Any] = {} if key is None else {"rng": key}
        if call is not None:
            kwargs.update(lora_call=call, seed=seed)
        return forward(params, x, train=True, **kwargs)

    def split_frozen(params: Mapping[str, jax.Array]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """``(trainable, frozen)``: gradients are taken with respect to the first only."""
        return ({n: v for n, v in params.items() if n not in frozen},
                {n: v for n, v in params.items() if n in frozen})

    def mixed(label: jax.Array, out: jax.Array, x: jax.Array, teacher: Any, m: jax.Array | None = None,
              total: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """``(loss, kd)``: the label loss alone, or ``(1 - alpha) * label + alpha * kd`` with the teacher."""
        if distill is None or teacher_forward is None:
            return label, None
        t = jax.lax.stop_gradient(teacher_forward(teacher, x))
        per = distill_term(out, t, distill.temperature)
        kd = jnp.sum(per * m) / total if m is not None else per.mean() / k
        return (1.0 - distill.alpha) * label + distill.alpha * kd, kd

    objective = setup.objective if loss_name == "cross_entropy" else None

    def mean_loss(trainable: Mapping[str, jax.Array], fixed: Mapping[str, jax.Array], x: jax.Array, y: jax.Array,
                  teacher: Any = None, key: jax.Array | None = None, call: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array | None]:
        out = run({**fixed, **trainable}, x, key, call)
        if objective is not None:  # class weights, focal loss, label smoothing
            from crossframe_jax.losses import per_example

            return mixed(per_example(out, y, objective).mean() / k, out, x, teacher)
        return mixed(per_example_loss(loss_name, out, y).mean() / k, out, x, teacher)

    def token_loss_part(trainable: Mapping[str, jax.Array], fixed: Mapping[str, jax.Array], x: jax.Array,
                        y: jax.Array, m: jax.Array, total: jax.Array, key: jax.Array | None, teacher: Any = None,
                        call: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """``sum(ce * mask) / total`` of one micro-batch, ``total`` the counted tokens of the whole batch."""
        out = run({**fixed, **trainable}, x, key, call)
        return mixed(jnp.sum(token_loss(out, y) * m) / total, out, x, teacher, m, total)

    def split(a: jax.Array) -> jax.Array:
        # k contiguous chunks in order: the same split as torch.chunk
        return a if presplit else a.reshape(k, a.shape[0] // k, *a.shape[1:])

    def lm_grads(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, mask: jax.Array | None,
                 step: jax.Array, teacher: Any) -> tuple[tuple[jax.Array, Any], Any]:
        x, y = x.astype(jnp.int32), y.astype(jnp.int32)
        m = token_mask(y, mask)
        count = jnp.sum(m)  # the whole batch's counted tokens, once, outside the scan
        total = jnp.where(count > 0, count, 1.0)  # an all-zero mask: loss 0 and zero gradients, not NaN
        # dropout keys: a pure function of (seed, step), so runs repeat exactly and resume exactly
        key = jax.random.fold_in(jax.random.key(seed), step) if uses_rng else None
        grad_fn = jax.value_and_grad(token_loss_part, has_aux=True)  # w.r.t. the trainable weights only
        trainable, fixed = split_frozen(params)
        if k == 1:
            return grad_fn(trainable, fixed, x, y, m, total, key, teacher, call_of(step, 0))

        def micro(carry: Any, part: tuple[jax.Array, ...]) -> tuple[Any, None]:
            grad_sum, loss_sum = carry
            xi, yi, mi, i = part
            key_i = None if key is None else jax.random.fold_in(key, i)
            loss_i, grads_i = grad_fn(trainable, fixed, xi, yi, mi, total, key_i, teacher, call_of(step, i))
            return (jax.tree.map(jnp.add, grad_sum, grads_i), jax.tree.map(jnp.add, loss_sum, loss_i)), None

        init = (jax.tree.map(jnp.zeros_like, trainable), zero_losses)
        (grads, loss), _ = jax.lax.scan(micro, init, (split(x), split(y), split(m), jnp.arange(k)))
        return loss, grads

    zero_losses = (jnp.zeros((), jnp.float32), None if distill is None else jnp.zeros((), jnp.float32))

    def train(params: dict[str, jax.Array], opt: OptState, x: jax.Array, y: jax.Array, mask: jax.Array | None,
              lr: jax.Array, extra: Mapping[str, Any] | None = None
              ) -> tuple[dict[str, jax.Array], OptState, dict[str, jax.Array]]:
        _count_trace(traces, "train")
        if k > 1 and not presplit and x.shape[0] % k:
            raise ValueError(f"train batch of {x.shape[0]} examples does not split into grad_accum={k} "
                             "equal micro-batches")
        extra = extra or {}
        teacher = extra.get("teacher")
        if lm:
            (loss, kd), grads = lm_grads(params, x, y, mask, opt.step, teacher)
        elif k == 1:
            key = jax.random.fold_in(jax.random.key(seed), opt.step) if uses_rng else None
            (loss, kd), grads = jax.value_and_grad(mean_loss, has_aux=True)(
                *split_frozen(params), x, y, teacher, key, call_of(opt.step, 0))
        else:
            grad_fn = jax.value_and_grad(mean_loss, has_aux=True)
            key = jax.random.fold_in(jax.random.key(seed), opt.step) if uses_rng else None
            trainable, fixed = split_frozen(params)

            def micro(carry: Any, batch: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[Any, None]:
                grad_sum, loss_sum = carry
                xi, yi, i = batch
                key_i = None if key is None else jax.random.fold_in(key, i)
                loss_i, grads_i = grad_fn(trainable, fixed, xi, yi, teacher, key_i, call_of(opt.step, i))
                return (jax.tree.map(jnp.add, grad_sum, grads_i), jax.tree.map(jnp.add, loss_sum, loss_i)), None

            init = (jax.tree.map(jnp.zeros_like, trainable), zero_losses)
            (grads, (loss, kd)), _ = jax.lax.scan(micro, init, (split(x), split(y), jnp.arange(k)))
        out = {"loss": loss}
        if kd is not None:
            out["distill_loss"] = kd
        if clip is not None:
            norm = global_norm(grads)
            scale = jnp.minimum(1.0, clip / (norm + CLIP_EPS))
            grads = jax.tree.map(lambda g: g * scale, grads)
            out["grad_norm"] = norm
        # train.freeze / LoRA: no gradient and no optimizer state for frozen weights (optim.trainable_only),
        # which come out bit for bit as they went in
        direction, inner = tx.update(grads, opt.inner, params)
        params = {n: p - lr * direction[n] if n in direction else p for n, p in params.items()}
        if extra.get("masks"):
            params = apply_masks(params, extra["masks"])
        return params, OptState(inner, opt.step + 1), out

    return jax.jit(train, donate_argnums=(0, 1))


def _uses_rng(setup: TrainSetup) -> bool:
    """Whether training draws random numbers: a dropout layer or attention dropout of the graph."""
    if setup.spec.graph is None:
        return False
    return setup.spec.graph.has_dropout


def apply_masks(params: Mapping[str, jax.Array], masks: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """``param * mask`` for the masked parameters (pruned entries become exactly zero); the rest unchanged."""
    return {name: p * masks[name] if name in masks else p for name, p in params.items()}


def make_eval_fn(setup: TrainSetup, forward: Forward, traces: dict[str, int]) -> Callable[..., Any]:
    """The jit-compiled eval sums (one compile per distinct batch size, and mask or none)."""
    loss_name, classes = setup.loss, setup.spec.data_info.num_outputs

    def evaluate(params: Mapping[str, jax.Array], x: jax.Array, y: jax.Array, mask: jax.Array | None
                 ) -> dict[str, jax.Array]:
        _count_trace(traces, "eval")
        out = forward(params, x).astype(jnp.float32)
        if loss_name == "token_cross_entropy":
            m = token_mask(y, mask)
            sums = {"loss_sum": jnp.sum(token_loss(out, y) * m)}
            if mask is not None:
                sums["count"] = jnp.sum(m)
            return sums
        sums = {"loss_sum": per_example_loss(loss_name, out, y).sum()}
        if loss_name == "cross_entropy":
            pred = jnp.argmax(out, axis=1)
            sums["confusion"] = jnp.zeros((classes, classes), jnp.int32).at[y, pred].add(1)
            sums["logits"] = out  # kept by the loop only for score metrics (ROC-AUC, log-loss, ...)
        else:
            err = out - y
            sums["abs_err_sum"] = jnp.abs(err).sum()
            sums["sq_err_sum"] = jnp.square(err).sum()
        return sums

    return jax.jit(evaluate)


def make_predict_fn(forward: Forward, traces: dict[str, int]) -> Callable[..., Any]:
    """The jit-compiled forward pass, float32 out."""

    def predict(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
        _count_trace(traces, "predict")
        return forward(params, x).astype(jnp.float32)

    return jax.jit(predict)


# --------------------------------------------------------------------------- the backend


class JaxBackend(Backend):
    """crossframe on JAX and optax."""

    name = "jax"
    export_module = "crossframe_jax.export"

    def framework_version(self) -> str:
        """jax's version."""
        return jax.__version__

    def capabilities(self) -> Capabilities:
        """CPU always; GPU with a CUDA/ROCm jaxlib; TPU on a TPU host. fp16 training is not offered."""
        return Capabilities(
            devices=devices.available_devices(),
            precisions=devices.TRAIN_PRECISIONS,
            strategies=("single", *distributed.STRATEGIES),
            models=MODELS,
            optimizers=SUPPORTED,
            compile=True,
            weighted_losses=True,
            private_strategies=("single", "data_parallel"),  # DP-SGD: XLA all-reduces the clipped sums
            notes={"tpu": "install jax[tpu] on a TPU host", "gpu": "install jax[cuda12] on a machine with a CUDA GPU",
                   "fp16": "no loss scaling in the jax backend yet; use bf16",
                   "compile": "steps are always jax.jit-compiled; train.compile is accepted and ignored"},
        )

    def input_gradients(self, state: Any, x: np.ndarray, targets: np.ndarray,
                        objective: str = "output") -> np.ndarray:
        """Gradients of outputs (or losses) with respect to inputs (see :mod:`crossframe_jax.explain`)."""
        from crossframe_jax.explain import input_gradients

        return input_gradients(state, x, targets, objective)

    def compile_preference(self, device: str, strategy: str) -> CompilePreference:
        """``train.compile: auto``: jax always jit-compiles its steps, whatever the setting."""
        return CompilePreference(True, "jax always jit-compiles its steps", measurable=False)

    def measure_peak_flops(self, device: str, precision: str) -> float:
        """Matmul FLOP/s of XLA on ``device`` at ``precision`` (a short probe, for MFU)."""
        from crossframe.perf import probe_peak

        size = 1024 if device == "cpu" else 4096
        dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}[precision]
        target = distributed.local_device(device)  # this process's own (jax_device's in one process)
        a, b = (jax.device_put(jnp.ones((size, size), dtype) * (i + 1), target) for i in range(2))
        matmul = jax.jit(jnp.dot)
        return probe_peak(lambda: matmul(a, b).block_until_ready(), size)

    def init_distributed(self, world: WorldInfo, device: str) -> None:
        """``jax.distributed.initialize`` with gloo CPU collectives (see :mod:`crossframe_jax.distributed`)."""
        distributed.init_distributed(world, device)

    def local_replicas(self, world: WorldInfo, device: str) -> int:
        """This process's devices of kind ``device`` in the mesh (1 for ``single``)."""
        return distributed.local_replicas(world, device)

    def shutdown_distributed(self) -> None:
        """``jax.distributed.shutdown`` when this process joined a job."""
        distributed.shutdown_distributed()

    def max_over_ranks(self, value: int) -> int:
        """The largest ``value`` over the job's processes (gathered from every host); ``value`` in one."""
        return distributed.max_over_ranks(value)

    def device_memory_mb(self, device: str) -> float | None:
        """``bytes_in_use`` from the device's ``memory_stats()``; None where XLA keeps none (CPU)."""
        if device == "cpu":
            return None
        used = (devices.jax_device(device).memory_stats() or {}).get("bytes_in_use")
        return None if used is None else used / 2**20

    def profiler(self, directory: Any, device: str) -> Any:
        """The framework's own profiler over ``--profile N`` steps (see :mod:`crossframe_jax.profiling`)."""
        from crossframe_jax.profiling import profile

        return profile(directory, device)

    def peak_device_memory_mb(self, device: str) -> float | None:
        """``peak_bytes_in_use`` from the device's ``memory_stats()``; None where XLA keeps none (CPU)."""
        if device == "cpu":
            return None
        stats = devices.jax_device(device).memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else peak / 2**20

    # ------------------------------------------------------------------ state

    def _program(self, setup: TrainSetup, training: bool) -> JaxProgram:
        device = devices.jax_device(setup.device)
        dtype = devices.compute_dtype(setup.precision, training=training)
        traces: dict[str, int] = {}
        forward = make_forward(setup.spec, dtype, remat=setup.activation_checkpointing and training, device=device)
        tx = build_transform(setup) if training else None
        teacher_forward = _teacher_forward(setup, device, dtype) if training and setup.distill is not None else None
        if tx is not None and setup.privacy is not None:  # DP-SGD: per-example clipping, the core's noise
            from crossframe_jax import privacy

            train = privacy.make_train_fn(setup, forward, tx, traces, _uses_rng(setup))
        else:
            train = make_train_fn(setup, forward, tx, traces, teacher_forward) if tx is not None else None
        return JaxProgram(setup, device, forward, tx, train, make_eval_fn(setup, forward, traces),
                          make_predict_fn(forward, traces), traces)

    def create_state(self, setup: TrainSetup) -> JaxState:
        """Place the canonical weights on the device and build the optimizer state; steps compile lazily.

        Pruning masks and the teacher's weights go to the device here, once, and ride along as the
        step's undonated ``extra`` argument; the weights start pruned.
        """
        if setup.world is not None and setup.world.strategy != "single":
            return distributed.create_state(self, setup)  # on a device mesh
        program = self._program(setup, training=True)
        params = load_canonical(setup.spec, setup.weights, program.device)
        assert program.tx is not None
        extra: dict[str, Any] = {}
        if setup.masks:
            extra["masks"] = _native_masks(setup, program.device)
            params = apply_masks(params, extra["masks"])
        if setup.distill is not None:
            extra["teacher"] = load_canonical(setup.distill.spec, setup.distill.weights, program.device)
        if extra:
            program = replace(program, extra=(extra,))
        return JaxState(program, params, init_state(program.tx, params, program.device))

    def inference_state(self, spec: ModelSpec, weights: Params, device: str = "cpu",
                        precision: str = "fp32") -> JaxState:
        """A state without an optimizer, for :meth:`predict` (fp16 is allowed here: no gradients)."""
        setup = TrainSetup(spec, weights, device=device, precision=precision)  # type: ignore[arg-type]
        program = self._program(setup, training=False)
        return JaxState(program, load_canonical(spec, weights, program.device), None)

    def export_state(self, state: JaxState) -> tuple[Params, Params]:
        """Canonical weights and optimizer state (exact float32 host copies)."""
        if distributed.is_sharded(state):
            state = distributed.gathered(state)  # full arrays on every process (a collective)
        weights = export_canonical(state.params, state.setup.spec)
        if state.opt_state is None:
            return weights, {}
        return weights, export_optimizer_state(state.setup.optimizer, state.opt_state, state.setup.spec)

    def load_state(self, state: JaxState, weights: Params, optimizer_state: Params | None) -> JaxState:
        """A new state holding canonical weights (and optimizer state, from any backend)."""
        if distributed.is_sharded(state):
            return distributed.load_state(state, weights, optimizer_state)
        program = state.program
        params = load_canonical(state.setup.spec, weights, program.device)
        if program.extra and program.extra[0].get("masks"):
            params = apply_masks(params, program.extra[0]["masks"])
        opt = state.opt_state
        if optimizer_state is not None and program.tx is not None:
            opt = load_optimizer_state(state.setup.optimizer, program.tx, params, state.setup.spec,
                                       optimizer_state, program.device)
        return JaxState(program, params, opt)

    # ------------------------------------------------------------------ steps

    def train_step(self, state: JaxState, batch: dict[str, np.ndarray], lr: float
                   ) -> tuple[JaxState, dict[str, Any]]:
        """One dispatch of the compiled step; no host sync.

        The numpy batch and the float32 rate go straight into the jitted call, which copies them
        to the device of the (committed) parameters in its C++ dispatch path: one transfer per
        array, and several times less per-step overhead than a ``jax.device_put`` beforehand.
        """
        program = state.program
        if program.plain:  # classification or regression without DP-SGD: nothing to decide per step
            params, opt, out = program.train(state.params, state.opt_state, batch["x"], batch["y"], None,
                                             np.float32(lr), *program.extra)
            return JaxState(program, params, opt), out
        if state.setup.privacy is not None:
            from crossframe_jax import privacy

            return privacy.train_step(state, batch, lr)
        if program.train is None:
            raise TypeError("train_step: this state was built by inference_state and cannot train")
        params, opt, out = program.train(state.params, state.opt_state, batch["x"], batch["y"], _mask(state, batch),
                                         np.float32(lr), *program.extra)
        return JaxState(program, params, opt), out

    def eval_step(self, state: JaxState, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Device sums for one batch: loss, count, and the confusion matrix or error sums.

        Language models: ``loss_sum`` over counted tokens and ``count``, ``sum(mask)`` on the
        device or ``B * T`` (a Python int) without a mask.
        """
        program = state.program
        y_host = batch["y"]
        sums: dict[str, Any] = dict(program.evaluate(state.params, batch["x"], y_host, _mask(state, batch)))
        if state.setup.loss == "token_cross_entropy":
            sums.setdefault("count", int(np.prod(np.shape(y_host))))
            return sums
        sums["count"] = len(y_host)
        if state.setup.loss == "mse":
            sums["outputs"] = int(y_host.shape[1])
        return sums

    def predict(self, state: JaxState, x: np.ndarray) -> np.ndarray:
        """Outputs as float32 numpy (logits ``[B, T, vocab]`` for language models, whose inputs are int ids)."""
        program = state.program
        dtype = np.int32 if state.setup.loss == "token_cross_entropy" else np.float32
        out = program.predict(state.params, np.ascontiguousarray(x, dtype=dtype))
        return np.array(jax.device_get(out), dtype=np.float32, copy=True)

    def generate(self, state: JaxState, prompt: np.ndarray, max_new_tokens: int,
                 sample: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Extend ``prompt`` (int ids ``[B, T0]``) by ``max_new_tokens``, returning ``[B, T0 + n]`` int64.

        The prompt runs once through the lowered graph, filling fixed-size per-attention-layer key/value
        caches ``[B, context, kv_heads, hd]``; then each new token runs alone (one compiled step for every
        position, caches donated and written with ``lax.dynamic_update_slice``). ``sample`` gets the last
        position's logits ``[B, vocab]`` as float32 numpy and returns the next ids ``[B]`` (one host sync
        per token, which sampling on the host needs anyway). Eval mode (no dropout), in the state's
        precision. Past the context, each further token is a full forward without cache over the last
        ``context`` tokens (the sliding window of ``crossframe.sampling.generate_by_recompute``); see
        :mod:`crossframe_jax.decoding`.
        """
        from crossframe_jax.decoding import graph_generate, is_graph_lm

        if not is_graph_lm(state.setup.spec):
            raise CapabilityError(f"generate: model '{state.setup.spec.name}' is not a language model")
        return graph_generate(self, state, prompt, max_new_tokens, sample)

    def fetch(self, values: Any) -> Any:
        """Device arrays to numpy, through lists, tuples and dicts (other leaves unchanged).

        ``jax.device_get`` starts every copy before waiting for any, which pays off on
        accelerators; on the CPU the arrays already live in host memory, and copying each one
        with numpy costs a seventh of ``device_get``'s per-array overhead. The loop fetches
        ``log_every`` pending loss scalars at a time: with ``device_get`` that cost about 12 us
        a step on the quickstart MLP (steps of 0.1 ms), with numpy about 1 us.
        """
        if isinstance(values, list) and _host_only() and all(type(v) is dict for v in values):
            # the loop's pending step outputs: a plain comprehension, no pytree walk (about a sixth of
            # ``jax.tree.map``'s cost for a window of 20 scalars, paid inside the timed loop)
            with distributed.collective_errors():
                return [{k: np.array(v) if isinstance(v, jax.Array) else
                         self.fetch(v) if isinstance(v, (dict, list, tuple)) else v for k, v in out.items()}
                        for out in values]
        leaves = jax.tree.leaves(values)
        first = next((leaf for leaf in leaves if isinstance(leaf, jax.Array)), None)
        if first is None:
            return values
        with distributed.collective_errors():  # a peer that died shows here: one DistributedError line
            if all(d.platform == "cpu" for d in first.devices()):
                return jax.tree.map(lambda v: np.array(v) if isinstance(v, jax.Array) else v, values)
            return jax.device_get(values)


_HOST_ONLY: list[bool] = []


def _host_only() -> bool:
    """Whether every device jax sees is the host CPU (so every array already lives in host memory)."""
    if not _HOST_ONLY:
        _HOST_ONLY.append(all(d.platform == "cpu" for d in jax.devices()))
    return _HOST_ONLY[0]


def _native_masks(setup: TrainSetup, device: Any) -> dict[str, jax.Array]:
    """Canonical 0/1 pruning masks as float32 arrays on ``device`` (JAX's layouts are the canonical ones)."""
    assert setup.masks is not None
    shapes = {p.name: tuple(p.shape) for p in setup.spec.table}
    for name, mask in setup.masks.items():
        if name not in shapes:
            raise ConfigError(f"masks: '{name}' is not a parameter of model '{setup.spec.name}'")
        if tuple(np.shape(mask)) != shapes[name]:
            raise ConfigError(f"masks: '{name}' has shape {tuple(np.shape(mask))}, the parameter has {shapes[name]}")
    return place(setup.masks, device)


def _teacher_forward(setup: TrainSetup, device: Any, dtype: Any) -> Forward:
    """The teacher's forward in the student's compute dtype (eval mode: no dropout)."""
    assert setup.distill is not None
    if setup.loss == "mse":
        raise CapabilityError("train.distill: distillation needs logits (classification or language modelling), "
                              "not regression outputs")
    return make_forward(setup.distill.spec, dtype, device=device)


def _mask(state: JaxState, batch: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The batch's ``mask`` for language models (float32), else None."""
    mask = batch.get("mask") if state.setup.loss == "token_cross_entropy" else None
    return None if mask is None else np.asarray(mask, dtype=np.float32)
