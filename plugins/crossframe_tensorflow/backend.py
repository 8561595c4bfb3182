"""The TensorFlow backend: ``tf.Variable`` s in ``tf.Module`` s, steps compiled with ``tf.function``.

No Keras anywhere: the forward passes are tf ops (:mod:`crossframe_tensorflow.models`), the
optimizer rules are written in tf ops (:mod:`crossframe_tensorflow.optim`), so Keras' global
backend setting (``KERAS_BACKEND``) cannot change what runs, and every number is under our
control. Each step is one call of a ``tf.function`` traced once (through its concrete function,
see :class:`Compiled`), with a fixed input signature (batch dimension ``None``) and the learning
rate passed as a float32 scalar tensor, so neither a new rate nor a smaller last eval batch
retraces it. Gradient accumulation, clipping, mixed precision and the update all happen inside
that one graph. ``train.compile`` maps to ``jit_compile=True`` (XLA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossframe.backend import Backend, Capabilities, TrainSetup
from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec, Params
from crossframe_tensorflow import devices
from crossframe_tensorflow.devices import tf
from crossframe_tensorflow.models import MODELS, Model, build_model, export_canonical, load_canonical
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
    train_fn: Compiled | None  # (x, y, lr) -> {"loss", ["grad_norm"]}; None for an inference state
    eval_fn: Compiled  # (x, y) -> device sums
    predict_fn: Compiled  # (x) -> float32 outputs
    label_dtype: tf.DType

    @property
    def step(self) -> int:
        """Updates applied so far."""
        return 0 if self.optimizer is None else int(self.optimizer.step.numpy())


class TensorFlowBackend(Backend):
    """crossframe on TensorFlow (without Keras)."""

    name = "tensorflow"

    def framework_version(self) -> str:
        """tensorflow's version."""
        return tf.__version__

    def capabilities(self) -> Capabilities:
        """CPU always; GPU and TPU when TensorFlow finds one."""
        return Capabilities(
            devices=devices.available_devices(),
            precisions=("fp32", "bf16", "fp16"),
            strategies=("single",),
            models=MODELS,
            optimizers=SUPPORTED,
            compile=True,
            notes={"gpu": "no GPU visible to TensorFlow: tensorflow-cpu, or no CUDA device",
                   "tpu": "no TPU visible to TensorFlow: needs a TPU VM and a TPU build of TensorFlow",
                   "data_parallel": "coming with tf.distribute.MirroredStrategy",
                   "fully_sharded": "not planned for TensorFlow"},
        )

    # ------------------------------------------------------------------ state

    def create_state(self, setup: TrainSetup) -> TFState:
        """Variables from canonical weights, optimizer slots and the compiled steps, on the device."""
        device = devices.tf_device(setup.device)
        dtype = devices.compute_dtype(setup.precision)
        with tf.device(device):
            model = build_model(setup.spec, setup.weights)
            optimizer = build_optimizer(setup, model.params)
            loss_scale = DynamicLossScale() if setup.precision == "fp16" else None
        state = self._state(setup, model, optimizer, loss_scale, device, dtype)
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
        label_dtype = tf.int64 if setup.loss == "cross_entropy" else tf.float32
        state = TFState(setup, model, optimizer, loss_scale, device, dtype, None, None, None, label_dtype)  # type: ignore[arg-type]
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
        if optimizer_state is not None and state.optimizer is not None:
            state.optimizer.load(optimizer_state)
        return state

    # ------------------------------------------------------------------ steps

    def _inputs(self, state: TFState, batch: dict[str, np.ndarray]) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.convert_to_tensor(batch["x"], dtype=tf.float32)
        y = tf.convert_to_tensor(batch["y"], dtype=state.label_dtype)
        return x, y

    def train_step(self, state: TFState, batch: dict[str, np.ndarray], lr: float) -> tuple[TFState, dict[str, Any]]:
        """One call of the compiled step: accumulate, clip, update; no host sync."""
        if state.train_fn is None:
            raise CapabilityError("train_step: this state was built for inference only")
        x, y = self._inputs(state, batch)
        return state, state.train_fn(x, y, tf.constant(lr, tf.float32))

    def eval_step(self, state: TFState, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Device sums for one batch: loss, count, and the confusion matrix or error sums."""
        sums = state.eval_fn(*self._inputs(state, batch))
        if state.setup.loss != "cross_entropy":
            sums["outputs"] = state.setup.spec.data_info.num_outputs
        return sums

    def predict(self, state: TFState, x: np.ndarray) -> np.ndarray:
        """Outputs as float32 numpy."""
        out = state.predict_fn(tf.convert_to_tensor(np.asarray(x, dtype=np.float32)))
        return np.array(out.numpy(), dtype=np.float32, copy=True)

    def fetch(self, values: Any) -> Any:
        """Tensors (and variables) to numpy, through lists, tuples and dicts."""
        if isinstance(values, (tf.Tensor, tf.Variable)):
            return values.numpy()
        if isinstance(values, dict):
            return {k: self.fetch(v) for k, v in values.items()}
        if isinstance(values, (list, tuple)):
            return type(values)(self.fetch(v) for v in values)
        return values


# ---------------------------------------------------------------------- the compiled functions


def _specs(state: TFState) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    info = state.setup.spec.data_info
    x = tf.TensorSpec([None, *info.input_shape], tf.float32, name="x")
    y_shape = [None] if state.setup.loss == "cross_entropy" else [None, info.num_outputs]
    return x, tf.TensorSpec(y_shape, state.label_dtype, name="y")


def _loss_fn(state: TFState) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Per-example losses in float32: softmax cross-entropy, or squared error averaged over outputs."""
    if state.setup.loss == "cross_entropy":
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
    names = [p.name for p in setup.spec.table]
    variables = model.ordered
    k, clip_norm = setup.grad_accum, setup.clip_norm
    x_spec, y_spec = _specs(state)

    def train(x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.device(state.device):
            # k contiguous micro-batches, in order (chunk i = rows i*b:(i+1)*b, as torch.chunk)
            chunks = zip(tf.split(x, k), tf.split(y, k), strict=True) if k > 1 else [(x, y)]
            loss: tf.Tensor | None = None
            grads: list[tf.Tensor] | None = None
            for xi, yi in chunks:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(variables)
                    part = tf.reduce_mean(per_example(model(xi, state.dtype), yi))
                    if k > 1:
                        part = part / k
                    target = part * loss_scale.scale if loss_scale is not None else part
                g = tape.gradient(target, variables)
                grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
                loss = part if loss is None else loss + part
            assert grads is not None and loss is not None
            out = {"loss": loss}
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
            by_name = dict(zip(names, grads, strict=True))
            if loss_scale is None:
                optimizer.apply(by_name, lr)
            else:
                def apply() -> tf.Tensor:
                    optimizer.apply(by_name, lr)
                    return tf.constant(True)

                tf.cond(finite, apply, lambda: tf.constant(False))
                loss_scale.update(finite)
            return out

    signature = [x_spec, y_spec, tf.TensorSpec([], tf.float32, name="lr")]
    return Compiled(tf.function(train, input_signature=signature, jit_compile=setup.compile))


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
            else:
                err = out - y
                sums["abs_err_sum"] = tf.reduce_sum(tf.abs(err))
                sums["sq_err_sum"] = tf.reduce_sum(tf.square(err))
            return sums

    return Compiled(tf.function(evaluate, input_signature=list(_specs(state)), jit_compile=state.setup.compile))


def _predict_function(state: TFState) -> Compiled:
    model = state.model
    x_spec, _ = _specs(state)

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
    """

    def __init__(self, function: Any) -> None:
        # TF's "frequent retracing" detector counts traces per Python code object, so it adds up
        # the single trace of every state built in one process (tests, benchmarks) and warns
        # falsely; opt out as TF does for loaded SavedModels (a private flag: harmless if gone).
        function._omit_frequent_tracing_warning = True
        self.function = function
        self._concrete: Any = None

    def __call__(self, *args: tf.Tensor) -> Any:
        """Run the traced graph on ``args`` (tensors that fit the input signature)."""
        concrete = self._concrete
        if concrete is None:
            concrete = self._concrete = self.function.get_concrete_function()
        return concrete(*args)

    def tracing_count(self) -> int:
        """How many times the ``tf.function`` has been traced (1 after the first call, ever after)."""
        return int(self.function.experimental_get_tracing_count())
