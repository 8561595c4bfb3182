"""The JAX backend: forward passes against the numpy reference, exact canonical round trips,
optimizer steps against ``crossframe.testing.reference``, accumulation, checkpoints shared with
torch, precision, capabilities and the compiled step's contract (no retrace, no implicit transfer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crossframe
from crossframe.backend import TrainSetup
from crossframe.checkpoint import load_checkpoint
from crossframe.data.dataset import DataInfo
from crossframe.errors import CapabilityError
from crossframe.models import build_model
from crossframe.optimizers import state_step
from crossframe.testing import reference

jax = pytest.importorskip("jax")
pytest.importorskip("optax")
from crossframe_jax.backend import JaxBackend  # noqa: E402

BACKEND = JaxBackend()


def mlp_spec(inputs: tuple[int, ...], hidden: list[int], outputs: int, activation: str = "relu",
             task: str = "classification"):
    return build_model("mlp", {"hidden": hidden, "activation": activation}, DataInfo(task, inputs, outputs))


def cnn_spec(shape: tuple[int, int, int], channels: list[int], kernel: int, outputs: int, activation: str = "relu"):
    return build_model("cnn", {"channels": channels, "kernel_size": kernel, "hidden": 12, "activation": activation},
                       DataInfo("classification", shape, outputs))


# --------------------------------------------------------------------------- forward passes


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


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_forward_is_close_to_reference(precision: str) -> None:
    spec = cnn_spec((8, 8, 1), [4], 3, 4)
    weights = spec.init(seed=3)
    x = np.random.default_rng(2).normal(size=(6, 8, 8, 1)).astype(np.float32)
    native = BACKEND.predict(BACKEND.inference_state(spec, weights, precision=precision), x)
    expected = spec.forward(weights, x)
    assert native.dtype == np.float32
    assert np.max(np.abs(native - expected)) <= 0.05 * max(1.0, float(np.max(np.abs(expected))))


# --------------------------------------------------------------------------- canonical round trips


def _setup(spec, weights, **kw) -> TrainSetup:
    return TrainSetup(spec, weights, **kw)


@given(
    hidden=st.lists(st.integers(1, 24), min_size=0, max_size=3),
    inputs=st.integers(1, 20),
    outputs=st.integers(2, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_mlp_canonical_round_trip_is_exact(hidden, inputs, outputs, seed) -> None:
    spec = mlp_spec((inputs,), hidden, outputs)
    weights = spec.init(seed)
    back, _ = BACKEND.export_state(BACKEND.create_state(_setup(spec, weights)))
    assert list(back) == list(weights)
    for name in weights:
        assert back[name].dtype == np.float32
        assert np.array_equal(back[name], weights[name]), name
        assert back[name] is not weights[name]


@given(
    height=st.integers(2, 10), width=st.integers(2, 10), in_ch=st.integers(1, 3),
    channels=st.lists(st.integers(1, 6), min_size=1, max_size=1), kernel=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cnn_canonical_round_trip_is_exact(height, width, in_ch, channels, kernel, seed) -> None:
    spec = cnn_spec((height, width, in_ch), channels, kernel, 3)
    weights = spec.init(seed)
    back, _ = BACKEND.export_state(BACKEND.create_state(_setup(spec, weights)))
    for name in weights:
        assert back[name].dtype == np.float32
        assert np.array_equal(back[name], weights[name]), name


@given(optimizer=st.sampled_from(["sgd", "adam", "adamw"]), seed=st.integers(0, 2**31 - 1),
       step=st.integers(0, 1000))
def test_optimizer_state_round_trip_is_exact(optimizer, seed, step) -> None:
    spec = mlp_spec((5,), [7], 3)
    weights = spec.init(seed)
    params = {"lr": 0.1, "momentum": 0.9} if optimizer == "sgd" else {"lr": 0.1}
    state = BACKEND.create_state(_setup(spec, weights, optimizer=optimizer, optimizer_params=params))
    rng = np.random.default_rng(seed)
    _, template = BACKEND.export_state(state)
    canonical = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in template.items() if k != "step"}
    canonical["step"] = np.asarray(float(step), np.float32)
    _, back = BACKEND.export_state(BACKEND.load_state(state, weights, canonical))
    assert back.keys() == canonical.keys()
    assert state_step(back) == step
    for key, value in canonical.items():
        if key == "step":
            continue
        expected = value if step > 0 else np.zeros_like(value)  # step 0: no update applied, slots start empty
        assert back[key].dtype == np.float32
        assert np.array_equal(back[key], expected), key


# --------------------------------------------------------------------------- optimizer steps vs the reference

OPTIMIZER_CASES = [
    ("sgd", {"lr": 0.5, "weight_decay": 0.1}, None),
    ("sgd", {"lr": 0.5, "momentum": 0.9}, None),
    ("sgd", {"lr": 0.5, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05}, 0.2),
    ("adam", {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-7, "weight_decay": 0.1}, 0.05),
    ("adamw", {"lr": 0.05, "weight_decay": 0.2}, 0.05),
    ("adamw", {"lr": 0.05, "weight_decay": 0.2}, None),
]


def _linear_problem(seed: int = 0):
    spec = mlp_spec((3, 2), [], 4)
    rng = np.random.default_rng(seed)
    weights = spec.init(seed)
    weights["layers.0.bias"] = rng.normal(0, 0.1, 4).astype(np.float32)
    batches = [(rng.normal(size=(16, 3, 2)).astype(np.float32), rng.integers(0, 4, 16).astype(np.int64))
               for _ in range(3)]
    return spec, weights, batches


@pytest.mark.parametrize(("name", "hp", "clip"), OPTIMIZER_CASES)
def test_optimizer_steps_match_the_reference(name, hp, clip) -> None:
    spec, weights, batches = _linear_problem()
    decay = {p.name: p.decay for p in spec.table}
    state = BACKEND.create_state(_setup(spec, weights, optimizer=name, optimizer_params=hp, clip_norm=clip))
    ref_params = {k: v.astype(np.float64) for k, v in weights.items()}
    ref_state: dict[str, np.ndarray] = {}
    for i, (x, y) in enumerate(batches):
        lr = hp["lr"] * (1.0 - 0.25 * i)  # the rate changes every step
        loss, grads = reference.linear_softmax_grads(ref_params, x, y)
        grads, norm = reference.clip_by_global_norm(grads, clip)
        if i == 2:  # the last step starts from the reference's canonical state, loaded into jax
            state = BACKEND.load_state(state, {k: v.astype(np.float32) for k, v in ref_params.items()},
                                       {k: np.asarray(v, np.float32) for k, v in ref_state.items()})
        ref_params, ref_state = reference.optimizer_step(name, hp, ref_params, grads, ref_state, lr, decay)
        state, out = BACKEND.train_step(state, {"x": x, "y": y}, lr)
        host = BACKEND.fetch(out)
        assert abs(float(host["loss"]) - loss) < 1e-6
        if clip is None:
            assert "grad_norm" not in host
        else:
            assert norm > clip  # the case really clips
            assert abs(float(host["grad_norm"]) - norm) < 1e-6 * max(1.0, norm)
        got_params, got_state = BACKEND.export_state(state)
        for key, value in ref_params.items():
            np.testing.assert_allclose(got_params[key], value, atol=1e-6, rtol=0, err_msg=f"step {i}: {key}")
        assert got_state.keys() == {*ref_state.keys()}
        assert state_step(got_state) == i + 1
        for key, value in ref_state.items():
            np.testing.assert_allclose(got_state[key], value, atol=1e-6, rtol=1e-6, err_msg=f"step {i}: {key}")


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_bias_correction_keeps_float32_precision(name: str) -> None:
    """optax's float32 ``1 - 0.999 ** t`` is 1.3e-5 off at t=1; with lr 1 that error would show."""
    spec, weights, batches = _linear_problem(1)
    hp = {"lr": 1.0, "betas": (0.9, 0.999), "weight_decay": 0.0}
    state = BACKEND.create_state(_setup(spec, weights, optimizer=name, optimizer_params=hp))
    ref_params, ref_state = {k: v.astype(np.float64) for k, v in weights.items()}, {}
    for x, y in batches:
        _, grads = reference.linear_softmax_grads(ref_params, x, y)
        ref_params, ref_state = reference.optimizer_step(name, hp, ref_params, grads, ref_state, 1.0,
                                                         {p.name: p.decay for p in spec.table})
        state, _ = BACKEND.train_step(state, {"x": x, "y": y}, 1.0)
    got, _ = BACKEND.export_state(state)
    for key, value in ref_params.items():
        np.testing.assert_allclose(got[key], value, atol=1e-6, rtol=0, err_msg=key)


