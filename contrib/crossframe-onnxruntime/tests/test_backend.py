"""The ``onnxruntime`` backend against crossframe's conformance kit, plus its own checks.

It is inference-only, so the kit's training checks are overridden here, each with its reason:
optimizer steps, clipping and gradient accumulation are skipped; the round trip, ``eval_step``
and checkpoint checks are rewritten on ``inference_state`` (the kit builds those states with
``create_state``, which an inference-only backend refuses). The forward pass against the
numpy reference runs unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx
from onnx import TensorProto, helper, numpy_helper

from crossframe.backend import TrainSetup
from crossframe.checkpoint import load_checkpoint, save_checkpoint
from crossframe.data.dataset import DataInfo
from crossframe.errors import CapabilityError, CrossframeError, DataError
from crossframe.models import build_model
from crossframe.testing import BackendConformance
from crossframe.testing.conformance import MODEL_CASES, OPTIMIZER_CASES, _batch, _max_diff

INFERENCE_ONLY = "onnxruntime is inference-only: it has no optimizer and cannot train"
CANNOT_TRAIN = ("backend 'onnxruntime' is inference-only: it cannot train; "
                "evaluate a trained run with 'crossframe eval RUN_DIR --backend onnxruntime'")


class TestOnnxRuntimeConformance(BackendConformance):
    """The conformance kit; training checks deselected, state checks rebuilt on inference states."""

    backend = "onnxruntime"

    # test_capabilities_are_declared, test_forward_matches_numpy_reference and
    # test_capability_errors_are_one_line are inherited and run as they are.

    @pytest.mark.skip(reason=INFERENCE_ONLY)
    @pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_CASES))
    def test_optimizer_steps_match_reference(self, impl, optimizer):  # type: ignore[override]
        """Deselected: no optimizer."""

    @pytest.mark.skip(reason=INFERENCE_ONLY)
    def test_clipping_matches_reference(self, impl):  # type: ignore[override]
        """Deselected: no gradients to clip."""

    @pytest.mark.skip(reason=INFERENCE_ONLY)
    def test_grad_accumulation_equals_one_big_batch(self, impl):  # type: ignore[override]
        """Deselected: no gradients to accumulate."""

    @pytest.mark.skip(reason=INFERENCE_ONLY + " (nor run 'gpt')")
    def test_gpt_grad_accumulation_with_masks(self, impl):  # type: ignore[override]
        """Deselected: no gradients to accumulate."""

    def test_canonical_round_trip_is_exact(self, impl):  # type: ignore[override]
        """canonical -> ONNX initializers (OIHW kernels) -> canonical is exact, for every model."""
        for model in self.claimed_models(impl):
            spec = self.spec(model)
            weights = spec.init(5)
            back, opt = impl.export_state(impl.inference_state(spec, weights))
            assert opt == {}, f"{model}: an inference state has no optimizer state, got {sorted(opt)}"
            assert set(back) == set(weights), f"{model}: exported names {sorted(back)} != table {sorted(weights)}"
            for p in spec.table:
                got = back[p.name]
                assert got.shape == p.shape and got.dtype == np.float32, (
                    f"{model}: '{p.name}' comes back as {got.dtype}{got.shape}, canonical is float32{p.shape}")
                assert np.array_equal(got, weights[p.name]), (
                    f"{model}: round trip changed '{p.name}' (layout '{p.layout}', max |diff| "
                    f"{_max_diff(got, weights[p.name]):.3g})")

    def test_eval_step_sums(self, impl):  # type: ignore[override]
        """The kit's eval_step check (it uses an inference state here), and int64 confusion counts."""
        super().test_eval_step_sums(impl)
        setup = self.linear_setup("sgd")
        state = impl.inference_state(setup.spec, setup.weights)
        host = impl.fetch(impl.eval_step(state, _batch(setup.spec.data_info, 24, 3)))
        assert np.asarray(host["confusion"]).dtype == np.int64

    def test_checkpoint_save_and_load(self, impl, tmp_path: Path):  # type: ignore[override]
        """Weights survive safetensors; load_state installs them in a new session (no optimizer)."""
        spec = self.spec("cnn")
        trained = {k: v * 1.5 + 0.01 for k, v in spec.init(8).items()}
        state = impl.inference_state(spec, trained)
        weights, opt = impl.export_state(state)
        save_checkpoint(tmp_path, 2, weights, opt, {"backend": self.backend}, keep=1)
        loaded = load_checkpoint(tmp_path)
        fresh = impl.load_state(impl.inference_state(spec, spec.init(9)), loaded.weights,
                                loaded.optimizer_state or None)
        w2, _ = impl.export_state(fresh)
        for name in weights:
            assert np.array_equal(w2[name], weights[name]), f"weight '{name}' changed through save / load"
        x = _batch(spec.data_info, 7, 4)["x"]
        assert np.array_equal(impl.predict(fresh, x), impl.predict(state, x)), "predictions differ after load"


