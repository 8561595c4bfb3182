"""The ``onnxruntime`` backend: inference only, on an ONNX export of the canonical weights.

``inference_state`` builds the ONNX graph from the spec and canonical weights
(:mod:`crossframe_onnxruntime.export`), checks it and opens an ``onnxruntime.InferenceSession``.
``predict`` runs it; ``eval_step`` computes the same sums as the training backends in NumPy
(this backend's "device" is the host, so ``fetch`` is the identity). It cannot train:
``create_state`` and ``train_step`` raise a one-line :class:`CapabilityError`.

:func:`load_model` wraps any ``.onnx`` file whose one input is the canonical input
(``[batch, *input_shape]``, NHWC for images) and whose first output is the logits (or
regression outputs); files written by :func:`~crossframe_onnxruntime.export.export_onnx` also
carry their spec, so their canonical weights can be read back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from crossframe.backend import Backend, Capabilities, TrainSetup
from crossframe.errors import CapabilityError, CheckpointError, DataError
from crossframe.models.spec import ModelSpec, Params
from crossframe_onnxruntime.export import METADATA_KEY, MODELS, build_onnx_model, canonical_weights

NAME = "onnxruntime"
CANNOT_TRAIN = (f"backend '{NAME}' is inference-only: it cannot train; "
                f"evaluate a trained run with 'crossframe eval RUN_DIR --backend {NAME}'")
#: env var: intra-op threads of every session (default: the CPUs this process may run on)
THREADS_ENV = "CROSSFRAME_ORT_THREADS"
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "gpu": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


@dataclass
class OnnxState:
    """An ONNX Runtime session and what crossframe knows about the model behind it.

    ``spec`` and ``weights`` (canonical, read back from the exported graph) are set when the
    model was exported by this plugin, ``None`` for a foreign ``.onnx`` file.
    """

    session: Any  # onnxruntime.InferenceSession
    task: str = "classification"  # classification | regression
    spec: ModelSpec | None = None
    weights: Params | None = field(default=None, repr=False)
    device: str = "cpu"
    precision: str = "fp32"
    source: str = "<memory>"  # the file it was loaded from, for messages

    @property
    def input_name(self) -> str:
        """The graph's one input."""
        return self.session.get_inputs()[0].name

    @property
    def output_name(self) -> str:
        """The graph's first output: logits or regression values."""
        return self.session.get_outputs()[0].name


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / cgroup cpusets
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def session_options() -> Any:
    """Session options: intra-op threads = usable CPUs (or ``$CROSSFRAME_ORT_THREADS``), one
    inter-op thread, no spinning between runs (the loop does host work between batches), all
    graph optimizations, warnings only from ONNX Runtime's logger."""
    opts = ort.SessionOptions()
    raw = os.environ.get(THREADS_ENV, "").strip()
    try:
        threads = int(raw) if raw else _cpu_count()
    except ValueError:
        raise CapabilityError(f"{THREADS_ENV}: '{raw}' is not a number of threads") from None
    opts.intra_op_num_threads = max(threads, 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def _providers(device: str) -> list[str]:
    if device not in PROVIDERS:
        raise CapabilityError(f"device: '{device}' requested, but backend '{NAME}' found only "
                              f"{', '.join(repr(d) for d in available_devices())}")
    if device == "gpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise CapabilityError(f"device: 'gpu' requested, but onnxruntime {ort.__version__} has no "
                              "CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)")
    return PROVIDERS[device]


def available_devices() -> tuple[str, ...]:
    """``cpu``, plus ``gpu`` when this onnxruntime build has the CUDA execution provider."""
    return ("cpu", "gpu") if "CUDAExecutionProvider" in ort.get_available_providers() else ("cpu",)


def _session(model_bytes_or_path: bytes | str, device: str) -> Any:
    return ort.InferenceSession(model_bytes_or_path, sess_options=session_options(), providers=_providers(device))


def load_model(path: str | os.PathLike, device: str = "cpu", task: str | None = None) -> OnnxState:
    """Wrap the ``.onnx`` file at ``path`` for :meth:`OnnxRuntimeBackend.predict` / ``eval_step``.

    The model must have one float input, the canonical ``[batch, *input_shape]`` (NHWC for
    images), and give logits (or regression outputs) ``[batch, k]`` as its first output.
    ``task`` defaults to what the file's crossframe metadata says, else ``classification``.
    """
    from crossframe.security.artifacts import artifact_source

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"onnx model: '{path}' is not a file")
    source = artifact_source(path)  # a sealed export is decrypted in memory (security.encrypt), never on disk
    try:
        session = _session(source, device)
    except CapabilityError:
        raise
    except Exception as exc:  # onnxruntime's own errors are multi-line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"onnx model: '{path}' cannot be loaded by onnxruntime: {first}") from None
    if len(session.get_inputs()) != 1:
        names = [i.name for i in session.get_inputs()]
        raise CheckpointError(f"onnx model: '{path}' has inputs {names}; crossframe feeds exactly one (the features)")
    meta = session.get_modelmeta().custom_metadata_map
    spec = weights = None
    if METADATA_KEY in meta:
        import onnx

        from crossframe.models import spec_from_json

        spec = spec_from_json(json.loads(meta[METADATA_KEY]))
        proto = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
        weights = canonical_weights(proto, spec)
    resolved = task or (spec.data_info.task if spec is not None else "classification")
    if resolved not in ("classification", "regression"):
        raise CapabilityError(f"task: '{resolved}' is not a task; use 'classification' or 'regression'")
    return OnnxState(session, resolved, spec, weights, device, "fp32", str(path))