def test_regression_loss_is_per_example_mean_then_batch_mean() -> None:
    spec = mlp_spec((4,), [], 3, task="regression")
    weights = spec.init(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 4)).astype(np.float32), rng.normal(size=(10, 3)).astype(np.float32)
    state = BACKEND.create_state(_setup(spec, weights, optimizer="sgd", optimizer_params={"lr": 0.1}))
    _, out = BACKEND.train_step(state, {"x": x, "y": y}, 0.1)
    expected = np.mean(np.mean((spec.forward(weights, x).astype(np.float64) - y) ** 2, axis=1))
    assert abs(float(BACKEND.fetch(out)["loss"]) - expected) < 1e-6


# --------------------------------------------------------------------------- eval sums, same as torch


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_eval_step_agrees_with_torch(task: str) -> None:
    torch_backend = pytest.importorskip("crossframe_torch.backend").TorchBackend()
    spec = mlp_spec((6,), [8], 3, task=task)
    weights = spec.init(4)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(13, 6)).astype(np.float32)
    y = rng.integers(0, 3, 13).astype(np.int64) if task == "classification" else \
        rng.normal(size=(13, 3)).astype(np.float32)
    ours = BACKEND.fetch(BACKEND.eval_step(BACKEND.create_state(_setup(spec, weights)), {"x": x, "y": y}))
    theirs = torch_backend.fetch(torch_backend.eval_step(torch_backend.create_state(_setup(spec, weights)),
                                                         {"x": x, "y": y}))
    assert ours.keys() == theirs.keys()
    assert ours["count"] == theirs["count"] == 13
    for key in ours:
        np.testing.assert_allclose(np.asarray(ours[key], np.float64), np.asarray(theirs[key], np.float64),
                                   rtol=1e-5, atol=1e-5, err_msg=key)
    if task == "classification":
        assert ours["confusion"].shape == (3, 3) and ours["confusion"].sum() == 13


