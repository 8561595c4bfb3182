"""Native formats (torch.export .pt2, SavedModel, TFLite, jax.export StableHLO), each reloaded, run and verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossframe.errors import CapabilityError, ConfigError
from crossframe.export import export_model
from crossframe.export.files import atomic_output
from tests.test_export_onnx import CASES, make_request

#: (exporter name, params) -> backend and the format it must write
FORMATS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "torch-export": ("torch", "native", {}),  # `native` picks each backend's first native format
    "saved-model": ("tensorflow", "native", {}),
    "tflite": ("tensorflow", "native", {"format": "tflite"}),
    "stablehlo": ("jax", "stablehlo", {}),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``exports(format, model)``: that native export, made once for the module."""
    done: dict[tuple[str, str], tuple[Any, dict, Any]] = {}

    def get(fmt: str, model: str) -> tuple[Any, dict, Any]:
        if (fmt, model) not in done:
            backend, exporter, params = FORMATS[fmt]
            pytest.importorskip(backend)
            # gpt here with rotary positions and an untied head (the ONNX tests cover learned, tied)
            overrides = {"rope": True, "tied_embeddings": False} if model == "gpt" else {}
            request = make_request(backend, model, tmp_path_factory.mktemp(f"{fmt}-{model}"), batch=2, seed=1,
                                   **overrides)
            artifact, info = export_model(exporter, params, request)
            done[(fmt, model)] = (artifact, info, request)
        return done[(fmt, model)]

    return get


@pytest.mark.parametrize("model", list(CASES))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_native_export_reloads_and_verifies(exports: Any, fmt: str, model: str) -> None:
    from crossframe.plugins import component

    artifact, info, request = exports(fmt, model)
    backend, exporter, params = FORMATS[fmt]
    assert (artifact.format, artifact.backend, info["format"]) == (fmt, backend, fmt)
    assert artifact.path.exists() and info["size_bytes"] == artifact.size_bytes > 0
    figures = info["verify"]
    assert figures["passed"] and figures["max_abs_diff"] <= 1e-4
    assert all(shape[0] != figures["traced_shape"][0] for shape in figures["batches"])
    # a fresh exporter loads the artefact from disk and runs shapes the export never saw
    run = component("exporter", exporter).obj(params).load(artifact)
    info_ = request.spec.data_info
    rng = np.random.default_rng(5)
    for rows, length in ((1, 8), (6, 3)):
        if model == "gpt":
            x = rng.integers(0, info_.num_outputs, (rows, length))
        else:
            x = rng.normal(size=(rows, *info_.input_shape)).astype(np.float32)
        out = run(x)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, request.spec.forward(request.weights, x), atol=1e-4, rtol=1e-4)


def test_saved_model_is_a_directory_and_tflite_a_flatbuffer(exports: Any) -> None:
    saved, _, _ = exports("saved-model", "mlp")
    assert (saved.path / "saved_model.pb").is_file() and (saved.path / "variables").is_dir()
    lite, _, _ = exports("tflite", "mlp")
    assert lite.path.read_bytes()[4:8] == b"TFL3"  # the TFLite flatbuffer identifier


def test_a_format_the_backend_cannot_write_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    request = make_request("torch", "mlp", tmp_path)
    with pytest.raises(CapabilityError) as err:
        export_model("native", {"format": "tflite"}, request)
    assert "backend 'torch' cannot write 'tflite'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"export\.native\.format"):
        export_model("native", {"format": "pickle"}, request)


def test_atomic_output_keeps_the_old_artefact_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "saved_model"
    with atomic_output(target, directory=True) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_output(target, directory=True) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("converter died")
    assert (target / "a.txt").read_text() == "one"
    with atomic_output(target, directory=True) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_model"]  # no temporaries left behind
