"""Deployment int8 through ONNX Runtime: dynamic and static quantisation verify within tolerance and shrink."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from crossframe.compress import deploy, ort_quant  # noqa: E402
from crossframe.compress.measure import evaluate_predictions, output_diff, size_on_disk  # noqa: E402
from crossframe.data.dataset import DataInfo  # noqa: E402
from crossframe.models import build_model  # noqa: E402


def _trained_mlp() -> tuple[object, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A digits-shaped MLP spec with ridge-fitted weights (so outputs mean something)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    spec = build_model("mlp", {"hidden": [256, 128]}, DataInfo("classification", (64,), 10))
    weights = spec.init(0)
    # fit the last layer by ridge regression on the random features: a real classifier in one shot
    h = x
    n_layers = len([p for p in spec.table if p.name.endswith(".weight")])
    for i in range(n_layers - 1):
        h = np.maximum(h @ weights[f"layers.{i}.weight"] + weights[f"layers.{i}.bias"], 0)
    target = np.eye(10, dtype=np.float32)[y] * 4.0 - 2.0
    feats = np.c_[h, np.ones(len(h))]
    sol = np.linalg.solve(feats.T @ feats + 1.0 * np.eye(feats.shape[1]), feats.T @ target)  # ridge: tame weights
    weights[f"layers.{n_layers - 1}.weight"] = sol[:-1].astype(np.float32)
    weights[f"layers.{n_layers - 1}.bias"] = sol[-1].astype(np.float32)
    return spec, weights, x, y


def _mlp_onnx(spec: object, weights: dict[str, np.ndarray], path: Path) -> Path:
    """The canonical MLP as a float32 ONNX graph (MatMul + Add + Relu), batch axis dynamic."""
    from onnx import TensorProto, helper, numpy_helper

    n_layers = len([p for p in spec.table if p.name.endswith(".weight")])  # type: ignore[attr-defined]
    nodes, inits, h = [], [], "x"
    for i in range(n_layers):
        w, b = f"layers.{i}.weight", f"layers.{i}.bias"
        inits += [numpy_helper.from_array(weights[w], w), numpy_helper.from_array(weights[b], b)]
        nodes += [helper.make_node("MatMul", [h, w], [f"mm{i}"]), helper.make_node("Add", [f"mm{i}", b], [f"a{i}"])]
        h = f"a{i}"
        if i < n_layers - 1:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"]))
            h = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, dict, np.ndarray, np.ndarray]:
    spec, weights, x, y = _trained_mlp()
    path = _mlp_onnx(spec, weights, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return path, spec, weights, x, y


def _check(fp32: Path, int8: Path, spec: object, weights: dict, x: np.ndarray, y: np.ndarray, method: str) -> None:
    reference = spec.forward(weights, x)  # type: ignore[attr-defined]
    fp32_out = ort_quant.ort_predictor(fp32, threads=1)(x)
    assert output_diff(fp32_out, reference)[1] < 1e-5  # the float graph is the model
    got = ort_quant.ort_predictor(int8, threads=1)(x)
    _, rel = output_diff(got, reference)
    assert 0 < rel <= deploy.DEFAULT_TOLERANCE[method], rel  # int8 changed the numbers, within tolerance
    assert size_on_disk(fp32) / size_on_disk(int8) > 3.0  # int8 weights: about 4x smaller
    batches = [{"x": x[i:i + 128], "y": y[i:i + 128]} for i in range(0, len(x), 128)]
    acc_fp32 = evaluate_predictions(lambda b: spec.forward(weights, b), batches, "classification")  # type: ignore
    acc_int8 = evaluate_predictions(ort_quant.ort_predictor(int8, threads=1), batches, "classification")
    assert acc_fp32["val/accuracy"] > 0.8
    assert acc_int8["val/accuracy"] >= acc_fp32["val/accuracy"] - 0.03


def test_dynamic_int8_verifies_and_shrinks(fp32_model: tuple, tmp_path: Path) -> None:
    fp32, spec, weights, x, y = fp32_model
    int8 = ort_quant.quantize_dynamic(fp32, tmp_path / "model.int8.onnx")
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    _check(fp32, int8, spec, weights, x, y, "onnx-int8-dynamic")


def test_static_int8_calibrates_on_real_batches(fp32_model: tuple, tmp_path: Path) -> None:
    fp32, spec, weights, x, y = fp32_model
    batches = [x[i:i + 64] for i in range(0, 512, 64)]
    int8 = ort_quant.quantize_static(fp32, tmp_path / "model.int8.onnx", batches)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("QuantizeLinear") >= 3  # activations quantised with calibrated ranges
    _check(fp32, int8, spec, weights, x, y, "onnx-int8-static")


def test_calibration_reader_feeds_each_batch_once(fp32_model: tuple) -> None:
    fp32 = fp32_model[0]
    batches = [np.full((2, 64), i, np.float32) for i in range(3)]
    reader = ort_quant.make_reader(ort_quant.input_name(fp32), batches)
    fed = [reader.get_next() for _ in range(4)]
    assert [f["x"][0, 0] for f in fed[:3]] == [0, 1, 2]
    assert fed[3] is None


def test_bad_deploy_params_are_one_line() -> None:
    from crossframe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"export\.0") as info:
        deploy.parse_params("onnx-int8-static", {"calibration_batchez": 3}, "export.0")
    assert "\n" not in str(info.value)
    assert deploy.parse_params("onnx-int8-static", {}, "export.0").tolerance == deploy.DEFAULT_TOLERANCE[
        "onnx-int8-static"]