@pytest.mark.parametrize(("optimizer", "hp"), [("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
                                               ("adam", {"lr": 0.01})])
def test_cnn_training_steps_agree_with_torch(optimizer: str, hp: dict) -> None:
    torch_backend = pytest.importorskip("crossframe_torch.backend").TorchBackend()
    spec = cnn_spec((6, 6, 2), [3], 3, 4, "tanh")
    weights = spec.init(5)
    rng = np.random.default_rng(5)
    batches = [{"x": rng.normal(size=(8, 6, 6, 2)).astype(np.float32), "y": rng.integers(0, 4, 8).astype(np.int64)}
               for _ in range(3)]
    setup = _setup(spec, weights, optimizer=optimizer, optimizer_params=hp, grad_accum=2, clip_norm=0.5)
    ours, theirs = BACKEND.create_state(setup), torch_backend.create_state(setup)
    for batch in batches:
        ours, a = BACKEND.train_step(ours, batch, hp["lr"])
        theirs, b = torch_backend.train_step(theirs, batch, hp["lr"])
        a, b = BACKEND.fetch(a), torch_backend.fetch(b)
        assert abs(float(a["loss"]) - float(b["loss"])) < 1e-5
        assert abs(float(a["grad_norm"]) - float(b["grad_norm"])) < 1e-5
    (wa, sa), (wb, sb) = BACKEND.export_state(ours), torch_backend.export_state(theirs)
    assert sa.keys() == sb.keys()
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], atol=1e-5, rtol=0, err_msg=key)
    for key in sa:
        np.testing.assert_allclose(sa[key], sb[key], atol=1e-5, rtol=0, err_msg=key)