# ---------------------------------------------------------------------- the backend's own checks


@pytest.fixture
def backend():
    from crossframe_onnxruntime.backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend()


def test_capabilities_say_inference_only(backend) -> None:
    caps = backend.capabilities()
    assert caps.can_train is False and caps.optimizers == () and caps.precisions == ("fp32",)
    assert caps.strategies == ("single",) and caps.models == ("mlp", "cnn") and caps.devices[0] == "cpu"
    assert "inference-only" in caps.notes["adamw"]


def test_create_state_and_train_step_refuse_in_one_line(backend) -> None:
    spec = build_model("mlp", {"hidden": [3]}, DataInfo("classification", (4,), 2))
    with pytest.raises(CapabilityError) as info:
        backend.create_state(TrainSetup(spec, spec.init(0)))
    assert str(info.value) == CANNOT_TRAIN
    with pytest.raises(CapabilityError, match="cannot train"):
        backend.train_step(backend.inference_state(spec, spec.init(0)), _batch(spec.data_info, 2, 0), 0.1)


def test_a_training_run_is_refused_before_it_starts(backend) -> None:
    from crossframe.config.loading import load_config
    from crossframe.train.runner import check_capabilities

    config = load_config({"backend": "onnxruntime"}, resolve_components=False)
    with pytest.raises(CapabilityError) as info:
        check_capabilities(config, backend.capabilities(), "cpu", "mlp")
    message = str(info.value)
    assert "\n" not in message and "inference-only" in message, message
    check_capabilities(config, backend.capabilities(), "cpu", "mlp", training=False)  # eval is fine


def test_unsupported_precision_and_device_are_one_line_errors(backend) -> None:
    spec = build_model("mlp", {"hidden": [3]}, DataInfo("classification", (4,), 2))
    with pytest.raises(CapabilityError, match=r"precision: 'bf16'"):
        backend.inference_state(spec, spec.init(0), precision="bf16")
    if "gpu" not in backend.capabilities().devices:
        with pytest.raises(CapabilityError, match=r"device: 'gpu' requested.*onnxruntime-gpu"):
            backend.inference_state(spec, spec.init(0), device="gpu")


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
@pytest.mark.parametrize("opset", [17, 20])
def test_every_activation_and_opset_matches_the_reference(backend, activation: str, opset: int) -> None:
    from crossframe_onnxruntime.backend import OnnxState, _session
    from crossframe_onnxruntime.export import build_onnx_model

    for model in ("mlp", "cnn"):
        params, info = MODEL_CASES[model]
        spec = build_model(model, {**params, "activation": activation}, info)
        weights = spec.init(2)
        proto = build_onnx_model(spec, weights, opset=opset)
        ops = {n.op_type for n in proto.graph.node}
        if activation == "gelu":
            assert ("Gelu" in ops) == (opset >= 20), f"opset {opset}: ops {sorted(ops)}"
        state = OnnxState(_session(proto.SerializeToString(), "cpu"), spec=spec)
        x = _batch(info, 13, 5)["x"] * 2
        diff = _max_diff(backend.predict(state, x), spec.forward(weights, x))
        assert diff <= 1e-5, f"{model} / {activation} / opset {opset}: |diff| {diff:.3g}"


def test_regression_eval_sums(backend) -> None:
    spec = build_model("mlp", {"hidden": [5], "activation": "tanh"}, DataInfo("regression", (3, 2), 2))
    weights = spec.init(4)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(10, 3, 2)).astype(np.float32), "y": rng.normal(size=(10, 2)).astype(np.float32)}
    sums = backend.eval_step(backend.inference_state(spec, weights), batch)
    err = spec.forward(weights, batch["x"]).astype(np.float64) - batch["y"]
    assert sums["count"] == 10 and sums["outputs"] == 2
    assert abs(sums["loss_sum"] - (err**2).mean(axis=1).sum()) <= 1e-5
    assert abs(sums["abs_err_sum"] - np.abs(err).sum()) <= 1e-5
    assert abs(sums["sq_err_sum"] - (err**2).sum()) <= 1e-5


