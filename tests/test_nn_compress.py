"""Compressors and exporters work by layer type on a model written only as YAML layers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from crossframe.compress.base import CompressContext
from crossframe.data.dataset import DataInfo
from crossframe.models import build_model
from crossframe.plugins import component
from crossframe.validation import validate_params

LAYERS = yaml.safe_load("""
- {conv2d: {filters: 3, kernel: 3, padding: same}}
- relu
- {residual: [{conv2d: {filters: 3, kernel: 3, padding: same}}, {norm: layer}, gelu]}
- {pool: {kind: max, size: 2}}
- flatten
- {dense: {units: 6, gain: 2.0}}
- gelu_tanh
- {dropout: 0.1}
- {dense: outputs}
""")
INFO = DataInfo("classification", (4, 4, 2), 3)
BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
OPSET = {"torch": 18, "tensorflow": 17, "jax": 18}


def spec_and_weights() -> tuple[Any, dict[str, np.ndarray]]:
    spec = build_model("graph", {"layers": LAYERS}, INFO)
    rng = np.random.default_rng(1)
    return spec, {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in spec.init(0).items()}


def compress(name: str, spec: Any, weights: Any, **params: Any) -> Any:
    comp = component("compressor", name)
    compressor = comp.obj(validate_params(comp.schema, dict(params), "compress.0"))
    return compressor.apply(CompressContext(spec, spec.name, dict(spec.params), weights, {}))


def test_low_rank_factorises_the_dense_layers_of_a_graph() -> None:
    spec, weights = spec_and_weights()
    result = compress("lowrank", spec, weights, rank=10_000)  # full rank: the same function
    assert set(result.model_params["low_rank"]) == {"5", "8"}
    new = build_model("graph", result.model_params, INFO)
    assert {"5.weight_u", "5.weight_v", "8.weight_u", "8.weight_v"} <= {p.name for p in new.table}
    x = np.random.default_rng(2).normal(size=(5, 4, 4, 2)).astype(np.float32)
    # float64 references of the same function: SVD at full rank is exact up to float32 storage of U, V
    np.testing.assert_allclose(new.forward(result.weights, x), spec.forward(weights, x), atol=1e-4)
    for backend in BACKENDS:
        from crossframe.train.runner import make_backend

        impl = make_backend(backend)
        got = impl.predict(impl.inference_state(new, result.weights), x)
        np.testing.assert_allclose(got, spec.forward(weights, x), atol=1e-4, err_msg=backend)
    smaller = compress("lowrank", spec, weights, rank=1, include=["5"])
    assert build_model("graph", smaller.model_params, INFO).param_count < spec.param_count


def test_pruning_selects_the_dense_and_conv_kernels_of_a_graph() -> None:
    spec, weights = spec_and_weights()
    result = compress("prune", spec, weights, sparsity=0.5)
    assert set(result.masks) == {"0.weight", "2.0.weight", "5.weight", "8.weight"}  # never biases or norms
    for name, mask in result.masks.items():
        assert abs(float(mask.mean()) - 0.5) <= 1.0 / mask.size + 1e-9
        assert np.all(result.weights[name][mask == 0] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_export_of_a_graph_matches_the_reference(backend: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from crossframe.export import ExportRequest, export_model
    from crossframe.export.onnx_runtime import load_onnx

    spec, weights = spec_and_weights()
    rng = np.random.default_rng(3)
    request = ExportRequest(spec=spec, weights=weights, backend=backend, out_dir=tmp_path,
                            sample=rng.normal(size=(3, 4, 4, 2)).astype(np.float32))
    artifact, info = export_model("onnx", {"opset": OPSET[backend]}, request)
    assert info["verify"]["passed"]
    x = rng.normal(size=(7, 4, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(load_onnx(artifact.path)(x), spec.forward(weights, x), atol=1e-4)
