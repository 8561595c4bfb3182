"""Class weights, focal loss and label smoothing on every backend; the oversampling sampler."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crossframe
from crossframe import hookimpl
from crossframe.backend import TrainSetup
from crossframe.data.dataset import DataInfo, Dataset
from crossframe.data.samplers import OversampleLoader
from crossframe.errors import ConfigError
from crossframe.explain.load import load_run
from crossframe.losses import LossSetup, balanced_weights, loss_setup, reference_loss
from crossframe.models import build_model
from crossframe.plugins import get_plugin_manager
from crossframe.testing.reference import linear_objective_grads
from crossframe.train.runner import make_backend

BACKENDS = ["torch", "jax", "tensorflow"]
SETUPS = {
    "weights": LossSetup(class_weights=(0.5, 2.0, 1.0, 3.0)),
    "focal": LossSetup(gamma=2.0),
    "smoothing": LossSetup(label_smoothing=0.2),
}


def _backend(name: str):
    pytest.importorskip({"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}[name])
    return make_backend(name)


def _reference(w, b, x, y, setup):
    weights = {"layers.0.weight": w, "layers.0.bias": b}
    loss, grads = linear_objective_grads(weights, x, y, setup)
    return loss, grads["layers.0.weight"], grads["layers.0.bias"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(SETUPS))
def test_training_losses_equal_the_numpy_reference(backend: str, case: str) -> None:
    """The step's loss and its SGD update equal the float64 reference (loss, and gradient by differences).

    (The conformance kit runs the combined case for any backend; these add each term alone.)
    """
    impl = _backend(backend)
    objective = SETUPS[case]
    spec = build_model("mlp", {"hidden": []}, DataInfo("classification", (6,), 4))
    weights = {k: v * 3 for k, v in spec.init(4).items()}
    rng = np.random.default_rng(8)
    batch = {"x": rng.normal(0, 1, (12, 6)).astype(np.float32), "y": rng.integers(0, 4, 12).astype(np.int64)}
    lr = 0.5
    state = impl.create_state(TrainSetup(spec, weights, "sgd", {"lr": lr}, "cpu", objective=objective))
    state, out = impl.train_step(state, batch, lr)
    w64, b64 = (weights[k].astype(np.float64) for k in ("layers.0.weight", "layers.0.bias"))
    loss, gw, gb = _reference(w64, b64, batch["x"], batch["y"], objective)
    # float32 forward and backward of a 6x4 linear model: errors ~1e-6 relative; differences ~1e-9
    assert abs(float(impl.fetch(out)["loss"]) - loss) <= 1e-5 * max(1.0, loss)
    after = impl.export_state(state)[0]
    np.testing.assert_allclose(after["layers.0.weight"], w64 - lr * gw, atol=1e-5, rtol=0)
    np.testing.assert_allclose(after["layers.0.bias"], b64 - lr * gb, atol=1e-5, rtol=0)


@given(st.integers(2, 6), st.integers(1, 20), st.integers(0, 2**16))
def test_reference_reduces_to_cross_entropy_and_balanced_weights_average_one(classes: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    z, y = rng.normal(0, 3, (n, classes)), rng.integers(0, classes, n)
    zs = z - z.max(axis=1, keepdims=True)
    ce = np.log(np.exp(zs).sum(axis=1)) - zs[np.arange(n), y]
    np.testing.assert_allclose(reference_loss(z, y, LossSetup()), ce, rtol=1e-12, atol=1e-12)
    weights = np.asarray(balanced_weights(y, classes))
    # N / (K * count): each present class carries N / K of the total weight, an absent class none
    assert weights[y].mean() == pytest.approx(len(np.unique(y)) / classes)


def test_loss_setup_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"train.class_weights: 2 weights given, the dataset has 3 classes"):
        loss_setup([1.0, 2.0], None, 0.0, np.array([0, 1, 2]), 3, "classification")
    with pytest.raises(ConfigError, match="need classification data"):
        loss_setup("balanced", None, 0.0, None, 1, "regression")
    assert loss_setup(None, None, 0.0, None, 3, "classification") is None


def _imbalanced(path: Path) -> Path:
    """A 95/5 two-class set whose classes overlap: an unweighted model mostly predicts the majority."""
    rng = np.random.default_rng(0)
    n = 2000
    y = (rng.random(n) < 0.05).astype(np.int64)
    x = rng.normal(0.0, 1.0, (n, 4)) + y[:, None] * 1.2
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def _minority_recall(run_dir: Path) -> float:
    loaded = load_run(run_dir)
    pred = np.argmax(loaded.backend.predict(loaded.state, loaded.dataset.x), axis=1)
    minority = loaded.dataset.y == 1
    return float(np.mean(pred[minority] == 1))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_class_weights_raise_minority_recall(workdir: Path, backend: str) -> None:
    pytest.importorskip({"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}[backend])
    data = _imbalanced(workdir / "imbalanced.npz")
    base = {"backend": backend, "device": "cpu", "seed": 1, "data": {"name": "npz", "path": str(data)},
            "model": {"name": "mlp", "hidden": []}}
    train = {"steps": 150, "batch_size": 64, "log_every": 50, "optimizer": {"name": "adam", "lr": 0.05}}
    plain = crossframe.run({**base, "name": "plain", "train": train}, quiet=True)
    weighted = crossframe.run({**base, "name": "weighted", "train": {**train, "class_weights": "balanced"}},
                              quiet=True)
    before, after = _minority_recall(plain.run_dir), _minority_recall(weighted.run_dir)
    assert after > before + 0.3, f"minority recall {before:.2f} without weights, {after:.2f} with balanced weights"


def test_oversampling_balances_each_epoch_and_resumes() -> None:
    y = np.array([0] * 45 + [1] * 5)
    data = Dataset(np.arange(50, dtype=np.float32)[:, None], y, "classification")
    loader = OversampleLoader(data, 10, seed=7)
    assert loader.steps_per_epoch == 9  # 2 classes x 45 examples, in batches of 10
    epoch = np.concatenate([loader.indices(s) for s in range(loader.steps_per_epoch)])
    assert np.bincount(y[epoch]).tolist() == [45, 45]
    assert set(epoch[y[epoch] == 1]) == set(range(45, 50))  # every minority example, 9 times each
    assert np.bincount(epoch[y[epoch] == 1]).max() == 9
    fresh = OversampleLoader(data, 10, seed=7)  # a resumed process starts from nothing
    for step in (13, 3, 27):
        np.testing.assert_array_equal(fresh.batch(step)["x"], loader.batch(step)["x"])
    other = OversampleLoader(data, 10, seed=8)
    assert not np.array_equal(other.indices(0), loader.indices(0))


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.batches = stop_at, []

    @hookimpl
    def on_step_end(self, run, step, batch, logs):
        self.batches.append(hashlib.sha1(batch["x"].tobytes() + batch["y"].tobytes()).hexdigest())
        if step == self.stop_at:
            run.should_stop = True


def test_oversampled_run_resumes_with_the_same_batches(workdir: Path, tiny) -> None:
    pytest.importorskip("torch")
    cfg = tiny(steps=12, sampler="oversample", checkpoint_every=5)
    manager = get_plugin_manager()
    straight, first, second = Recorder(), Recorder(stop_at=5), Recorder()
    for recorder, run in ((straight, {**cfg, "name": "full"}), (first, {**cfg, "name": "halves"})):
        manager.register(recorder, "recorder")
        try:
            result = crossframe.run(run, quiet=True)
        finally:
            manager.unregister("recorder")
    manager.register(second, "recorder")
    try:
        crossframe.run(resume=result.run_dir, quiet=True)
    finally:
        manager.unregister("recorder")
    assert first.batches + second.batches == straight.batches and len(straight.batches) == 12


def test_a_backend_without_weighted_losses_refuses_them_in_one_line() -> None:
    """A backend that does not claim ``weighted_losses`` (a third party's, say) is stopped before the run."""
    from crossframe.backend import Capabilities
    from crossframe.config.schema import RunConfig
    from crossframe.errors import CapabilityError
    from crossframe.train.runner import check_capabilities

    caps = Capabilities(devices=("cpu",), precisions=("fp32",), strategies=("single",), models=("mlp",),
                        optimizers=("adamw",))
    plain = RunConfig.model_validate({"backend": "torch", "model": {"name": "mlp"}})
    check_capabilities(plain, caps, "cpu", "mlp")  # plain cross-entropy passes
    focal = RunConfig.model_validate({"backend": "torch", "model": {"name": "mlp"},
                                      "train": {"loss": {"name": "focal"}}})
    with pytest.raises(CapabilityError, match=r"^train\.loss: backend 'torch' trains with plain cross-entropy"):
        check_capabilities(focal, caps, "cpu", "mlp")
    assert check_capabilities(focal, caps, "cpu", "mlp", training=False) is None  # evaluation needs no loss