def test_export_onnx_writes_a_checked_file_with_dynamic_batch(backend, tmp_path: Path) -> None:
    from crossframe_onnxruntime import export_onnx, load_model

    spec = build_model("cnn", {"channels": [3], "hidden": 5}, DataInfo("classification", (7, 6, 2), 4))
    weights = spec.init(1)
    path = export_onnx(spec, weights, tmp_path / "out" / "model.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version == 8
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [7, 6, 2]
    state = load_model(path)
    assert state.spec is not None and state.spec.name == "cnn" and state.task == "classification"
    for n in (1, 33):
        x = _batch(spec.data_info, n, n)["x"]
        assert _max_diff(backend.predict(state, x), spec.forward(weights, x)) <= 1e-5
    exported, _ = backend.export_state(state)
    assert all(np.array_equal(exported[k], weights[k]) for k in weights)
    with pytest.raises(DataError, match=r"x: shape \[2, 6, 7, 2\] does not fit") as info:
        backend.predict(state, np.zeros((2, 6, 7, 2), np.float32))
    assert "\n" not in str(info.value)


def test_load_model_wraps_a_foreign_file(backend, tmp_path: Path) -> None:
    from crossframe_onnxruntime import load_model

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["y"])],
        "foreign", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [numpy_helper.from_array(w, "w")])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    state = load_model(path)
    x = np.random.default_rng(0).normal(size=(5, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(backend.predict(state, x), x.reshape(5, 4) @ w, atol=1e-6)
    sums = backend.eval_step(state, {"x": x, "y": np.array([0, 1, 2, 0, 1])})
    assert sums["confusion"].shape == (3, 3) and sums["confusion"].sum() == 5
    with pytest.raises(CapabilityError, match="not exported by crossframe"):
        backend.export_state(state)
    with pytest.raises(CrossframeError, match="is not a file"):
        load_model(tmp_path / "missing.onnx")


def test_load_model_opens_a_sealed_file_with_the_key_only(backend, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An export written under ``security.encrypt`` is decrypted in memory; without the key, one line."""
    from crossframe_onnxruntime import load_model

    from crossframe.security.artifacts import write_artifact
    from crossframe.security.keys import KEY_FILE_ENV, read_aes_key, write_new_keys
    from crossframe.security.protection import Protection, protecting
    from crossframe.security.sealing import is_sealed

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["y"])], "sealed",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    key_file = write_new_keys(tmp_path / "keys")["aes"]
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    path = tmp_path / "sealed.onnx"
    with protecting(Protection(key=read_aes_key(key_file))):
        write_artifact(path, model.SerializeToString())
    assert is_sealed(path)
    x = np.ones((4, 2), dtype=np.float32)
    np.testing.assert_allclose(backend.predict(load_model(path), x), x @ w, atol=1e-6)
    monkeypatch.delenv(KEY_FILE_ENV)
    with pytest.raises(CrossframeError, match="is encrypted: needs the encryption key"):
        load_model(path)


def test_the_exporter_is_registered(tmp_path: Path) -> None:
    from crossframe.config.validation import validate_params
    from crossframe.plugins import component

    comp = component("exporter", "onnx-canonical")
    exporter = comp.obj(validate_params(comp.schema, {"opset": 20}, "export"))
    spec = build_model("mlp", {"hidden": [4], "activation": "gelu"}, DataInfo("classification", (6,), 3))
    path = exporter.export(spec, spec.init(0), tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx" and path.is_file()
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 20 and "Gelu" in {n.op_type for n in model.graph.node}
    with pytest.raises(CrossframeError, match="opset"):
        comp.obj({"opset": 999})


def test_importing_the_entry_point_module_imports_no_onnx() -> None:
    code = ("import sys, crossframe_onnxruntime as m; m.register_backends(lambda *a, **k: None); "
            "bad = [n for n in ('onnx', 'onnxruntime', 'torch') if n in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    root = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": root})
    assert result.returncode == 0, f"importing the plugin loaded {result.stdout.strip()} {result.stderr[-2000:]}"