# --------------------------------------------------------------------------- the compiled step's contract


def test_step_compiles_once_and_returns_device_values() -> None:
    spec = mlp_spec((6,), [8], 3)
    state = BACKEND.create_state(_setup(spec, spec.init(0), optimizer="adamw", optimizer_params={"lr": 0.01},
                                        grad_accum=2, clip_norm=1.0))
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 6)).astype(np.float32), "y": rng.integers(0, 3, 8).astype(np.int64)}
    outs = []
    for i in range(4):
        old = state
        state, out = BACKEND.train_step(state, batch, 0.01 / (i + 1))  # a new rate every step
        assert state is not old and old.params["layers.0.weight"].is_deleted()  # donated, updated in place
        outs.append(out)
    assert state.program.traces["train"] == 1  # the rate is a traced float32 argument: no retrace
    assert all(isinstance(v, jax.Array) for out in outs for v in out.values())  # still on the device
    state = BACKEND.load_state(state, *BACKEND.export_state(state))  # loaded arrays: same types, placement
    state, _ = BACKEND.train_step(state, batch, 0.001)
    assert state.program.traces["train"] == 1
    assert all(np.isfinite(h["loss"]) and h["grad_norm"] > 0 for h in BACKEND.fetch(outs))


def test_params_stay_float32_on_the_chosen_device() -> None:
    spec = mlp_spec((6,), [8], 3)
    state = BACKEND.create_state(_setup(spec, spec.init(0), precision="bf16", device="cpu"))
    assert all(v.dtype == np.float32 for v in state.params.values())
    assert all(v.devices() == {jax.devices("cpu")[0]} for v in state.params.values())


# --------------------------------------------------------------------------- through crossframe.run


def weights_of(run_dir: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(run_dir).weights


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "adamw", "lr": 0.01}])
def test_grad_accumulation_equals_one_big_batch(workdir: Path, tiny, optimizer) -> None:
    big = crossframe.run({**tiny(steps=10, batch_size=32, optimizer=optimizer), "backend": "jax", "name": "big"},
                         quiet=True)
    acc = crossframe.run({**tiny(steps=10, batch_size=8, grad_accum=4, optimizer=optimizer), "backend": "jax",
                          "name": "acc"}, quiet=True)
    a, b = weights_of(big.run_dir), weights_of(acc.run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, rtol=0)


def test_quickstart_digits_reaches_95_percent(workdir: Path) -> None:
    result = crossframe.run("digits-mlp", ["train.steps=300"], backend="jax", quiet=True)
    assert result.status == "completed"
    assert result.metrics["val/accuracy"] >= 0.95


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.parametrize("optimizer", [{"name": "adamw", "lr": 0.01},
                                       {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}])
@pytest.mark.parametrize(("writer", "reader"), [("torch", "jax"), ("jax", "torch")])
def test_checkpoints_move_between_torch_and_jax(workdir: Path, tiny, optimizer, writer, reader) -> None:
    pytest.importorskip("torch")
    cfg = {**tiny(steps=10, log_every=1, checkpoint_every=5, keep_checkpoints=3, clip_norm=1.0,
                  optimizer=optimizer), "backend": writer, "name": "written"}
    written = crossframe.run(cfg, quiet=True)
    copy = workdir / "runs" / "continued"
    shutil.copytree(written.run_dir, copy)
    (copy / "metrics.jsonl").unlink()
    continued = crossframe.run(resume=copy / "checkpoints" / "step_5", backend=reader, quiet=True)
    assert continued.steps == 10
    mine, theirs = _losses(continued.run_dir), _losses(written.run_dir)
    assert sorted(mine) == [6, 7, 8, 9, 10]
    for step in mine:
        assert abs(mine[step] - theirs[step]) < 1e-5, (step, mine[step], theirs[step])
    end_w, end_c = load_checkpoint(written.run_dir), load_checkpoint(continued.run_dir)
    assert state_step(end_w.optimizer_state) == state_step(end_c.optimizer_state) == 10
    assert end_w.optimizer_state.keys() == end_c.optimizer_state.keys()
    for name in end_w.weights:
        np.testing.assert_allclose(end_c.weights[name], end_w.weights[name], atol=1e-5, rtol=0)


