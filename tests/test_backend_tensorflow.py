"""The TensorFlow backend: forward passes, canonical round trips, optimizer numerics, the loop,
checkpoints shared with torch, precision, tracing, and independence from Keras' backend setting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as the plugin does before tensorflow loads
tf = pytest.importorskip("tensorflow")

import crossframe  # noqa: E402
from crossframe.backend import TrainSetup  # noqa: E402
from crossframe.checkpoint import load_checkpoint  # noqa: E402
from crossframe.data.dataset import DataInfo  # noqa: E402
from crossframe.errors import CapabilityError  # noqa: E402
from crossframe.models import build_model  # noqa: E402
from crossframe.optimizers import AdamParams, AdamWParams, SGDParams  # noqa: E402
from crossframe.testing import reference  # noqa: E402
from crossframe_tensorflow.backend import TensorFlowBackend  # noqa: E402

BACKEND = TensorFlowBackend()
PARAMS = {"sgd": SGDParams, "adam": AdamParams, "adamw": AdamWParams}


def mlp_spec(inputs: tuple[int, ...], hidden: list[int], outputs: int, activation: str = "relu",
             task: str = "classification"):
    return build_model("mlp", {"hidden": hidden, "activation": activation}, DataInfo(task, inputs, outputs))


def cnn_spec(shape: tuple[int, int, int], channels: list[int], kernel: int, outputs: int, activation: str = "relu"):
    return build_model("cnn", {"channels": channels, "kernel_size": kernel, "hidden": 12, "activation": activation},
                       DataInfo("classification", shape, outputs))


def weights_of(run_dir: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(run_dir).weights


def train_losses(run_dir: Path, after: int = 0) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r and r["step"] > after}


# --------------------------------------------------------------------------- forward and layouts


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_mlp_forward_matches_reference(activation: str) -> None:
    spec = mlp_spec((8, 8, 1), [32, 16], 10, activation)
    weights = spec.init(seed=1)
    x = np.random.default_rng(0).normal(size=(7, 8, 8, 1)).astype(np.float32)
    native = BACKEND.predict(BACKEND.inference_state(spec, weights), x)
    assert native.dtype == np.float32
    np.testing.assert_allclose(native, spec.forward(weights, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("shape", "channels", "kernel", "activation"),
                         [((8, 8, 1), [4, 6], 3, "relu"), ((9, 7, 3), [5], 5, "gelu")])
def test_cnn_forward_matches_reference(shape, channels, kernel, activation) -> None:
    spec = cnn_spec(shape, channels, kernel, 4, activation)
    weights = spec.init(seed=2)
    x = np.random.default_rng(1).normal(size=(5, *shape)).astype(np.float32)
    native = BACKEND.predict(BACKEND.inference_state(spec, weights), x)
    np.testing.assert_allclose(native, spec.forward(weights, x), atol=1e-5, rtol=1e-5)


@settings(max_examples=8)
@given(
    hidden=st.lists(st.integers(1, 24), min_size=0, max_size=3),
    inputs=st.integers(1, 20),
    outputs=st.integers(2, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_mlp_canonical_round_trip_is_exact(hidden, inputs, outputs, seed) -> None:
    spec = mlp_spec((inputs,), hidden, outputs)
    weights = spec.init(seed)
    back, opt = BACKEND.export_state(BACKEND.create_state(TrainSetup(spec, weights)))
    assert back.keys() == weights.keys()
    for name in weights:
        assert back[name].dtype == np.float32
        assert np.array_equal(back[name], weights[name]), name
    assert opt["step"].dtype == np.float32 and float(opt["step"]) == 0.0


@settings(max_examples=6)
@given(
    height=st.integers(2, 10), width=st.integers(2, 10), in_ch=st.integers(1, 3),
    channels=st.lists(st.integers(1, 6), min_size=1, max_size=1), kernel=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cnn_canonical_round_trip_is_exact(height, width, in_ch, channels, kernel, seed) -> None:
    spec = cnn_spec((height, width, in_ch), channels, kernel, 3)
    weights = spec.init(seed)
    state = BACKEND.create_state(TrainSetup(spec, weights, "adam", {"lr": 1e-3}))
    back, _ = BACKEND.export_state(state)
    for name in weights:
        assert np.array_equal(back[name], weights[name]), name
    back[next(iter(back))][...] = 7.0  # an exported array is a copy, not a view of the variable
    again, _ = BACKEND.export_state(state)
    assert all(np.array_equal(again[k], weights[k]) for k in weights)


# --------------------------------------------------------------------------- one optimizer step, exactly

OPTIMIZERS = [
    ("sgd", {"lr": 0.1, "weight_decay": 0.05}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05}),
    ("adam", {"lr": 0.01, "weight_decay": 0.05}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.05}),
]


@pytest.mark.parametrize("clip_norm", [None, 0.05])
@pytest.mark.parametrize(("name", "raw"), OPTIMIZERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZERS)])
def test_one_step_matches_the_numpy_reference(name: str, raw: dict, clip_norm: float | None) -> None:
    spec = mlp_spec((3, 2), [], 4)  # linear: the reference knows its exact gradient
    hp = PARAMS[name](**raw).model_dump()
    rng = np.random.default_rng(11)
    x = rng.normal(size=(16, 3, 2)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    weights = spec.init(5)
    state = BACKEND.create_state(TrainSetup(spec, weights, name, hp, clip_norm=clip_norm))
    decay = {p.name: p.decay for p in spec.table}

    def check(weights, opt_state, lr):
        loss, grads = reference.linear_softmax_grads(weights, x, y)
        clipped, norm = reference.clip_by_global_norm(grads, clip_norm)
        if clip_norm is not None:
            assert norm > clip_norm  # the clip is active
        want_w, want_opt = reference.optimizer_step(name, hp, weights, clipped, opt_state, lr, decay)
        _, out = BACKEND.train_step(state, {"x": x, "y": y}, lr)
        out = BACKEND.fetch(out)
        assert out["loss"] == pytest.approx(loss, rel=1e-6)
        assert ("grad_norm" in out) == (clip_norm is not None)
        if clip_norm is not None:
            assert out["grad_norm"] == pytest.approx(norm, rel=1e-6)
        got_w, got_opt = BACKEND.export_state(state)
        for key in want_w:
            np.testing.assert_allclose(got_w[key], want_w[key], atol=1e-6, rtol=1e-6, err_msg=key)
        assert got_opt.keys() == want_opt.keys()
        for key in want_opt:
            np.testing.assert_allclose(got_opt[key], want_opt[key], atol=1e-6, rtol=1e-6, err_msg=key)

    check(weights, {}, 0.1 if name == "sgd" else 0.01)
    # then from a loaded, non-trivial state at step 3 (bias corrections, momentum buffers), at a new rate
    loaded_w = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in weights.items()}
    loaded_opt = {"step": np.asarray(3.0, np.float32)}
    for key, value in BACKEND.export_state(state)[1].items():
        if key != "step":
            noise = rng.normal(0, 0.05, value.shape)
            loaded_opt[key] = (np.abs(noise) if key.startswith("exp_avg_sq/") else noise).astype(np.float32)
    BACKEND.load_state(state, loaded_w, loaded_opt)
    check(loaded_w, loaded_opt, 0.03 if name == "sgd" else 0.004)


def test_optimizer_state_at_step_zero_starts_afresh() -> None:
    spec = mlp_spec((4,), [], 3)
    state = BACKEND.create_state(TrainSetup(spec, spec.init(0), "sgd", SGDParams(lr=0.1, momentum=0.9).model_dump()))
    stale = {"step": np.asarray(0.0, np.float32),
             **{f"momentum/{p.name}": np.ones(p.shape, np.float32) for p in spec.table}}
    BACKEND.load_state(state, spec.init(0), stale)
    _, opt = BACKEND.export_state(state)
    assert all(not np.any(v) for k, v in opt.items())  # torch too drops buffers of a step-0 state
    with pytest.raises(CapabilityError, match=r"optimizer state has no 'momentum/layers\.0\.weight'"):
        BACKEND.load_state(state, spec.init(0), {"step": np.asarray(2.0, np.float32)})


# --------------------------------------------------------------------------- the steps


def test_steps_are_traced_once_whatever_the_rate_and_batch_size() -> None:
    spec = mlp_spec((5,), [8], 3)
    state = BACKEND.create_state(TrainSetup(spec, spec.init(0), "adamw", {"lr": 0.01}, grad_accum=2, clip_norm=1.0))
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(12, 5)).astype(np.float32), "y": rng.integers(0, 3, 12)}
    outs = [BACKEND.train_step(state, batch, 0.01 / (i + 1))[1] for i in range(6)]
    assert all(isinstance(o["loss"], tf.Tensor) for o in outs)  # device values until fetched
    for n in (12, 5):  # a smaller last eval batch
        BACKEND.eval_step(state, {"x": batch["x"][:n], "y": batch["y"][:n]})
        BACKEND.predict(state, batch["x"][:n])
    # the tf.function itself takes any rate without retracing: its signature makes lr a float32 tensor
    state.train_fn.function(tf.constant(batch["x"]), tf.constant(batch["y"]), 0.5)
    assert state.train_fn.tracing_count() == 1
    assert state.eval_fn.tracing_count() == 1
    assert state.predict_fn.tracing_count() == 1
    assert int(BACKEND.export_state(state)[1]["step"]) == 7


def test_eval_sums_match_numpy() -> None:
    spec = mlp_spec((6,), [7], 4)
    weights = spec.init(1)
    state = BACKEND.inference_state(spec, weights)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 6)).astype(np.float32), rng.integers(0, 4, 50)
    sums = BACKEND.fetch(BACKEND.eval_step(state, {"x": x, "y": y}))
    logits = spec.forward(weights, x)
    expected = np.zeros((4, 4), np.int64)
    np.add.at(expected, (y, logits.argmax(1)), 1)
    np.testing.assert_array_equal(sums["confusion"], expected)
    assert int(sums["count"]) == 50
    z = logits - logits.max(1, keepdims=True)
    ce = -(z[np.arange(50), y] - np.log(np.exp(z).sum(1)))
    assert float(sums["loss_sum"]) == pytest.approx(ce.sum(), rel=1e-5)

    reg = mlp_spec((6,), [], 2, task="regression")
    rw = reg.init(2)
    targets = rng.normal(size=(50, 2)).astype(np.float32)
    sums = BACKEND.fetch(BACKEND.eval_step(BACKEND.inference_state(reg, rw), {"x": x, "y": targets}))
    err = reg.forward(rw, x) - targets
    assert sums["outputs"] == 2 and int(sums["count"]) == 50
    assert float(sums["sq_err_sum"]) == pytest.approx(np.sum(err**2), rel=1e-5)
    assert float(sums["abs_err_sum"]) == pytest.approx(np.sum(np.abs(err)), rel=1e-5)
    assert float(sums["loss_sum"]) == pytest.approx(np.sum(np.mean(err**2, axis=1)), rel=1e-5)


# --------------------------------------------------------------------------- through the loop


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "adamw", "lr": 0.01}])
def test_grad_accumulation_equals_one_big_batch(workdir: Path, tiny, optimizer) -> None:
    big = crossframe.run({**tiny(steps=10, batch_size=32, optimizer=optimizer), "backend": "tensorflow",
                          "name": "big"}, quiet=True)
    acc = crossframe.run({**tiny(steps=10, batch_size=8, grad_accum=4, optimizer=optimizer), "backend": "tensorflow",
                          "name": "acc"}, quiet=True)
    a, b = weights_of(big.run_dir), weights_of(acc.run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, rtol=0)


def test_digits_mlp_reaches_95_percent(workdir: Path) -> None:
    result = crossframe.run("digits-mlp", ["train.steps=300"], backend="tensorflow", quiet=True)
    assert result.metrics["val/accuracy"] >= 0.95
    assert load_checkpoint(result.run_dir).state["backend"] == "tensorflow"


def test_xla_compile_gives_the_same_training(workdir: Path, tiny) -> None:
    graph = crossframe.run({**tiny(steps=5, clip_norm=0.5), "backend": "tensorflow", "name": "graph"}, quiet=True)
    xla = crossframe.run({**tiny(steps=5, clip_norm=0.5, compile=True), "backend": "tensorflow", "name": "xla"},
                         quiet=True)
    a, b = weights_of(graph.run_dir), weights_of(xla.run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("first", "then"), [("torch", "tensorflow"), ("tensorflow", "torch")])
@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                        "weight_decay": 1e-3},
                                       {"name": "adamw", "lr": 0.01}])
def test_checkpoints_cross_between_torch_and_tensorflow(workdir: Path, tiny, first: str, then: str,
                                                         optimizer: dict) -> None:
    """A run resumed on the other backend continues exactly as it would have on the first one."""
    pytest.importorskip("torch")
    start = crossframe.run({**tiny(steps=10, log_every=1, optimizer=optimizer), "backend": first, "name": "a"},
                           quiet=True)
    shutil.copytree(start.run_dir, workdir / "runs" / "b")
    same = crossframe.run(resume=start.run_dir, overrides=["train.steps=20"], quiet=True)
    other = crossframe.run(resume=workdir / "runs" / "b", overrides=["train.steps=20"], backend=then, quiet=True)
    assert load_checkpoint(other.run_dir).state["backend"] == then
    want, got = train_losses(same.run_dir, after=10), train_losses(other.run_dir, after=10)
    assert sorted(want) == sorted(got) == list(range(11, 21))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-5), step
    a, b = weights_of(same.run_dir), weights_of(other.run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, rtol=0)
    opt_a, opt_b = load_checkpoint(same.run_dir).optimizer_state, load_checkpoint(other.run_dir).optimizer_state
    assert opt_a.keys() == opt_b.keys()
    for key in opt_a:
        np.testing.assert_allclose(opt_a[key], opt_b[key], atol=1e-5, rtol=0, err_msg=key)


PROBE = """
import json, sys
from crossframe.cli.main import main
rc = main(sys.argv[1:])
import keras
print(json.dumps({"rc": rc, "keras_backend": keras.config.backend()}))
"""


def test_keras_backend_setting_does_not_touch_the_tensorflow_backend(workdir: Path) -> None:
    """``KERAS_BACKEND=jax`` puts Keras on JAX in that process (importing tensorflow imports Keras
    whatever we do), yet the run trains on TensorFlow: the same weights as a run without it."""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    args = ["run", "digits-mlp", "--backend", "tensorflow", "--set", "train.steps=20", "--set", "name=keras-jax", "-q"]
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=workdir,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe == {"rc": 0, "keras_backend": "jax"}
    subprocess_run = workdir / "runs" / "keras-jax"
    assert load_checkpoint(subprocess_run).state["backend"] == "tensorflow"

    here = crossframe.run("digits-mlp", ["train.steps=20", "name=here"], backend="tensorflow", quiet=True)
    a, b = weights_of(subprocess_run), weights_of(here.run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- precision and devices


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_float32_master_weights(workdir: Path, tiny, precision: str) -> None:
    result = crossframe.run({**tiny(steps=60), "backend": "tensorflow", "precision": precision}, quiet=True)
    assert result.metrics["val/accuracy"] > 0.6
    weights = weights_of(result.run_dir)
    assert all(w.dtype == np.float32 for w in weights.values())


def test_bf16_forward_is_close_to_the_reference_but_not_fp32() -> None:
    spec = cnn_spec((8, 8, 1), [4], 3, 5)
    weights = spec.init(4)
    x = np.random.default_rng(2).normal(size=(6, 8, 8, 1)).astype(np.float32)
    out = BACKEND.predict(BACKEND.inference_state(spec, weights, precision="bf16"), x)
    want = spec.forward(weights, x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=0.1, rtol=0.05)
    assert np.max(np.abs(out - want)) > 1e-5  # it really computed in bfloat16


def test_fp16_skips_steps_with_overflowing_gradients() -> None:
    spec = mlp_spec((4,), [], 3)
    weights = spec.init(0)
    state = BACKEND.create_state(TrainSetup(spec, weights, "sgd", {"lr": 0.1}, precision="fp16"))
    assert state.loss_scale is not None
    huge = {"x": np.full((8, 4), 3e4, np.float32), "y": np.zeros(8, np.int64)}  # float16 overflows
    BACKEND.train_step(state, huge, 0.1)
    back, opt = BACKEND.export_state(state)
    assert all(np.array_equal(back[k], weights[k]) for k in weights) and float(opt["step"]) == 0
    assert float(state.loss_scale.scale.numpy()) == 2.0**15
    BACKEND.train_step(state, {"x": np.ones((8, 4), np.float32), "y": np.zeros(8, np.int64)}, 0.1)
    assert float(BACKEND.export_state(state)[1]["step"]) == 1


def test_capabilities_and_a_missing_tpu(workdir: Path, tiny) -> None:
    caps = BACKEND.capabilities()
    assert caps.models == ("mlp", "cnn", "gpt", "graph", "hf")
    assert caps.optimizers == ("sgd", "adam", "adamw", "rmsprop", "adagrad", "lion")
    assert caps.devices[0] == "cpu" and caps.compile and caps.strategies == ("single", "data_parallel")
    if "tpu" in caps.devices:
        pytest.skip("this machine has a TPU")
    with pytest.raises(CapabilityError, match=r"^device: 'tpu' requested, but backend 'tensorflow' found only 'cpu'"):
        crossframe.run({**tiny(), "backend": "tensorflow", "device": "tpu"}, quiet=True)
    spec = mlp_spec((4,), [], 3)
    with pytest.raises(CapabilityError, match="device: 'tpu' requested, but TensorFlow sees no TPU"):
        BACKEND.create_state(TrainSetup(spec, spec.init(0), device="tpu"))
