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


#: native deployment step -> the backend whose own tool makes it (its ``Backend.int8_module``)
NATIVE_STEPS = {"tflite-int8": "tensorflow", "torch-int8": "torch"}
#: artefact format of a native step -> that backend (to run the artefact)
NATIVE_FORMATS = {"tflite": "tensorflow", "torch-int8": "torch"}


def _native_module(backend: str) -> Any:
    from crossframe.train.runner import make_backend

    return make_backend(backend).native_int8()


def _native_int8(req: DeployRequest) -> DeployArtifact:
    """``tflite-int8`` / ``torch-int8``: the owning backend's own quantiser, through its ``int8_module``."""
    from crossframe.errors import ExportError

    owner = NATIVE_STEPS[req.name]
    request = req.export_request(req.out_dir) if req.export_request else None
    backend = getattr(request, "backend", "?")
    module = _native_module(backend) if request is not None else None
    if module is None or req.name != module.STEP:
        raise ExportError(f"{req.name}: quantises the {owner} backend's module, but this run's backend is "
                          f"'{backend}' (pass --backend {owner}, or use onnx-int8-dynamic for any backend)")
    tolerance = float(req.params.tolerance or DEFAULT_TOLERANCE[req.name])
    path, fp32_path, extra = module.write_deployed(request, req.export, tolerance)
    return DeployArtifact(module.FORMAT, path, fp32_path, extra)


def predictor(artifact: DeployArtifact, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A function running a deployment artefact on a numpy batch (ONNX Runtime, or the owning backend's runner)."""
    if artifact.format in NATIVE_FORMATS:
        return _native_module(NATIVE_FORMATS[artifact.format]).load_deployed(artifact.path, artifact.extra, threads)
    from crossframe.compress.ort_quant import ort_predictor

    return ort_predictor(artifact.path, threads)


#: deployment quantiser name -> function
DEPLOY: dict[str, Callable[[DeployRequest], DeployArtifact]] = {
    "onnx-int8-dynamic": _onnx_dynamic,
    "onnx-int8-static": _onnx_static,
    "tflite-int8": _native_int8,
    "torch-int8": _native_int8,
}


def parse_params(name: str, params: dict[str, Any], where: str) -> DeployParams:
    """Validate a deployment step's params (one line naming ``where`` on error)."""
    validated = validate_params(DeployParams, params, where)
    assert isinstance(validated, DeployParams)
    if validated.tolerance is None:
        validated.tolerance = DEFAULT_TOLERANCE.get(name, 0.1)
    return validated