def test_bf16_cnn_trains_with_float32_master_weights(workdir: Path) -> None:
    cfg = {"backend": "jax", "model": {"name": "cnn", "channels": [4], "hidden": 16}, "precision": "bf16",
           "device": "cpu", "train": {"steps": 40, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.01}}}
    result = crossframe.run(cfg, quiet=True)
    assert result.metrics["val/accuracy"] > 0.5
    assert all(w.dtype == np.float32 for w in weights_of(result.run_dir).values())


def test_regression_trains(workdir: Path, tiny) -> None:
    cfg = {**tiny(steps=150, optimizer={"name": "adam", "lr": 0.05}), "backend": "jax"}
    cfg["data"] = {"name": "synthetic", "task": "regression", "features": 4, "targets": 2, "noise": 0.01}
    cfg["model"] = {"name": "mlp", "hidden": []}
    result = crossframe.run(cfg, quiet=True)
    assert {k for k in result.metrics if k.startswith("val/")} == {"val/loss", "val/mae", "val/rmse"}
    assert result.metrics["val/rmse"] < 0.3


def test_compile_flag_is_accepted(workdir: Path, tiny) -> None:
    result = crossframe.run({**tiny(steps=3, compile=True), "backend": "jax"}, quiet=True)
    assert result.status == "completed"


# --------------------------------------------------------------------------- capabilities


def test_entry_point_module_is_light_and_the_factory_loads_jax() -> None:
    from tests.test_imports import loaded_frameworks

    assert loaded_frameworks("import crossframe_jax") == []
    loaded = loaded_frameworks("from crossframe.plugins import component\ncomponent('backend', 'jax').obj()")
    assert "jax" in loaded and "torch" not in loaded and "tensorflow" not in loaded


def test_capabilities_on_this_machine() -> None:
    caps = BACKEND.capabilities()
    assert caps.devices[0] == "cpu"
    assert caps.models == ("mlp", "cnn", "gpt", "graph", "hf")
    assert caps.optimizers == ("sgd", "adam", "adamw", "rmsprop", "adagrad", "lion")
    assert caps.precisions == ("fp32", "bf16") and caps.strategies == ("single", "data_parallel", "fully_sharded")
    assert BACKEND.framework_version() == jax.__version__


def test_missing_tpu_is_a_one_line_capability_error(workdir: Path, tiny) -> None:
    if "tpu" in BACKEND.capabilities().devices:
        pytest.skip("this machine has a TPU")
    with pytest.raises(CapabilityError, match=r"device: 'tpu' requested, but backend 'jax' found only") as info:
        crossframe.run({**tiny(), "backend": "jax", "device": "tpu"}, quiet=True)
    assert "jax[tpu]" in str(info.value) and "\n" not in str(info.value)


def test_fp16_training_is_refused_with_advice(workdir: Path, tiny) -> None:
    with pytest.raises(CapabilityError, match=r"precision: 'fp16' requested.*use bf16"):
        crossframe.run({**tiny(), "backend": "jax", "precision": "fp16"}, quiet=True)
    spec = mlp_spec((4,), [], 2)
    with pytest.raises(CapabilityError, match="use bf16"):
        BACKEND.create_state(_setup(spec, spec.init(0), precision="fp16"))