class OnnxRuntimeBackend(Backend):
    """crossframe on ONNX Runtime: evaluation and prediction only."""

    name = NAME

    def framework_version(self) -> str:
        """onnxruntime's version."""
        return ort.__version__

    def capabilities(self) -> Capabilities:
        """CPU (GPU with onnxruntime-gpu), fp32, single device, mlp and cnn; no optimizer, no training."""
        note = ("inference-only: it cannot train; "
                f"evaluate a trained run with 'crossframe eval RUN_DIR --backend {NAME}'")
        return Capabilities(
            devices=available_devices(),
            precisions=("fp32",),
            strategies=("single",),
            models=MODELS,
            optimizers=(),
            compile=False,
            can_train=False,
            notes={
                # the core checks the optimizer before `can_train`: say why there is none
                "sgd": note, "adam": note, "adamw": note,
                "gpu": "install onnxruntime-gpu (with CUDA) instead of onnxruntime",
                "tpu": "onnxruntime has no TPU execution provider",
                "bf16": "the exported graph is float32", "fp16": "the exported graph is float32",
                "data_parallel": "single device only", "fully_sharded": "single device only",
            },
        )

    # ------------------------------------------------------------------ state

    def create_state(self, setup: TrainSetup) -> Any:
        """Always raises: this backend cannot train."""
        raise CapabilityError(CANNOT_TRAIN)

    def inference_state(self, spec: ModelSpec, weights: Params, device: str = "cpu",
                        precision: str = "fp32") -> OnnxState:
        """Export ``spec`` with canonical ``weights`` to ONNX (checked) and open a session on it."""
        if precision != "fp32":
            raise CapabilityError(f"precision: '{precision}' requested, but backend '{NAME}' supports only 'fp32' "
                                  "(the exported graph is float32)")
        model = build_onnx_model(spec, weights)
        session = _session(model.SerializeToString(), device)
        return OnnxState(session, spec.data_info.task, spec, canonical_weights(model, spec), device, precision)

    def export_state(self, state: OnnxState) -> tuple[Params, Params]:
        """The canonical weights read back from the exported graph; no optimizer state."""
        if state.weights is None:
            raise CapabilityError(f"onnx model: '{state.source}' was not exported by crossframe; "
                                  "it has no canonical weights to export")
        return {k: v.copy() for k, v in state.weights.items()}, {}

    def load_state(self, state: OnnxState, weights: Params, optimizer_state: Params | None) -> OnnxState:
        """A new session on ``weights`` (the optimizer state, if any, is ignored: nothing trains here)."""
        if state.spec is None:
            raise CapabilityError(f"onnx model: '{state.source}' carries no crossframe spec; "
                                  "new weights cannot be installed in it")
        state.spec.check_weights(weights)
        return self.inference_state(state.spec, weights, state.device, state.precision)

    # ------------------------------------------------------------------ steps

    def train_step(self, state: Any, batch: dict[str, np.ndarray], lr: float) -> tuple[Any, dict[str, Any]]:
        """Always raises: this backend cannot train."""
        raise CapabilityError(CANNOT_TRAIN)

    def predict(self, state: OnnxState, x: np.ndarray) -> np.ndarray:
        """Run the session on ``x`` (canonical layout); float32 numpy out."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        want = state.session.get_inputs()[0].shape
        if len(want) != x.ndim or any(isinstance(w, int) and w != s for w, s in zip(want, x.shape, strict=True)):
            shape = ["batch" if not isinstance(w, int) else w for w in want]
            raise DataError(f"x: shape {list(x.shape)} does not fit the ONNX model's input "
                            f"'{state.input_name}' {shape} ({state.source})")
        out = state.session.run([state.output_name], {state.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def eval_step(self, state: OnnxState, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Loss sum, count, and the confusion matrix (classification) or error sums (regression)."""
        out = self.predict(state, batch["x"])
        y = np.asarray(batch["y"])
        sums: dict[str, Any] = {"count": len(y)}
        if state.task == "classification":
            z = out.astype(np.float64)
            z = z - z.max(axis=1, keepdims=True)
            log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            labels = y.astype(np.int64)
            sums["loss_sum"] = float(-log_probs[np.arange(len(labels)), labels].sum())
            classes = out.shape[1]
            sums["confusion"] = np.bincount(labels * classes + out.argmax(axis=1),
                                            minlength=classes * classes).reshape(classes, classes).astype(np.int64)
        else:
            err = out.astype(np.float64) - y.astype(np.float64).reshape(out.shape)
            sums["loss_sum"] = float((err * err).mean(axis=1).sum())
            sums["abs_err_sum"] = float(np.abs(err).sum())
            sums["sq_err_sum"] = float((err * err).sum())
            sums["outputs"] = out.shape[1]
        return sums

    def fetch(self, values: Any) -> Any:
        """The identity: every value already lives on the host."""
        return values
