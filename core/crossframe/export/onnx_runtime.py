"""ONNX files, whoever wrote them: checked for ops ONNX lacks, and run in ONNX Runtime on the CPU.

This is the one loader of every ``onnx`` artefact (torch, jax and tensorflow alike): an exported
graph is judged by the runtime people deploy it on, not by the framework that wrote it.
onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crossframe.errors import ExportError
from crossframe.export.failure import export_failure

MIN_OPSET = 17
STANDARD_DOMAINS = ("", "ai.onnx")

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


def check_onnx_model(model: Any, backend: str, model_name: str, min_opset: int = MIN_OPSET) -> int:
    """Raise :class:`ExportError` unless ``model`` (an ``onnx.ModelProto``) is standard ONNX at ``min_opset``+.

    A node whose op has no schema in its ONNX domain is an op the converter passed through
    untranslated (tf2onnx does this instead of failing); it is named in the error. Returns the
    model's default-domain opset.
    """
    import onnx

    opset = max((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), default=0)
    if opset < min_opset:
        raise ExportError(f"export: onnx from {backend} ({model_name}) has opset {opset}; "
                          f"crossframe needs opset >= {min_opset}")
    unknown = []
    for node in _all_nodes(model.graph):
        known = node.domain not in STANDARD_DOMAINS or onnx.defs.has(node.op_type, node.domain)
        if not known and node.op_type not in unknown:
            unknown.append(node.op_type)
    if unknown:
        raise export_failure(backend, "onnx", model_name,
                             f"the converter left {len(unknown)} op(s) untranslated ({', '.join(unknown)})",
                             op=unknown[0])
    return opset


def _all_nodes(graph: Any) -> list[Any]:
    """Every node of ``graph``, including those in subgraphs (If / Loop / Scan bodies)."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                nodes += _all_nodes(attr.g)
            for sub in attr.graphs:
                nodes += _all_nodes(sub)
    return nodes


class OnnxRunner:
    """An ONNX model in an ONNX Runtime session on the CPU: ``runner(x) -> float32 numpy outputs``.

    The input is cast to the graph's input dtype (token ids become int64 or int32 as the exporter
    declared them), so callers pass the same batch whatever backend wrote the file.
    """

    def __init__(self, path: Path, backend: str = "?", model: str = "?", threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.backend, self.model = backend, model
        verify_export_file(self.path)
        from crossframe.security.artifacts import artifact_source

        source = artifact_source(self.path)  # a sealed file is decrypted into memory, never onto the disk
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(source, sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT lacks an op, or the file is not a valid model
            raise export_failure(backend, "onnx", model, _ort_message(exc)) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ExportError(f"export: {self.path.name} has {len(inputs)} inputs; crossframe models take one")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.input_dtype = _DTYPES.get(inputs[0].type, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's first output on batch ``x``, as float32."""
        feed = {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}
        try:
            out = self.session.run(None, feed)[0]
        except Exception as exc:
            raise export_failure(self.backend, "onnx", self.model, _ort_message(exc)) from None
        return np.asarray(out, dtype=np.float32)


def _ort_message(exc: Exception) -> str:
    """ONNX Runtime's message without its ``[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :`` prefix."""
    text = str(exc)
    parts = text.split(" : ")
    return f"ONNX Runtime: {parts[-1]}" if text.startswith("[ONNXRuntimeError]") else f"ONNX Runtime: {text}"


def verify_export_file(path: Path) -> None:
    """Check ``path`` against the ``manifest.json`` of its directory, when there is one (one line naming it)."""
    from crossframe.integrity import verify_manifest

    path = Path(path)
    if path.is_file():
        verify_manifest(path.parent, only=[path.name])


def load_onnx(path: Path, backend: str = "?", model: str = "?") -> OnnxRunner:
    """Open ``path`` in ONNX Runtime (CPUExecutionProvider); errors become one-line ExportErrors."""
    return OnnxRunner(path, backend, model)
