"""The TensorFlow backend: ``tf.Variable`` s in ``tf.Module`` s, steps compiled with ``tf.function``.

No Keras anywhere: the forward passes are tf ops (:mod:`crossframe_tensorflow.lowering`), the
optimizer rules are written in tf ops (:mod:`crossframe_tensorflow.optim`), so Keras' global
backend setting (``KERAS_BACKEND``) cannot change what runs, and every number is under our
control. Each step is one call of a ``tf.function`` traced once (through its concrete function,
see :class:`Compiled`), with a fixed input signature (batch dimension ``None``) and the learning
rate passed as a float32 scalar tensor, so neither a new rate nor a smaller last eval batch
retraces it. Gradient accumulation, clipping, mixed precision and the update all happen inside
that one graph. ``train.compile`` maps to ``jit_compile=True`` (XLA).

Language models (loss ``token_cross_entropy``) take int32 token ids ``x`` / ``y`` ``[B, T]`` and
always a float32 ``mask`` ``[B, T]``: a batch without one gets a tensor of ones, made once per
shape and kept on the state, so batches with and without masks run the same traced graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossframe.backend import Backend, Capabilities, CompilePreference, TrainSetup, WorldInfo
from crossframe.errors import CapabilityError, ConfigError
from crossframe.models.spec import ModelSpec, Params
from crossframe_tensorflow import devices, distributed
from crossframe_tensorflow.devices import tf
from crossframe_tensorflow.models import MODELS, RNG_ALG, Model, build_model, export_canonical, load_canonical
from crossframe_tensorflow.optim import SUPPORTED, DynamicLossScale, Optimizer, build_optimizer

CLIP_EPS = 1e-6  # clipping scale min(1, clip_norm / (norm + CLIP_EPS)), as crossframe.testing.reference


@dataclass
class TFState:
    """The native state of a TensorFlow run: variables are assigned in place by the steps."""

    setup: TrainSetup
    model: Model
    optimizer: Optimizer | None
    loss_scale: DynamicLossScale | None
    device: str  # "/CPU:0", "/GPU:0", ...
    dtype: tf.DType  # what the forward pass computes in
    train_fn: Compiled | None  # (x, y, [mask,] lr) -> {"loss", ["grad_norm"]}; None for an inference state
    eval_fn: Compiled  # (x, y, [mask]) -> device sums
    predict_fn: Compiled  # (x) -> float32 outputs
    label_dtype: tf.DType
    input_dtype: tf.DType = tf.float32  # int32 token ids for language models
    ones: dict[tuple[int, ...], tf.Tensor] = field(default_factory=dict)  # default masks, by shape
    #: pruning: (variable, 0/1 mask on the device) pairs, multiplied in after each update
    masked: list[tuple[tf.Variable, tf.Tensor]] | None = None
    #: distillation: the teacher's model (its variables are never watched by the tape)
    teacher: Model | None = None
    #: data parallel: the tf.distribute replicas the step runs on (one device without a strategy)
    replicas: distributed.Replicas = field(default_factory=distributed.Replicas)

    def apply_masks(self) -> None:
        """``variable *= mask`` for every masked variable (in a graph when called inside one)."""
        for variable, mask in self.masked or ():
            variable.assign(variable * mask)

    @property
    def language_model(self) -> bool:
        """Whether batches are token ids with a mask (loss ``token_cross_entropy``)."""
        return self.setup.loss == "token_cross_entropy"

    @property
    def step(self) -> int:
        """Updates applied so far."""
        return 0 if self.optimizer is None else int(self.optimizer.step.numpy())


class TensorFlowBackend(Backend):
    """crossframe on TensorFlow (without Keras)."""

    name = "tensorflow"
    export_module = "crossframe_tensorflow.export"
    int8_module = "crossframe_tensorflow.quantize"
    _replicas: distributed.Replicas | None = None  # set by init_distributed

    def framework_version(self) -> str:
        """tensorflow's version."""
        return tf.__version__

    def capabilities(self) -> Capabilities:
        """CPU always; GPU and TPU when TensorFlow finds one."""
        return Capabilities(
            devices=distributed.available_devices(),  # without starting the runtime
            precisions=("fp32", "bf16", "fp16"),
            strategies=("single", "data_parallel"),
            models=MODELS,
            optimizers=SUPPORTED,
            compile=True,
            weighted_losses=True,
            private_strategies=("single", "data_parallel"),  # DP-SGD: clipped sums all-reduced, noise once
            notes={"gpu": "no GPU visible to TensorFlow: tensorflow-cpu, or no CUDA device",
                   "tpu": "no TPU visible to TensorFlow: needs a TPU VM and a TPU build of TensorFlow",
                   "fully_sharded": "tf.distribute mirrors variables, it does not shard them; use data_parallel"},
        )

    def input_gradients(self, state: Any, x: np.ndarray, targets: np.ndarray,
                        objective: str = "output") -> np.ndarray:
        """Gradients of outputs (or losses) with respect to inputs (see :mod:`crossframe_tensorflow.explain`)."""
        from crossframe_tensorflow.explain import input_gradients

        return input_gradients(state, x, targets, objective)

    def set_threads(self, threads: int) -> None:
        """TensorFlow's intra-op pool size, and one inter-op thread, if its runtime has not started yet
        (afterwards the pools are fixed; the environment set before import already holds the count)."""
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)

    def compile_preference(self, device: str, strategy: str) -> CompilePreference:
        """``train.compile: auto``: XLA (``jit_compile=True``) for one device, measured faster than graph mode;
        never with ``data_parallel`` (tf.distribute's replica step is not XLA-compiled here)."""
        if strategy != "single":
            return CompilePreference(False, f"XLA is not used with strategy '{strategy}'", measurable=False)
        return CompilePreference(True, "XLA jit_compile: faster steps than graph mode (1.2x on the MLP of "
                                       "benchmarks/compile_choice)")

    def measure_peak_flops(self, device: str, precision: str) -> float:
        """Matmul FLOP/s of TensorFlow on ``device`` at ``precision`` (a short probe, for MFU)."""
        from crossframe.perf import probe_peak

        size = 1024 if device == "cpu" else 4096
        dtype = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}[precision]
        with tf.device(devices.tf_device(device)):
            a, b = (tf.random.uniform((size, size), dtype=tf.float32, seed=i) for i in range(2))
            a, b = tf.cast(a, dtype), tf.cast(b, dtype)
            matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
            return probe_peak(lambda: matmul().numpy(), size)

    def device_memory_mb(self, device: str) -> float | None:
        """``current`` of ``tf.config.experimental.get_memory_info``; None on the host."""
        if device == "cpu":
            return None
        info = tf.config.experimental.get_memory_info(devices.tf_device(device).strip("/"))
        return info["current"] / 2**20

    def profiler(self, directory: Any, device: str) -> Any:
        """The framework's own profiler over ``--profile N`` steps (see :mod:`crossframe_tensorflow.profiling`)."""
        from crossframe_tensorflow.profiling import profile

        return profile(directory, device)

    def peak_device_memory_mb(self, device: str) -> float | None:
        """``peak`` of ``tf.config.experimental.get_memory_info``; None on the host."""
        if device == "cpu":
            return None
        info = tf.config.experimental.get_memory_info(devices.tf_device(device).strip("/"))
        return info["peak"] / 2**20

    # ------------------------------------------------------------------ data parallel (see .distributed)

    def init_distributed(self, world: WorldInfo, device: str) -> None:
        """MirroredStrategy in one process, MultiWorkerMirroredStrategy (TF_CONFIG written) across processes."""
        self._replicas = distributed.init_distributed(world, device)

    def local_replicas(self, world: WorldInfo, device: str) -> int:
        """The strategy's replicas in this process: GPUs, or ``CROSSFRAME_TF_CPU_DEVICES`` logical CPUs."""
        return distributed.local_replicas(world, device)

    def shutdown_distributed(self) -> None:
        """Drop the strategy and ``TF_CONFIG``."""
        self._replicas = None
        distributed.shutdown_distributed()

    def max_over_ranks(self, value: int) -> int:
        """The largest ``value`` over every replica of the job's strategy; ``value`` without one."""
        return (self._replicas or distributed.Replicas()).max_over_ranks(value)

    # ------------------------------------------------------------------ state

    def create_state(self, setup: TrainSetup) -> TFState:
        """Variables from canonical weights, optimizer slots and the compiled steps, on the device."""
        device = devices.tf_device(setup.device)
        dtype = devices.compute_dtype(setup.precision)
        replicas = distributed.replicas_for(self, setup)  # data parallel: mirrored variables
        with replicas.scope(device):
            model = build_model(setup.spec, setup.weights, setup.activation_checkpointing)
            optimizer = build_optimizer(setup, model.params)
            loss_scale = DynamicLossScale() if setup.precision == "fp16" else None
            masked = _native_masks(setup, model) if setup.masks else None
            teacher = _teacher(setup) if setup.distill is not None else None
        state = self._state(setup, model, optimizer, loss_scale, replicas.placement(device), dtype)
        state.replicas = replicas
        state.masked, state.teacher = masked, teacher
        state.apply_masks()
        if setup.privacy is not None:  # DP-SGD: per-example clipping plus the core's noise
            from crossframe_tensorflow import privacy

            state.train_fn = privacy.train_function(state)
        else:
            state.train_fn = _train_function(state)
        return state

    def inference_state(self, spec: ModelSpec, weights: Params, device: str = "cpu",
                        precision: str = "fp32") -> TFState:
        """Variables and the eval / predict functions only: no optimizer, no train step."""
        setup = TrainSetup(spec, weights, device=device, precision=precision)  # type: ignore[arg-type]
        tf_device = devices.tf_device(device)
        with tf.device(tf_device):
            model = build_model(spec, weights)
        return self._state(setup, model, None, None, tf_device, devices.compute_dtype(precision))

    def _state(self, setup: TrainSetup, model: Model, optimizer: Optimizer | None,
               loss_scale: DynamicLossScale | None, device: str, dtype: tf.DType) -> TFState:
        label_dtype = {"cross_entropy": tf.int64, "token_cross_entropy": tf.int32}.get(setup.loss, tf.float32)
        input_dtype = tf.int32 if setup.loss == "token_cross_entropy" else tf.float32
        state = TFState(setup, model, optimizer, loss_scale, device, dtype, None, None, None,  # type: ignore[arg-type]
                        label_dtype, input_dtype)
        state.eval_fn = _eval_function(state)
        state.predict_fn = _predict_function(state)
        return state

    def export_state(self, state: TFState) -> tuple[Params, Params]:
        """Canonical weights and optimizer state (identity layouts: plain float32 copies)."""
        if state.optimizer is None:
            raise CapabilityError("export_state: an inference state has no optimizer state")
        return export_canonical(state.model), state.optimizer.export()

    def load_state(self, state: TFState, weights: Params, optimizer_state: Params | None) -> TFState:
        """Assign canonical weights (and optimizer state) to the variables; the same state comes back."""
        load_canonical(state.model, weights)
        state.apply_masks()
        if optimizer_state is not None and state.optimizer is not None:
            state.optimizer.load(optimizer_state)
        return state

    # ------------------------------------------------------------------ steps

    def _inputs(self, state: TFState, batch: dict[str, np.ndarray]) -> tuple[tf.Tensor, ...]:
        """``(x, y)``, or ``(x, y, mask)`` for a language model (ones when the batch has no mask)."""
        # tf.constant of an array already in the signature's dtype: half the cost of tf.convert_to_tensor's
        # dispatch, which a small model's step feels
        if not state.language_model:
            x = tf.constant(np.asarray(batch["x"], dtype=np.float32))
            y = tf.constant(np.asarray(batch["y"], dtype=state.label_dtype.as_numpy_dtype))
            return x, y
        x = tf.constant(np.asarray(batch["x"], dtype=np.int32))
        y = tf.constant(np.asarray(batch["y"], dtype=np.int32))
        mask = batch.get("mask")
        if mask is not None:
            return x, y, tf.constant(np.asarray(mask, dtype=np.float32))
        shape = tuple(np.shape(batch["y"]))
        ones = state.ones.get(shape)
        if ones is None:
            with tf.device(state.device):
                ones = state.ones[shape] = tf.ones(shape, tf.float32)
        return x, y, ones

    def train_step(self, state: TFState, batch: dict[str, np.ndarray], lr: float) -> tuple[TFState, dict[str, Any]]:
        """One call of the compiled step: accumulate, clip, update; no host sync."""
        if state.train_fn is None:
            raise CapabilityError("train_step: this state was built for inference only")
        if state.setup.privacy is not None:
            from crossframe_tensorflow import privacy

            return state, privacy.train_step(state, batch, lr)
        return state, state.train_fn(*self._inputs(state, batch), tf.constant(lr, tf.float32))

    def eval_step(self, state: TFState, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Device sums for one batch: loss, count, and the confusion matrix or error sums."""
        sums = state.eval_fn(*self._inputs(state, batch))
        if state.setup.loss == "mse":
            sums["outputs"] = state.setup.spec.data_info.num_outputs
        return sums

    def predict(self, state: TFState, x: np.ndarray) -> np.ndarray:
        """Outputs as float32 numpy (logits ``[B, T, vocab]`` for a language model's int token ids)."""
        dtype = np.int32 if state.language_model else np.float32
        out = state.predict_fn(tf.convert_to_tensor(np.asarray(x, dtype=dtype)))
        return np.array(out.numpy(), dtype=np.float32, copy=True)

    def generate(self, state: TFState, prompt: np.ndarray, max_new_tokens: int,
                 sample: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Extend ``prompt`` (int ids ``[B, T0]``) by ``max_new_tokens`` with the decoder graph's KV cache
        (see :mod:`crossframe_tensorflow.decoding`)."""
        from crossframe_tensorflow.decoding import graph_generate

        return graph_generate(self, state, prompt, max_new_tokens, sample)

    def fetch(self, values: Any) -> Any:
        """Tensors (and variables) to numpy, through lists, tuples and dicts.

        The loop's pending step outputs (a list of flat dicts) take one comprehension instead of a
        recursive call per value: it runs at every log step, inside the timed loop."""
        if isinstance(values, list) and all(type(v) is dict for v in values):
            return [{k: v.numpy() if isinstance(v, (tf.Tensor, tf.Variable)) else
                     self.fetch(v) if isinstance(v, (dict, list, tuple)) else v for k, v in out.items()}
                    for out in values]
        if isinstance(values, (tf.Tensor, tf.Variable)):
            return values.numpy()
        if isinstance(values, dict):
            return {k: self.fetch(v) for k, v in values.items()}
        if isinstance(values, (list, tuple)):
            return type(values)(self.fetch(v) for v in values)
        return values


# ---------------------------------------------------------------------- the compiled functions


def _specs(state: TFState) -> list[tf.TensorSpec]:
    """Input signature of the train (without the rate) and eval functions: ``x, y`` or ``x, y, mask``."""
    info = state.setup.spec.data_info
    x = tf.TensorSpec([None, *info.input_shape], state.input_dtype, name="x")
    if state.language_model:
        return [x, tf.TensorSpec([None, *info.input_shape], tf.int32, name="y"),
                tf.TensorSpec([None, *info.input_shape], tf.float32, name="mask")]
    y_shape = [None] if state.setup.loss == "cross_entropy" else [None, info.num_outputs]
    return [x, tf.TensorSpec(y_shape, state.label_dtype, name="y")]


def _loss_fn(state: TFState) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Per-example (per-token) losses in float32: softmax cross-entropy, or squared error averaged over outputs."""
    if state.setup.loss in ("cross_entropy", "token_cross_entropy"):
        def per_example(out: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=out)
    else:
        def per_example(out: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            return tf.reduce_mean(tf.square(out - y), axis=1)
    return per_example


def _train_function(state: TFState) -> Compiled:
    setup, model, optimizer, loss_scale = state.setup, state.model, state.optimizer, state.loss_scale
    assert optimizer is not None
    per_example = _loss_fn(state)
    if setup.objective is not None and setup.loss == "cross_entropy":  # class weights, focal, smoothing
        from crossframe_tensorflow.losses import bound

        per_example = bound(setup.objective)
    names = [p.name for p in setup.spec.table]
    variables = model.ordered
    if setup.frozen:  # train.freeze / LoRA: gradients only for the trainable variables (frozen: none taken)
        kept = [i for i, name in enumerate(names) if name not in setup.frozen]
        names, variables = [names[i] for i in kept], [variables[i] for i in kept]
    k, clip_norm = setup.grad_accum, setup.clip_norm
    graph = setup.spec.graph
    adapter_dropout = graph is not None and graph.lora_dropout > 0  # train.lora.dropout: the core's masks
    lm = state.language_model
    run_seed = int(setup.seed) % 2**63
    distill, teacher = setup.distill, state.teacher
    replicas = state.replicas

    def step(x: tf.Tensor, y: tf.Tensor, mask: tf.Tensor | None, lr: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.device(state.device):
            # k contiguous micro-batches, in order (chunk i = rows i*b:(i+1)*b, as torch.chunk)
            inputs = [x, y] if mask is None else [x, y, mask]
            chunks = list(zip(*(tf.split(t, k) for t in inputs), strict=True)) if k > 1 else [inputs]
            # language models: the step's loss is sum(ce * mask) / sum(mask) over the whole batch, so
            # the count is taken once and each micro-batch adds its masked sum over that count
            total = replicas.all_sum(tf.reduce_sum(mask)) if lm else None  # counted tokens of the global batch
            # dropout masks: a function of (run seed, step before this update, micro-batch)
            seed = (replicas.replica_seed(tf.stack([tf.constant(run_seed, tf.int64), optimizer.step.read_value()]))
                    if model.uses_rng else None)
            loss: tf.Tensor | None = None
            kd_sum: tf.Tensor | None = None
            grads: list[tf.Tensor] | None = None
            for i, chunk in enumerate(chunks):
                micro_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, i, alg=RNG_ALG)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(variables)
                    calls = {} if not adapter_dropout else {  # step * grad_accum + micro-batch
                        "lora_call": optimizer.step.read_value() * k + i, "lora_seed": int(setup.seed)}
                    out = model(chunk[0], state.dtype, training=True, seed=micro_seed, **calls)
                    if lm:
                        part = tf.math.divide_no_nan(tf.reduce_sum(per_example(out, chunk[1]) * chunk[2]), total)
                    else:
                        part = tf.reduce_mean(per_example(out, chunk[1]))
                        if k * replicas.count > 1:  # a replica's share of the global batch's mean
                            part = part / (k * replicas.count)
                    if distill is not None and teacher is not None:
                        per = distill_term(out, tf.stop_gradient(teacher(chunk[0], state.dtype)), distill.temperature)
                        kd = (tf.math.divide_no_nan(tf.reduce_sum(per * chunk[2]), total) if lm
                              else tf.reduce_mean(per) / (k * replicas.count))
                        part = (1.0 - distill.alpha) * part + distill.alpha * kd
                        kd_sum = kd if kd_sum is None else kd_sum + kd
                    target = part * loss_scale.scale if loss_scale is not None else part
                # embedding lookups give IndexedSlices: densify, to sum, clip and update as the rest
                g = [tf.convert_to_tensor(gi) for gi in tape.gradient(target, variables)]
                grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
                loss = part if loss is None else loss + part
            assert grads is not None and loss is not None
            loss, grads, kd_sum = replicas.all_sum((loss, grads, kd_sum))  # the strategy's all-reduce
            out = {"loss": loss}
            if kd_sum is not None:
                out["distill_loss"] = kd_sum
            finite = None
            if loss_scale is not None:
                inv = 1.0 / loss_scale.scale
                grads = [g * inv for g in grads]
                finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
            if clip_norm is not None:
                norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]))
                scale = tf.minimum(1.0, clip_norm / (norm + CLIP_EPS))
                grads = [g * scale for g in grads]
                out["grad_norm"] = norm

            def update(by_name: dict[str, tf.Tensor], lr: tf.Tensor, finite: tf.Tensor | None) -> None:
                if loss_scale is None:
                    optimizer.apply(by_name, lr)
                else:
                    def apply() -> tf.Tensor:
                        optimizer.apply(by_name, lr)
                        return tf.constant(True)

                    tf.cond(finite, apply, lambda: tf.constant(False))
                    loss_scale.update(finite)
                if state.masked:
                    state.apply_masks()

            # data parallel: on every replica's copy of the variables (strategy.extended.update)
            replicas.update(update, dict(zip(names, grads, strict=True)), lr, finite)
            return out

    if lm:
        def train(x: tf.Tensor, y: tf.Tensor, mask: tf.Tensor, lr: tf.Tensor) -> dict[str, tf.Tensor]:
            return step(x, y, mask, lr)
    else:
        def train(x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor) -> dict[str, tf.Tensor]:  # type: ignore[misc]
            return step(x, y, None, lr)

    if replicas.strategy is not None:  # strategy.run(step) per replica inside one tf.function
        return replicas.compile(step, k, lm)  # type: ignore[return-value]
    signature = [*_specs(state), tf.TensorSpec([], tf.float32, name="lr")]
    return Compiled(tf.function(train, input_signature=signature, jit_compile=setup.compile))


def distill_term(student: tf.Tensor, teacher: tf.Tensor, temperature: float) -> tf.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` over the last axis (per example or token), float32."""
    log_s = tf.nn.log_softmax(tf.cast(student, tf.float32) / temperature, axis=-1)
    log_t = tf.nn.log_softmax(tf.cast(teacher, tf.float32) / temperature, axis=-1)
    return tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1) * (temperature * temperature)


def _native_masks(setup: TrainSetup, model: Model) -> list[tuple[tf.Variable, tf.Tensor]]:
    """Canonical 0/1 masks as float32 tensors (TensorFlow's layouts are the canonical ones), with their variables.

    Create under the state's ``tf.device``; the train function captures them (no per-step copy).
    """
    assert setup.masks is not None
    shapes = {p.name: tuple(p.shape) for p in setup.spec.table}
    pairs = []
    for name, mask in setup.masks.items():
        if name not in shapes:
            raise ConfigError(f"masks: '{name}' is not a parameter of model '{setup.spec.name}'")
        if tuple(np.shape(mask)) != shapes[name]:
            raise ConfigError(f"masks: '{name}' has shape {tuple(np.shape(mask))}, the parameter has {shapes[name]}")
        variable = model.params[name]
        pairs.append((variable, tf.constant(np.asarray(mask, dtype=np.float32), dtype=variable.dtype)))
    return pairs


def _teacher(setup: TrainSetup) -> Model:
    """The teacher's model from canonical weights (create under the state's ``tf.device``)."""
    assert setup.distill is not None
    if setup.loss == "mse":
        raise CapabilityError("train.distill: distillation needs logits (classification or language modelling), "
                              "not regression outputs")
    return build_model(setup.distill.spec, setup.distill.weights)


def _eval_function(state: TFState) -> Compiled:
    model, per_example = state.model, _loss_fn(state)
    classes = state.setup.spec.data_info.num_outputs
    classification = state.setup.loss == "cross_entropy"

    def evaluate(x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.device(state.device):
            out = model(x, state.dtype)
            sums = {"loss_sum": tf.reduce_sum(per_example(out, y)), "count": tf.shape(y)[0]}
            if classification:
                pred = tf.argmax(out, axis=1, output_type=tf.int64)
                cells = tf.math.unsorted_segment_sum(tf.ones_like(y, tf.int32), y * classes + pred,
                                                     classes * classes)
                sums["confusion"] = tf.reshape(cells, [classes, classes])  # rows truth, columns prediction
                sums["logits"] = tf.cast(out, tf.float32)  # kept by the loop only for score metrics
            else:
                err = out - y
                sums["abs_err_sum"] = tf.reduce_sum(tf.abs(err))
                sums["sq_err_sum"] = tf.reduce_sum(tf.square(err))
            return sums

    def evaluate_lm(x: tf.Tensor, y: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.device(state.device):
            ce = per_example(model(x, state.dtype), y)
            return {"loss_sum": tf.reduce_sum(ce * mask), "count": tf.reduce_sum(mask)}  # counted tokens

    function = evaluate_lm if state.language_model else evaluate
    return Compiled(tf.function(function, input_signature=_specs(state), jit_compile=state.setup.compile))


def _predict_function(state: TFState) -> Compiled:
    model = state.model
    x_spec = _specs(state)[0]
    if state.language_model:  # any prompt length up to max_seq_len
        x_spec = tf.TensorSpec([None, None], tf.int32, name="x")

    def predict(x: tf.Tensor) -> tf.Tensor:
        with tf.device(state.device):
            return model(x, state.dtype)

    return Compiled(tf.function(predict, input_signature=[x_spec], jit_compile=state.setup.compile))


class Compiled:
    """A ``tf.function`` with a fixed input signature, called through its one concrete function.

    The concrete function is traced on the first call (so the first step pays for tracing and,
    with ``jit_compile``, XLA compilation) and called directly afterwards: the same graph as
    calling the ``tf.function``, without its per-call Python argument binding and signature
    matching (about 0.1 to 0.25 ms per call on CPU, as much as a small model's whole step). A
    concrete function cannot retrace: an input that does not fit the signature raises.

    The first call goes through the concrete function's structured call, which checks the
    arguments against the signature; later calls hand the tensors straight to its flat call
    (``_call_flat``, what the structured call ends in), skipping the binding of the arguments
    to the signature's parameters a second time, which costs as much as a small model's
    forward pass. The callers build every argument with the signature's dtypes; a TensorFlow
    without that private method keeps the structured call.
    """

    def __init__(self, function: Any) -> None:
        # TF's "frequent retracing" detector counts traces per Python code object, so it adds up
        # the single trace of every state built in one process (tests, benchmarks) and warns
        # falsely; opt out as TF does for loaded SavedModels (a private flag: harmless if gone).
        function._omit_frequent_tracing_warning = True
        self.function = function
        self._concrete: Any = None
        self._flat: Callable[..., Any] | None = None

    def __call__(self, *args: tf.Tensor) -> Any:
        """Run the traced graph on ``args`` (tensors that fit the input signature)."""
        flat = self._flat
        if flat is not None:
            return flat(list(args), self._concrete.captured_inputs)
        concrete = self._concrete
        if concrete is None:
            concrete = self._concrete = self.function.get_concrete_function()
        out = concrete(*args)  # checked against the signature once
        self._flat = getattr(concrete, "_call_flat", None)
        return out

    def tracing_count(self) -> int:
        """How many times the ``tf.function`` has been traced (1 after the first call, ever after)."""
        return int(self.function.experimental_get_tracing_count())
