"""Exports from the tensorflow backend: ONNX through tf2onnx, SavedModel and TFLite.

All three start from one ``tf.function`` over the backend's own ``tf.Module`` (variables built
from the request's canonical weights) with an input signature whose batch axis (and sequence
axis, for token models) is ``None``, never through Keras. ONNX: ``tf2onnx.convert.from_function``;
SavedModel: ``tf.saved_model.save`` of a module carrying that function as ``serving_default``;
TFLite: ``TFLiteConverter.from_concrete_functions`` (built-in ops only), run in the TFLite
interpreter with the input resized to each batch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.errors import CapabilityError, CrossframeError
from crossframe.export.base import ExportArtifact, ExportRequest
from crossframe.export.failure import export_failure
from crossframe.export.files import atomic_output
from crossframe.export.quiet import quiet_converters
from crossframe.export.verify import is_token_model, trace_example
from crossframe.security.artifacts import UNSEALABLE, artifact_source, refuse_unsealable, write_artifact
from crossframe_tensorflow.devices import tf
from crossframe_tensorflow.models import build_model

FORMATS = ("onnx", "saved-model", "tflite")
FILES = {"onnx": "model.onnx", "saved-model": "saved_model", "tflite": "model.tflite"}
SIGNATURE = "serving_default"


_quiet = functools.partial(quiet_converters, "tf2onnx", level=logging.CRITICAL)
"""Silence tf2onnx's progress log and TensorFlow's deprecation warnings while converting."""


class Exportable(tf.Module):
    """The model's variables and one serving function ``x -> {"y": outputs}`` with a dynamic batch axis."""

    def __init__(self, request: ExportRequest) -> None:
        super().__init__(name="crossframe_export")
        with tf.device("/CPU:0"):
            self.model = build_model(request.spec, request.weights)
        tokens = is_token_model(request)
        shape = [None, None] if tokens else [None, *request.spec.data_info.input_shape]
        self.signature = [tf.TensorSpec(shape, tf.int32 if tokens else tf.float32, name="x")]
        self.serve = tf.function(self._serve, input_signature=self.signature)
        self.forward = tf.function(self._forward, input_signature=self.signature)

    def _serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.model(x)}

    def _forward(self, x: tf.Tensor) -> tf.Tensor:
        return self.model(x)


def export(request: ExportRequest, fmt: str, options: dict[str, Any]) -> ExportArtifact:
    """Write ``fmt`` (``onnx``, ``saved-model`` or ``tflite``) under ``request.out_dir``."""
    if fmt not in FORMATS:
        raise CapabilityError(f"export: backend 'tensorflow' cannot write '{fmt}' "
                              "(it writes 'onnx', 'saved-model' or 'tflite')")
    module = Exportable(request)
    x = trace_example(request)
    path = Path(request.out_dir) / FILES[fmt]
    tokens = is_token_model(request)
    extra: dict[str, Any] = {"traced_shape": list(x.shape), "precision": "fp32",
                             "input_dtype": "int32" if tokens else "float32",
                             "dynamic_axes": {"0": "batch", "1": "seq"} if tokens else {"0": "batch"}}
    try:
        with _quiet(), atomic_output(path, directory=fmt == "saved-model") as tmp:
            if fmt == "onnx":
                extra["opset"] = _write_onnx(module, request, int(options.get("opset", 18)), tmp, path.name)
            elif fmt == "saved-model":
                refuse_unsealable("export: saved-model", UNSEALABLE["saved-model"])
                tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: module.serve.get_concrete_function()})
            else:
                concrete = module.forward.get_concrete_function()
                converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
                write_artifact(tmp, converter.convert(), name=path.name)  # sealed with security.encrypt
    except CrossframeError:
        raise
    except Exception as exc:
        raise export_failure("tensorflow", fmt, request.spec.name, exc) from None
    return ExportArtifact(fmt, path, "tensorflow", fmt, extra)


def _write_onnx(module: Exportable, request: ExportRequest, opset: int, path: Path, final: str) -> int:
    """tf2onnx from the serving function to ``path``; checked for untranslated ops; returns the opset."""
    import tf2onnx

    from crossframe.export.onnx_runtime import check_onnx_model

    proto, _ = tf2onnx.convert.from_function(module.forward, input_signature=module.signature, opset=opset)
    written = check_onnx_model(proto, "tensorflow", request.spec.name)
    write_artifact(path, proto.SerializeToString(), name=final)  # sealed in memory with security.encrypt
    return written


def load(artifact: ExportArtifact) -> Callable[[np.ndarray], np.ndarray]:
    """Run a ``saved-model`` (its serving signature) or ``tflite`` artefact (the TFLite interpreter)."""
    model = str(artifact.extra.get("model", "?"))
    dtype = np.dtype(artifact.extra.get("input_dtype", "float32"))
    try:
        with _quiet():
            if artifact.format == "saved-model":
                return _saved_model_runner(artifact.path, dtype)
            if artifact.format == "tflite":
                return tflite_runner(artifact.path, dtype)
    except CrossframeError:  # a sealed file without the key, or changed: its own line
        raise
    except Exception as exc:
        raise export_failure("tensorflow", artifact.format, model, exc) from None
    raise CapabilityError(f"export: backend 'tensorflow' cannot load '{artifact.format}' artefacts")


def _saved_model_runner(path: Path, dtype: np.dtype) -> Callable[[np.ndarray], np.ndarray]:
    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures[SIGNATURE]

    def run(x: np.ndarray) -> np.ndarray:
        with tf.device("/CPU:0"):
            out = serve(x=tf.constant(np.ascontiguousarray(x, dtype=dtype)))
        return np.asarray(out["y"].numpy(), dtype=np.float32)

    run.model = loaded  # type: ignore[attr-defined]  # keep the loaded object (and its variables) alive
    return run


def tflite_runner(path: Path, dtype: np.dtype | None = None, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Run a ``.tflite`` file: inputs cast to ``dtype`` (default: the model's input type), resized per shape."""
    source = artifact_source(path)  # a sealed file is decrypted into memory (one line without the key)
    if isinstance(source, bytes):
        interpreter = tf.lite.Interpreter(model_content=source, num_threads=threads or None)
    else:
        interpreter = tf.lite.Interpreter(model_path=source, num_threads=threads or None)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    dtype = np.dtype(inp["dtype"]) if dtype is None else dtype
    shape: list[tuple[int, ...]] = [()]

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=dtype)
        if shape[0] != x.shape:  # resize only when the batch (or sequence) changes
            interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=False)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(out["index"]), dtype=np.float32, copy=True)

    return run
