"""A model the converter cannot translate fails in one line naming the backend, the format and the op.

Every failure here is real: a model builder is made to use an op the converter lacks, and the real
converter (or ONNX Runtime) refuses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossframe.errors import ConfigError, ExportError
from crossframe.export import export_model
from crossframe.export.verify import verify_export
from tests.test_export_onnx import make_request


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_torch_onnx_names_the_missing_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from crossframe_torch import lowering

    monkeypatch.setitem(lowering.ACTIVATIONS, "gelu_tanh", torch.special.i1e)  # no ONNX function for prims.i1e
    with pytest.raises(ExportError) as err:
        export_model("onnx", {}, make_request("torch", "mlp", tmp_path))
    message = one_line(err)
    assert message.startswith("export: onnx from torch (mlp) failed at op ")
    assert "i1e" in message.split("at op ")[1].split(":")[0]
    assert not (tmp_path / "model.onnx").exists()  # nothing half-written is left


def test_tf2onnx_untranslated_op_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = pytest.importorskip("tensorflow")
    from crossframe_tensorflow import lowering

    monkeypatch.setitem(lowering.ACTIVATIONS, "gelu_tanh", tf.math.bessel_i1e)  # tf2onnx has no BesselI1e
    request = make_request("tensorflow", "mlp", tmp_path)
    with pytest.raises(ExportError) as err:
        export_model("onnx", {}, request)
    assert one_line(err).startswith("export: onnx from tensorflow (mlp) failed at op 'BesselI1e'")
    with pytest.raises(ExportError) as err:  # nor is it a TFLite builtin
        export_model("tflite", {}, request)
    assert one_line(err).startswith("export: tflite from tensorflow (mlp) failed at op 'BesselI1e'")


def test_jax2onnx_missing_primitive_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jax = pytest.importorskip("jax")
    from crossframe_jax import lowering

    def host_sin(x: object) -> object:  # a host callback: no ONNX (or StableHLO-portable) equivalent
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)  # type: ignore[attr-defined]

    monkeypatch.setitem(lowering.ACTIVATIONS, "gelu_tanh", host_sin)
    with pytest.raises(ExportError) as err:
        export_model("onnx", {}, make_request("jax", "mlp", tmp_path))
    assert one_line(err).startswith("export: onnx from jax (mlp) failed at op 'pure_callback'")


def test_onnx_runtime_refusal_names_the_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("jax")
    from crossframe_jax import export as jax_export

    # without the NHWC pooling rewrite jax2onnx writes a 6-d MaxPool, which ONNX Runtime cannot run
    monkeypatch.setattr(jax_export, "rewrite_nhwc_pools", lambda model: 0)
    with pytest.raises(ExportError) as err:
        export_model("onnx", {}, make_request("jax", "cnn", tmp_path))
    assert one_line(err).startswith("export: onnx from jax (cnn) failed at op 'MaxPool': ONNX Runtime")


def test_a_mismatch_beyond_tolerance_reports_the_figure(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    request = make_request("torch", "mlp", tmp_path)
    artifact, info = export_model("onnx", {"verify": False}, request)
    assert "verify" not in info
    from crossframe.export.onnx_runtime import load_onnx

    other = make_request("torch", "mlp", tmp_path, seed=9)  # other weights: a real, sizeable difference
    native = lambda x: other.spec.forward(other.weights, x)  # noqa: E731
    with pytest.raises(ExportError) as err:
        verify_export(load_onnx(artifact.path), request, artifact, tolerance=1e-4, native=native)
    message = one_line(err)
    figure = float(message.split("native model by ")[1].split(" ")[0])
    assert figure > 1e-4 and "tolerance 0.0001" in message
    figures = verify_export(load_onnx(artifact.path), request, artifact, tolerance=1e-4)
    assert figures["max_abs_diff"] <= 1e-4 < figure


def test_bad_params_are_config_errors(tmp_path: Path) -> None:
    request = make_request("torch", "mlp", tmp_path)
    with pytest.raises(ConfigError, match=r"export\.onnx\.opset: input should be greater than or equal to 17"):
        export_model("onnx", {"opset": 13}, request)
    with pytest.raises(ConfigError, match=r"export\.onnx\.tolerence: unknown key; did you mean 'tolerance'"):
        export_model("onnx", {"tolerence": 1e-3}, request)
