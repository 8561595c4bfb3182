"""Canonical weights: seeded init, exact torch round trip, torch forward against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.data.dataset import DataInfo
from crossframe.errors import CheckpointError, ConfigError
from crossframe.models import build_model

torch = pytest.importorskip("torch")
from crossframe_torch.backend import TorchBackend  # noqa: E402

BACKEND = TorchBackend()


def mlp_spec(inputs: tuple[int, ...], hidden: list[int], outputs: int, activation: str = "relu"):
    return build_model("mlp", {"hidden": hidden, "activation": activation},
                       DataInfo("classification", inputs, outputs))


def cnn_spec(shape: tuple[int, int, int], channels: list[int], kernel: int, outputs: int):
    return build_model("cnn", {"channels": channels, "kernel_size": kernel, "hidden": 12},
                       DataInfo("classification", shape, outputs))


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_mlp_forward_matches_reference(activation: str) -> None:
    spec = mlp_spec((8, 8, 1), [32, 16], 10, activation)
    weights = spec.init(seed=1)
    x = np.random.default_rng(0).normal(size=(7, 8, 8, 1)).astype(np.float32)
    native = BACKEND.predict(BACKEND.inference_state(spec, weights), x)
    np.testing.assert_allclose(native, spec.forward(weights, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("shape", "channels", "kernel"), [((8, 8, 1), [4, 6], 3), ((9, 7, 3), [5], 5)])
def test_cnn_forward_matches_reference(shape, channels, kernel) -> None:
    spec = cnn_spec(shape, channels, kernel, 4)
    weights = spec.init(seed=2)
    x = np.random.default_rng(1).normal(size=(5, *shape)).astype(np.float32)
    native = BACKEND.predict(BACKEND.inference_state(spec, weights), x)
    np.testing.assert_allclose(native, spec.forward(weights, x), atol=1e-5, rtol=1e-5)


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
    assert back.keys() == weights.keys()
    for name in weights:
        assert back[name].dtype == np.float32
        assert np.array_equal(back[name], weights[name]), name


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
        assert np.array_equal(back[name], weights[name]), name


def _setup(spec, weights):
    from crossframe.backend import TrainSetup

    return TrainSetup(spec, weights)


def test_initialisation_is_seeded_and_per_parameter() -> None:
    spec = mlp_spec((4,), [8], 3)
    a, b, c = spec.init(0), spec.init(0), spec.init(1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["layers.0.weight"], c["layers.0.weight"])
    assert np.all(a["layers.0.bias"] == 0)
    wider = mlp_spec((4,), [8], 5).init(0)  # a different head leaves the first layer's draw alone
    assert np.array_equal(wider["layers.0.weight"], a["layers.0.weight"])
    std = a["layers.0.weight"].std()
    assert 0.3 < std / np.sqrt(2 / 4) < 1.7


def test_spec_rejects_mismatched_weights() -> None:
    spec = mlp_spec((4,), [8], 3)
    weights = spec.init(0)
    weights["layers.0.weight"] = np.zeros((5, 8), np.float32)
    with pytest.raises(CheckpointError, match=r"'layers.0.weight' has shape \(5, 8\)"):
        spec.check_weights(weights)
    with pytest.raises(CheckpointError, match="missing"):
        spec.check_weights({})


def test_cnn_needs_images_and_enough_pixels() -> None:
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model("cnn", {}, DataInfo("classification", (64,), 10))
    with pytest.raises(ConfigError, match="fewer"):
        build_model("cnn", {"channels": [2, 2, 2, 2]}, DataInfo("classification", (8, 8, 1), 10))
    with pytest.raises(ConfigError, match="kernel_size: must be odd"):
        build_model("cnn", {"kernel_size": 4}, DataInfo("classification", (8, 8, 1), 10))
