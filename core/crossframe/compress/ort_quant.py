"""Deployment quantisation through ONNX Runtime: int8 models any backend can ship.

Both take a float32 ONNX file (written by the ``onnx`` exporter) and write an int8 one:

- ``onnx-int8-dynamic``: :func:`onnxruntime.quantization.quantize_dynamic`. Weights are stored as
  int8; activations are quantised on the fly per batch (``DynamicQuantizeLinear`` +
  ``MatMulInteger``), so no calibration data is needed.
- ``onnx-int8-static``: :func:`onnxruntime.quantization.quantize_static` in QDQ format, with
  activation ranges calibrated (MinMax) on batches of the run's own training data read through a
  :class:`BatchReader`.

ONNX Runtime is imported inside the functions; the core stays framework-free at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.errors import ExportError


def _quant_module() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # pragma: no cover - onnxruntime is part of the export extra
        raise ExportError(f"onnx int8: onnxruntime is not installed ({exc}); install crossframe[export]") from None
    return quantization


def input_name(path: Path) -> str:
    """The name of the first graph input of the ONNX file at ``path``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if not names:
        raise ExportError(f"onnx int8: '{path}' has no graph input")
    return names[0]


class BatchReader:
    """A :class:`onnxruntime.quantization.CalibrationDataReader` over numpy batches.

    ``batches`` are the ``x`` arrays of the run's training batches; each is fed once under the
    graph input's name. (A subclass of the ORT base class is built lazily by :func:`make_reader`.)
    """

    def __init__(self, name: str, batches: Iterable[np.ndarray]) -> None:
        self.name = name
        self._batches: Iterator[np.ndarray] = iter(list(batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration feed, or ``None`` when there are no more."""
        batch = next(self._batches, None)
        return None if batch is None else {self.name: batch}


def make_reader(name: str, batches: Iterable[np.ndarray]) -> Any:
    """A :class:`BatchReader` that is also an ``onnxruntime.quantization.CalibrationDataReader``."""
    quantization = _quant_module()

    class Reader(BatchReader, quantization.CalibrationDataReader):
        """Calibration batches for ``quantize_static``."""

    return Reader(name, batches)


def strip_debug_info(path: Path) -> int:
    """Drop per-node debug text (``doc_string``, ``metadata_props``: exporters' stack traces) in place.

    Deployment files carry only what runs; returns the bytes saved.
    """
    import onnx

    before = path.stat().st_size
    model = onnx.load(str(path))

    def strip(graph: Any) -> None:
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    strip(attr.g)
                for sub in attr.graphs:
                    strip(sub)

    strip(model.graph)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return before - path.stat().st_size


def quiet_quantizer() -> Any:
    """ONNX Runtime's quantiser without its advice ("Please consider to run pre-processing...", logged
    on the root logger for every call): crossframe quantises its own exports, which need none."""
    from crossframe.export.quiet import quiet_converters

    return quiet_converters("", "onnxruntime")


def quantize_dynamic(fp32: Path, out: Path, per_channel: bool = False) -> Path:
    """Write a dynamically quantised (int8 weights, dynamic uint8 activations) copy of ``fp32`` to ``out``."""
    quantization = _quant_module()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_quantizer():
            quantization.quantize_dynamic(str(fp32), str(out), per_channel=per_channel,
                                          weight_type=quantization.QuantType.QInt8)
    except Exception as exc:  # ORT raises plain exceptions for unsupported graphs
        raise ExportError(f"onnx-int8-dynamic: quantize_dynamic failed on '{fp32.name}': "
                          f"{type(exc).__name__}: {exc}") from None
    strip_debug_info(out)
    return out


#: the ops static quantisation converts: products with a weight, and embedding lookups (``Gather``
#: from a weight table; without it a GPT's token and position tables stay float32 and the file is
#: 3.2x smaller instead of 3.5x). Normalisation, softmax, the residual adds and the
#: activation-by-activation products of attention (``q @ k.T``, ``p @ v``) stay float: quantising
#: them too costs a trained transformer 0.2-0.4 of its output scale.
STATIC_OPS = ("MatMul", "Gemm", "Conv", "Gather")


def weight_products(model: Any) -> list[str]:
    """Names of the :data:`STATIC_OPS` nodes of ``model`` with a constant (initializer) input.

    Nodes without a name are given one (``cf_<op>_<i>``) so they can be selected.
    """
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = []
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"cf_{node.op_type}_{i}"
        weight_inputs = node.input[:1] if node.op_type == "Gather" else node.input[1:]  # Gather(table, ids)
        if node.op_type in STATIC_OPS and any(x in constants for x in weight_inputs):
            names.append(node.name)
    return names


def quantize_static(fp32: Path, out: Path, batches: Iterable[np.ndarray], per_channel: bool = False) -> Path:
    """Write a statically quantised (QDQ, int8 weights and activations) copy of ``fp32`` to ``out``.

    Activation ranges come from running ``batches`` (real inputs) through the float model; only
    the products with a weight (:func:`weight_products`) are quantised.
    """
    import onnx

    quantization = _quant_module()
    out.parent.mkdir(parents=True, exist_ok=True)
    reader = make_reader(input_name(fp32), batches)
    model = onnx.load(str(fp32))
    nodes = weight_products(model)
    if not nodes:
        raise ExportError(f"onnx-int8-static: '{fp32.name}' has no MatMul, Gemm or Conv with a weight to quantise")
    try:
        with quiet_quantizer():
            quantization.quantize_static(
                model, str(out), reader, quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
                op_types_to_quantize=list(STATIC_OPS), nodes_to_quantize=nodes,
                activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"onnx-int8-static: quantize_static failed on '{fp32.name}': "
                          f"{type(exc).__name__}: {exc}") from None
    strip_debug_info(out)
    return out


def ort_predictor(path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the ONNX file at ``path`` with ONNX Runtime on CPU (``threads`` 0: ORT's choice).

    The input is cast to the graph input's element type (int64 token ids, float32 features).
    """
    import onnxruntime as ort

    from crossframe.security.artifacts import artifact_source

    source = artifact_source(path)  # a sealed file is decrypted into memory (one line without the key)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnx: ONNX Runtime cannot load '{path}': {type(exc).__name__}: {exc}") from None
    inp = session.get_inputs()[0]
    dtype = np.int64 if "int64" in inp.type else np.int32 if "int32" in inp.type else np.float32
    name = inp.name

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: np.ascontiguousarray(x, dtype=dtype)})[0], dtype=np.float32)

    return predict
