"""crossframe-onnxruntime: an inference-only crossframe backend on ONNX Runtime.

The entry point (``[project.entry-points.crossframe] onnxruntime = "crossframe_onnxruntime"``)
imports this module, so it must stay cheap: it imports neither onnx nor onnxruntime. It
registers

- the backend ``onnxruntime``: exports a run's canonical weights to an ONNX graph and
  evaluates it with ONNX Runtime (``crossframe eval RUN_DIR --backend onnxruntime``);
- the exporter ``onnx-canonical``: writes that same graph to a ``.onnx`` file.

The Python helpers :func:`export_onnx`, :func:`load_model` and :class:`OnnxState` are
importable from here; they are loaded (with onnx / onnxruntime) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crossframe import hookimpl

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first attribute access)
_LAZY = {
    "export_onnx": "crossframe_onnxruntime.export",
    "build_onnx_model": "crossframe_onnxruntime.export",
    "canonical_weights": "crossframe_onnxruntime.export",
    "OnnxCanonicalExporter": "crossframe_onnxruntime.export",
    "DEFAULT_OPSET": "crossframe_onnxruntime.export",
    "OnnxRuntimeBackend": "crossframe_onnxruntime.backend",
    "OnnxState": "crossframe_onnxruntime.backend",
    "load_model": "crossframe_onnxruntime.backend",
}

if TYPE_CHECKING:  # pragma: no cover
    from crossframe_onnxruntime.backend import OnnxRuntimeBackend, OnnxState, load_model
    from crossframe_onnxruntime.export import (
        DEFAULT_OPSET,
        OnnxCanonicalExporter,
        build_onnx_model,
        canonical_weights,
        export_onnx,
    )

__all__ = ["DEFAULT_OPSET", "OnnxCanonicalExporter", "OnnxRuntimeBackend", "OnnxState", "build_onnx_model",
           "canonical_weights", "export_onnx", "load_model", "register_backends", "register_exporters"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crossframe_onnxruntime' has no attribute '{name}'")


def _create_backend() -> Any:
    from crossframe_onnxruntime.backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend()


def _create_exporter(params: Any = None) -> Any:
    from crossframe_onnxruntime.export import OnnxCanonicalExporter

    return OnnxCanonicalExporter(params)


@hookimpl
def register_backends(register: Any) -> None:
    """Register the inference-only ``onnxruntime`` backend (onnxruntime loads when it is used)."""
    register("onnxruntime", _create_backend,
             description="ONNX Runtime, inference only: evaluates runs through an ONNX export of their weights")


@hookimpl
def register_exporters(register: Any) -> None:
    """Register ``onnx-canonical``: canonical weights + spec -> a ``.onnx`` file (mlp, cnn)."""
    from crossframe_onnxruntime.params import OnnxExportParams

    register("onnx-canonical", _create_exporter, schema=OnnxExportParams,
             description="ONNX graph built from canonical weights (mlp, cnn); any backend's run")
