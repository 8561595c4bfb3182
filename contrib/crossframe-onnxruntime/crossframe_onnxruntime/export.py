"""Canonical weights + model spec -> an ONNX graph, built op by op with ``onnx.helper``.

No framework exporter is involved: the graph is written from crossframe's canonical layouts
(``crossframe.models``), so a run trained on any backend exports the same file.

- Input ``x``: float32 ``[batch, *input_shape]`` (NHWC images for ``cnn``), batch axis dynamic.
- Output ``logits`` (classification) or ``outputs`` (regression): float32 ``[batch, num_outputs]``.
- ``mlp``: ``Flatten`` then ``MatMul`` + ``Add`` per layer (dense weights stay ``[in, out]``).
- ``cnn``: ``Transpose`` NHWC -> NCHW; per block ``Conv`` (kernels stored OIHW, 'same' pads),
  activation, ``MaxPool`` 2x2 stride 2 (odd trailing rows / columns dropped, as the reference);
  ``Transpose`` back to NHWC before ``Flatten`` so the flatten order is the canonical one.
- Activations: ``Relu``, ``Tanh``; GELU (tanh approximation) is spelled out as
  ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` below opset 20 and is the ``Gelu``
  op with ``approximate="tanh"`` from opset 20 on. The default opset is 17.
- ``metadata_props["crossframe.model"]`` holds the spec as JSON (``ModelSpec.to_json``), so a
  shipped file can be evaluated and its canonical weights read back (:func:`canonical_weights`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crossframe.errors import CapabilityError, ConfigError
from crossframe.models.spec import ModelSpec, Params
from crossframe_onnxruntime.params import DEFAULT_OPSET, GELU_OPSET

MODELS = ("mlp", "cnn")
METADATA_KEY = "crossframe.model"
INPUT_NAME = "x"
PRODUCER = "crossframe-onnxruntime"


def output_name(spec: ModelSpec) -> str:
    """``logits`` for classification, ``outputs`` for regression."""
    return "logits" if spec.data_info.task == "classification" else "outputs"


class _Graph:
    """A small builder: nodes, initializers and unique value names."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._constants: dict[float, str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, output: str | None = None,
           **attrs: Any) -> str:
        out = output or self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{len(self.nodes)}", **attrs))
        return out

    def initializer(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def scalar(self, value: float) -> str:
        if value not in self._constants:
            self._constants[value] = self.initializer(f"const_{len(self._constants)}", np.array(value, np.float32))
        return self._constants[value]

    def activation(self, kind: str, x: str) -> str:
        if kind == "relu":
            return self.op("Relu", [x])
        if kind == "tanh":
            return self.op("Tanh", [x])
        if kind == "gelu":
            if self.opset >= GELU_OPSET:
                return self.op("Gelu", [x], approximate="tanh")
            cube = self.op("Mul", [self.op("Mul", [x, x], "sq"), x], "cube")
            inner = self.op("Add", [x, self.op("Mul", [cube, self.scalar(0.044715)])], "inner")
            t = self.op("Tanh", [self.op("Mul", [inner, self.scalar(math.sqrt(2.0 / math.pi))])])
            half_x = self.op("Mul", [x, self.scalar(0.5)], "half_x")
            return self.op("Mul", [half_x, self.op("Add", [t, self.scalar(1.0)])], "gelu")
        raise CapabilityError(f"model.activation: '{kind}' has no ONNX mapping here; use relu, tanh or gelu")

    def dense(self, x: str, weights: Mapping[str, np.ndarray], prefix: str, output: str | None = None) -> str:
        b = self.initializer(f"{prefix}.bias", weights[f"{prefix}.bias"])
        if f"{prefix}.weight_u" in weights:  # a low-rank layer (model param low_rank): x @ U @ V
            u = self.initializer(f"{prefix}.weight_u", weights[f"{prefix}.weight_u"])  # [in, r]
            v = self.initializer(f"{prefix}.weight_v", weights[f"{prefix}.weight_v"])  # [r, out]
            projected = self.op("MatMul", [self.op("MatMul", [x, u], "matmul_u"), v], "matmul_v")
            return self.op("Add", [projected, b], output=output)
        w = self.initializer(f"{prefix}.weight", weights[f"{prefix}.weight"])  # canonical [in, out]
        return self.op("Add", [self.op("MatMul", [x, w], "matmul"), b], output=output)


def _check_opset(opset: int) -> int:
    highest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= int(opset) <= highest:
        raise ConfigError(f"opset: {opset} is not supported; use {DEFAULT_OPSET} to {highest} "
                          f"(the installed onnx {onnx.__version__} knows up to {highest})")
    return int(opset)


def build_onnx_model(spec: ModelSpec, weights: Mapping[str, np.ndarray], opset: int = DEFAULT_OPSET,
                     check: bool = True) -> onnx.ModelProto:
    """The ONNX model of ``spec`` with canonical ``weights`` baked in as initializers.

    Raises :class:`CapabilityError` for an architecture other than ``mlp`` / ``cnn`` and
    :class:`~crossframe.errors.CheckpointError` when ``weights`` do not fit the spec's table.
    With ``check`` the model goes through ``onnx.checker.check_model`` (full check, with
    shape inference).
    """
    opset = _check_opset(opset)
    if spec.name not in MODELS:
        raise CapabilityError(f"model.name: '{spec.name}' cannot be exported to ONNX by "
                              f"crossframe-onnxruntime; it knows {', '.join(repr(m) for m in MODELS)}")
    spec.check_weights(weights)
    g = _Graph(opset)
    params, info = spec.params, spec.data_info
    act = params.get("activation", "relu")
    out_name = output_name(spec)
    if spec.name == "mlp":
        n_layers = len(params["hidden"]) + 1
        h = g.op("Flatten", [INPUT_NAME], "flat", axis=1)
        for i in range(n_layers):
            last = i == n_layers - 1
            h = g.dense(h, weights, f"layers.{i}", output=out_name if last else None)
            if not last:
                h = g.activation(act, h)
    else:
        k = int(params["kernel_size"])
        h = g.op("Transpose", [INPUT_NAME], "nchw", perm=[0, 3, 1, 2])
        for i in range(len(params["channels"])):
            kernel = np.transpose(weights[f"conv.{i}.weight"], (3, 2, 0, 1))  # HWIO -> OIHW
            w = g.initializer(f"conv.{i}.weight", kernel)
            b = g.initializer(f"conv.{i}.bias", weights[f"conv.{i}.bias"])
            h = g.op("Conv", [h, w, b], "conv", kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1],
                     dilations=[1, 1], group=1)
            h = g.activation(act, h)
            h = g.op("MaxPool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2])
        h = g.op("Transpose", [h], "nhwc", perm=[0, 2, 3, 1])  # flatten in the canonical NHWC order
        h = g.op("Flatten", [h], "flat", axis=1)
        h = g.activation(act, g.dense(h, weights, "fc.0"))
        g.dense(h, weights, "fc.1", output=out_name)

    graph = helper.make_graph(
        g.nodes, f"crossframe_{spec.name}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *info.input_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", info.num_outputs])],
        g.initializers,
    )
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opset_ids, producer_name=PRODUCER,
                              producer_version=_version(),
                              doc_string=f"crossframe '{spec.name}' exported from canonical weights")
    model.ir_version = helper.find_min_ir_version_for(opset_ids)  # the oldest IR that runtimes accept
    helper.set_model_props(model, {METADATA_KEY: json.dumps(spec.to_json(), sort_keys=True)})
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def canonical_weights(model: onnx.ModelProto, spec: ModelSpec) -> Params:
    """Read the canonical weights back from a model built by :func:`build_onnx_model` (exactly)."""
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out: Params = {}
    for p in spec.table:
        if p.name not in stored:
            raise CapabilityError(f"onnx model: initializer '{p.name}' is missing; it was not exported by "
                                  f"crossframe-onnxruntime for model '{spec.name}'")
        value = stored[p.name]
        if p.layout == "conv2d":
            value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        out[p.name] = np.ascontiguousarray(value, dtype=np.float32)
    spec.check_weights(out, "onnx model")
    return out


def export_onnx(spec: ModelSpec, weights: Mapping[str, np.ndarray], path: str | os.PathLike,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write the ONNX model of ``spec`` with ``weights`` to ``path`` (atomically); returns the path."""
    model = build_onnx_model(spec, weights, opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)
    return path


class OnnxCanonicalExporter:
    """The ``onnx-canonical`` exporter: ``export(spec, weights, path) -> Path``."""

    def __init__(self, params: Any = None) -> None:
        if params is None:
            opset = DEFAULT_OPSET
        elif isinstance(params, Mapping):
            opset = params.get("opset", DEFAULT_OPSET)
        else:
            opset = getattr(params, "opset", DEFAULT_OPSET)
        self.opset = _check_opset(opset)

    def export(self, spec: ModelSpec, weights: Params, path: str | os.PathLike) -> Path:
        """Write ``path`` (a ``.onnx`` file) and return it."""
        return export_onnx(spec, weights, path, self.opset)


def _version() -> str:
    from crossframe_onnxruntime import __version__

    return __version__
