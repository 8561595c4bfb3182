"""ONNX from every backend (mlp, cnn, gpt), run in ONNX Runtime on batch shapes it was not traced with.

Each (backend, model) is exported once per module (exports are slow) and shared by the asserts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.data.dataset import DataInfo
from crossframe.export import ExportRequest, export_model
from crossframe.export.verify import verification_batches
from crossframe.models import build_model

pytest.importorskip("onnxruntime")

#: tiny architectures: exports of these take about a second each
CASES: dict[str, tuple[dict[str, Any], DataInfo]] = {
    "mlp": ({"hidden": [6], "activation": "gelu"}, DataInfo("classification", (3, 2, 1), 4)),
    "cnn": ({"channels": [3], "kernel_size": 3, "hidden": 5}, DataInfo("classification", (4, 4, 2), 3)),
    "gpt": ({"n_layer": 1, "n_head": 2, "d_model": 8, "max_seq_len": 8}, DataInfo("language_modeling", (6,), 11)),
}
BACKENDS = {"torch": "torch", "tensorflow": "tensorflow", "jax": "jax"}
OPSET = {"torch": 18, "tensorflow": 17, "jax": 18}  # each a requested opset the artefact must carry


def make_request(backend: str, model: str, out_dir: Path, batch: int = 3, seed: int = 0,
                 **overrides: Any) -> ExportRequest:
    """A request for a tiny ``model`` (params updated by ``overrides``), seeded weights, ``batch`` sample rows."""
    params, info = CASES[model]
    spec = build_model(model, {**params, **overrides}, info)
    rng = np.random.default_rng(seed)
    if info.task == "language_modeling":
        sample = rng.integers(0, info.num_outputs, (batch, *info.input_shape)).astype(np.int64)
    else:
        sample = rng.normal(size=(batch, *info.input_shape)).astype(np.float32)
    weights = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in spec.init(seed).items()}
    return ExportRequest(spec=spec, weights=weights, backend=backend, out_dir=out_dir, sample=sample)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``exports(backend, model)``: the ONNX export of that pair, made once for the module."""
    done: dict[tuple[str, str], tuple[Any, dict, ExportRequest]] = {}

    def get(backend: str, model: str) -> tuple[Any, dict, ExportRequest]:
        if (backend, model) not in done:
            pytest.importorskip(BACKENDS[backend])
            request = make_request(backend, model, tmp_path_factory.mktemp(f"{backend}-{model}"))
            artifact, info = export_model("onnx", {"opset": OPSET[backend]}, request)
            done[(backend, model)] = (artifact, info, request)
        return done[(backend, model)]

    return get


@pytest.mark.parametrize("model", list(CASES))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_onnx_export_verifies_on_other_shapes(exports: Any, backend: str, model: str) -> None:
    artifact, info, _ = exports(backend, model)
    assert artifact.format == "onnx" and artifact.backend == backend and artifact.path.is_file()
    assert info["size_bytes"] == artifact.path.stat().st_size > 0
    figures = info["verify"]
    assert figures["passed"] and figures["max_abs_diff"] <= 1e-4
    traced = figures["traced_shape"]
    for shape in figures["batches"]:
        assert shape[0] != traced[0]  # another batch size than exported with
        if model == "gpt":
            assert shape[1] != traced[1]  # and another sequence length
    assert artifact.extra["opset"] == OPSET[backend]


@pytest.mark.parametrize("model", list(CASES))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_onnx_runtime_matches_the_numpy_reference(exports: Any, backend: str, model: str) -> None:
    import onnx

    from crossframe.export.onnx_runtime import load_onnx

    artifact, _, request = exports(backend, model)
    graph_input = onnx.load(str(artifact.path)).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # a symbolic batch axis
    if model == "gpt":
        assert dims[1].dim_param  # and a symbolic sequence axis
    run = load_onnx(artifact.path)
    rng = np.random.default_rng(7)
    info = request.spec.data_info
    if model == "gpt":
        x = rng.integers(0, info.num_outputs, (7, 8))  # longer than traced, up to max_seq_len
    else:
        x = rng.normal(size=(7, *info.input_shape)).astype(np.float32)
    out = run(x)
    np.testing.assert_allclose(out, request.spec.forward(request.weights, x), atol=1e-4, rtol=1e-4)
    assert out.dtype == np.float32


@given(batch=st.integers(1, 9), traced_batch=st.integers(1, 9), length=st.integers(1, 12),
       traced_length=st.integers(2, 12), tokens=st.booleans())
def test_verification_batches_never_have_the_traced_shape(batch: int, traced_batch: int, length: int,
                                                          traced_length: int, tokens: bool) -> None:
    sample = np.arange(batch * traced_length).reshape(batch, traced_length)
    traced = (traced_batch, traced_length)
    batches = verification_batches(sample, traced, tokens)
    assert len(batches) == 2
    for x in batches:
        assert len(x) >= 1 and x.shape[0] != traced_batch
        assert set(np.unique(x)) <= set(np.unique(sample))  # rows of the real sample, nothing invented
        if tokens:
            assert x.shape[1] != traced_length and x.shape[1] >= 1


def test_exporters_are_registered_with_schemas() -> None:
    from crossframe.plugins import get_plugin_manager

    found = get_plugin_manager().components("exporter")
    for name in ("onnx", "native", "torch-export", "saved-model", "tflite", "stablehlo"):
        assert found[name].plugin == "crossframe"
        fields = found[name].schema.model_fields
        assert fields["verify"].default is True and "tolerance" in fields
    assert found["onnx"].schema.model_fields["opset"].default >= 17
