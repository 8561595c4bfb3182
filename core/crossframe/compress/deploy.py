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
=====================  ==========  ===========================================================

Each is verified against the float model on validation batches with a looser tolerance than a
float export: the largest output error relative to the largest float output
(``max|q - f| / max|f|``) must stay within ``tolerance`` (default 0.1 for dynamic, 0.15 for static).
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


DEFAULT_TOLERANCE = {"onnx-int8-dynamic": 0.1, "onnx-int8-static": 0.15}


@dataclass
class DeployRequest:
    """What a deployment quantiser needs."""

    name: str
    params: DeployParams
    out_dir: Path
    #: writes the float32 ONNX model under the given directory and returns its path
    fp32_onnx: Callable[[Path], Path]
    #: ``x`` arrays of training batches for calibration
    calibration: Callable[[int], list[np.ndarray]]


@dataclass
class DeployArtifact:
    """An int8 file and how it was made."""

    format: str
    path: Path
    fp32_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _onnx_dynamic(req: DeployRequest) -> DeployArtifact:
    from crossframe.compress.ort_quant import quantize_dynamic

    fp32 = req.fp32_onnx(req.out_dir / "fp32")
    out = quantize_dynamic(fp32, req.out_dir / "model.int8.onnx", req.params.per_channel)
    return DeployArtifact("onnx", out, fp32, {"quantization": "dynamic int8 (onnxruntime)"})


def _onnx_static(req: DeployRequest) -> DeployArtifact:
    from crossframe.compress.ort_quant import quantize_static

    fp32 = req.fp32_onnx(req.out_dir / "fp32")
    batches = req.calibration(req.params.calibration_batches)
    out = quantize_static(fp32, req.out_dir / "model.int8.onnx", batches, req.params.per_channel)
    return DeployArtifact("onnx", out, fp32, {"quantization": "static int8 QDQ (onnxruntime)",
                                              "calibration_batches": len(batches)})


#: deployment quantiser name -> function
DEPLOY: dict[str, Callable[[DeployRequest], DeployArtifact]] = {
    "onnx-int8-dynamic": _onnx_dynamic,
    "onnx-int8-static": _onnx_static,
}


def parse_params(name: str, params: dict[str, Any], where: str) -> DeployParams:
    """Validate a deployment step's params (one line naming ``where`` on error)."""
    validated = validate_params(DeployParams, params, where)
    assert isinstance(validated, DeployParams)
    if validated.tolerance is None:
        validated.tolerance = DEFAULT_TOLERANCE.get(name, 0.1)
    return validated
