"""The exporters the core registers: ``onnx`` and ``native`` (plus one per native format), for any backend.

Exporter names are global, so the core owns them and each dispatches to the backend named in the
request: :meth:`crossframe.backend.Backend.export` writes the artefact in the framework's own way
(torch's dynamo ONNX exporter, tf2onnx, jax2onnx; ``torch.export``, SavedModel, TFLite,
``jax.export``), and :meth:`Exporter.load` runs it back: ONNX files in ONNX Runtime (the same
loader for every backend), native formats through the backend's
:meth:`~crossframe.backend.Backend.load_export`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from crossframe.errors import CapabilityError, CrossframeError, one_of
from crossframe.export.base import ExportArtifact, ExportRequest
from crossframe.export.failure import export_failure
from crossframe.export.verify import DEFAULT_TOLERANCE

ONNX = "onnx"
#: native formats and the backend that writes each
NATIVE_FORMATS: dict[str, str] = {"torch-export": "torch", "saved-model": "tensorflow", "tflite": "tensorflow",
                                  "stablehlo": "jax"}
DEFAULT_OPSET = 18
MAX_OPSET = 23


class ExportParams(BaseModel):
    """Params every exporter takes."""

    model_config = ConfigDict(extra="forbid")
    verify: bool = Field(True, description="run the artefact against the native model on fresh batch shapes")
    tolerance: PositiveFloat = Field(DEFAULT_TOLERANCE,
                                     description="max |export - native| allowed, times max(1, max |native|)")


class OnnxParams(ExportParams):
    """Params of ``export: [{name: onnx}]``."""

    opset: int = Field(DEFAULT_OPSET, ge=17, le=MAX_OPSET, description="ONNX opset of the graph")


class NativeParams(ExportParams):
    """Params of ``export: [{name: native}]``."""

    format: Literal["torch-export", "saved-model", "tflite", "stablehlo"] | None = Field(
        None, description="native format; default: the backend's first (torch-export, saved-model, stablehlo)")


class BackendExporter:
    """An exporter that hands the work to the request's backend (``backends == ("*",)``)."""

    backends: tuple[str, ...] = ("*",)

    def __init__(self, name: str, fmt: str | None, params: ExportParams) -> None:
        self.name = name
        self.format = fmt
        self.params = params

    def options(self) -> dict[str, Any]:
        """Params the backend's export sees (``opset`` for ONNX)."""
        return self.params.model_dump()

    def resolve_format(self, backend: Any) -> str:
        """The format to write: this exporter's own, ``native.format``, or the backend's first native format."""
        formats = tuple(backend.export_formats())
        fmt = self.format or getattr(self.params, "format", None)
        if fmt is None:
            native = [f for f in formats if f != ONNX]
            if not native:
                raise CapabilityError(f"export: backend '{backend.name}' has no native export format")
            return native[0]
        if fmt not in formats:
            raise CapabilityError(f"export: backend '{backend.name}' cannot write '{fmt}' "
                                  f"(it writes {one_of(formats)})")
        return fmt

    def export(self, request: ExportRequest) -> ExportArtifact:
        """Write the model with the request's backend; one-line ExportError on failure."""
        from crossframe.train.runner import make_backend

        backend = make_backend(request.backend)
        fmt = self.resolve_format(backend)
        request.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            artifact = backend.export(request, fmt, self.options())
        except CrossframeError:
            raise
        except Exception as exc:  # a converter failing in a way the backend did not anticipate
            raise export_failure(request.backend, fmt, request.spec.name, exc) from exc
        artifact.exporter = self.name
        artifact.extra.setdefault("model", request.spec.name)
        return artifact

    def load(self, artifact: ExportArtifact) -> Callable[[np.ndarray], np.ndarray]:
        """Run the artefact: ONNX in ONNX Runtime, native formats in their framework."""
        if artifact.format == ONNX:
            from crossframe.export.onnx_runtime import load_onnx

            return load_onnx(artifact.path, artifact.backend, str(artifact.extra.get("model", "?")))
        from crossframe.train.runner import make_backend

        return make_backend(artifact.backend).load_export(artifact)


def _factory(name: str, fmt: str | None) -> Callable[[Any], BackendExporter]:
    def make(params: Any = None) -> BackendExporter:
        schema = OnnxParams if fmt == ONNX else NativeParams if fmt is None else ExportParams
        if params is None or isinstance(params, dict):
            params = schema.model_validate(params or {})
        return BackendExporter(name, fmt, params)

    make.__doc__ = f"The ``{name}`` exporter from validated params."
    return make


def register(register: Any) -> None:
    """Register ``onnx``, ``native`` and one exporter per native format through ``register_exporters``."""
    register(ONNX, _factory(ONNX, ONNX), schema=OnnxParams,
             description="ONNX from any backend (torch dynamo, tf2onnx, jax2onnx), run in ONNX Runtime")
    register("native", _factory("native", None), schema=NativeParams,
             description="the backend's own format (torch-export, saved-model or stablehlo), reloaded and run")
    descriptions = {"torch-export": "torch.export program (.pt2), dynamic batch",
                    "saved-model": "TensorFlow SavedModel with a serving signature",
                    "tflite": "TensorFlow Lite flatbuffer, run in the TFLite interpreter",
                    "stablehlo": "jax.export serialised StableHLO, symbolic batch/sequence"}
    for fmt, backend in NATIVE_FORMATS.items():
        register(fmt, _factory(fmt, fmt), schema=ExportParams, description=f"{descriptions[fmt]} ({backend})")
