"""Deployment quantisation as export steps: int8 artefacts made from the final float model.

These are not registered exporters: each needs more than an :class:`~crossframe.export.base.ExportRequest`
carries (the fp32 ONNX file from the ``onnx`` exporter, calibration batches from the run's
training data), so the pipeline runs them itself when an ``export`` step names one:

=====================  ==========  ===========================================================
name                   backends    what it writes
=====================  ==========  ===========================================================
``onnx-int8-dynamic``  any         ``model.int8.onnx``: ORT ``quantize_dynamic`` of the fp32 ONNX
``onnx-int8-static``   any         ``model.int8.onnx``: ORT ``quantize_static`` (QDQ, MinMax
                                   calibration on ``calibration_batches`` training batches)
``tflite-int8``        tensorflow  ``model.int8.tflite``: TFLite dynamic-range quantisation
                                   (``tf.lite.Optimize.DEFAULT``) of the ``saved-model`` export
``torch-int8``         torch       ``model.int8.pt2``: torchao ``quantize_`` (int8 weight-only) of
                                   the torch module, ``torch.export``-ed, saved without pickle
=====================  ==========  ===========================================================

Each is verified against the float model on validation batches with a looser tolerance than a
float export: the largest output error relative to the largest float output
(``max|q - f| / max|f|``) must stay within ``tolerance`` (default 0.1, 0.15 for static).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from crossframe.config.loading import atomic_write_bytes
from crossframe.config.validation import validate_params


class DeployParams(BaseModel):
    """Params of a deployment-quantisation export step."""

    model_config = ConfigDict(extra="forbid")
    tolerance: PositiveFloat | None = Field(None, description="max |q - f| / max |f| allowed; default per method")
    per_channel: bool = Field(False, description="one weight scale per output channel")
    calibration_batches: PositiveInt = Field(8, description="training batches used to calibrate (static only)")


DEFAULT_TOLERANCE = {"onnx-int8-dynamic": 0.1, "onnx-int8-static": 0.15, "tflite-int8": 0.1, "torch-int8": 0.1}


@dataclass
class DeployRequest:
    """What a deployment quantiser needs."""

    name: str
    params: DeployParams
    out_dir: Path
    #: ``export(exporter_name, directory)``: writes the float32 model with that exporter, returns its path
    export: Callable[[str, Path], Path]
    #: ``x`` arrays of training batches for calibration
    calibration: Callable[[int], list[np.ndarray]]
    #: ``export_request(directory)``: the stage as an :class:`~crossframe.export.base.ExportRequest` (torch-int8)
    export_request: Callable[[Path], Any] | None = None


@dataclass
class DeployArtifact:
    """An int8 file and how it was made."""

    format: str
    path: Path
    fp32_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _onnx_dynamic(req: DeployRequest) -> DeployArtifact:
    from crossframe.compress.ort_quant import quantize_dynamic

    fp32 = req.export("onnx", req.out_dir / "fp32")
    out = quantize_dynamic(fp32, req.out_dir / "model.int8.onnx", req.params.per_channel)
    return DeployArtifact("onnx", out, fp32, {"quantization": "dynamic int8 (onnxruntime)"})


def _onnx_static(req: DeployRequest) -> DeployArtifact:
    from crossframe.compress.ort_quant import quantize_static

    fp32 = req.export("onnx", req.out_dir / "fp32")
    batches = req.calibration(req.params.calibration_batches)
    out = quantize_static(fp32, req.out_dir / "model.int8.onnx", batches, req.params.per_channel)
    return DeployArtifact("onnx", out, fp32, {"quantization": "static int8 QDQ (onnxruntime)",
                                              "calibration_batches": len(batches)})


def _tflite_int8(req: DeployRequest) -> DeployArtifact:
    from crossframe.errors import ExportError

    saved = req.export("saved-model", req.out_dir / "fp32")
    import tensorflow as tf

    out = req.out_dir / "model.int8.tflite"
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        data = converter.convert()
    except Exception as exc:  # the converter raises many kinds; one line names the step
        raise ExportError(f"tflite-int8: the TFLite converter failed on '{saved.name}': "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    atomic_write_bytes(out, data)
    return DeployArtifact("tflite", out, saved, {"quantization": "dynamic-range int8 (tf.lite.Optimize.DEFAULT)"})


def _torch_int8(req: DeployRequest) -> DeployArtifact:
    from crossframe.errors import ExportError

    request = req.export_request(req.out_dir) if req.export_request else None
    if request is None or request.backend != "torch":
        backend = getattr(request, "backend", "?")
        raise ExportError(f"torch-int8: quantises the torch backend's module, but this run's backend is '{backend}' "
                          "(pass --backend torch, or use onnx-int8-dynamic for any backend)")
    from crossframe_torch.quantize import write_int8

    path, extra = write_int8(request, tolerance=float(req.params.tolerance or DEFAULT_TOLERANCE["torch-int8"]))
    return DeployArtifact("torch-int8", path, None, extra)


def tflite_predictor(path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the TFLite file at ``path`` (input resized when the batch shape changes)."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads or None)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    dtype = np.dtype(inp["dtype"])
    shape: list[tuple[int, ...]] = [()]

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=dtype)
        if shape[0] != x.shape:
            interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=False)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(out["index"]), dtype=np.float32, copy=True)

    return predict


def predictor(artifact: DeployArtifact, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A function running a deployment artefact on a numpy batch (ONNX Runtime, TFLite, or torch for torch-int8)."""
    if artifact.format == "tflite":
        return tflite_predictor(artifact.path, threads)
    if artifact.format == "torch-int8":
        from crossframe_torch.quantize import load_int8

        return load_int8(artifact.path, str(artifact.extra.get("input_dtype", "float32")))
    from crossframe.compress.ort_quant import ort_predictor

    return ort_predictor(artifact.path, threads)


#: deployment quantiser name -> function
DEPLOY: dict[str, Callable[[DeployRequest], DeployArtifact]] = {
    "onnx-int8-dynamic": _onnx_dynamic,
    "onnx-int8-static": _onnx_static,
    "tflite-int8": _tflite_int8,
    "torch-int8": _torch_int8,
}


def parse_params(name: str, params: dict[str, Any], where: str) -> DeployParams:
    """Validate a deployment step's params (one line naming ``where`` on error)."""
    validated = validate_params(DeployParams, params, where)
    assert isinstance(validated, DeployParams)
    if validated.tolerance is None:
        validated.tolerance = DEFAULT_TOLERANCE.get(name, 0.1)
    return validated
