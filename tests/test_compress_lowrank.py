"""The ``lowrank`` compressor and the ``low_rank`` model param, through the numpy reference and every backend."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.backend import TrainSetup
from crossframe.compress.base import CompressContext, CompressResult
from crossframe.compress.lowrank import energy_rank, factorisable_layers
from crossframe.config.validation import validate_params
from crossframe.data.dataset import DataInfo
from crossframe.errors import CapabilityError, ConfigError
from crossframe.models import build_model
from crossframe.models.spec import ModelSpec, Params
from crossframe.plugins import component

CASES: dict[str, tuple[dict[str, Any], DataInfo]] = {
    "mlp": ({"hidden": [12, 7], "activation": "gelu"}, DataInfo("classification", (4, 3, 1), 5)),
    "cnn": ({"channels": [3], "hidden": 6}, DataInfo("classification", (6, 5, 2), 3)),
    "gpt": ({"n_layer": 2, "n_head": 2, "d_model": 8, "max_seq_len": 8, "rope": True},
            DataInfo("language_modeling", (6,), 13)),
}
LAYERS = {
    "mlp": ["layers.0", "layers.1", "layers.2"],
    "cnn": ["fc.0", "fc.1"],
    "gpt": [f"h.{i}.{name}" for i in range(2) for name in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")],
}


def spec_of(model: str, **extra: Any) -> ModelSpec:
    """A tiny spec of ``model`` (``extra`` added to its params)."""
    params, info = CASES[model]
    return build_model(model, {**params, **extra}, info)


def inputs(spec: ModelSpec, n: int = 5) -> np.ndarray:
    """A seeded batch for ``spec``."""
    rng = np.random.default_rng(7)
    if spec.data_info.task == "language_modeling":
        return rng.integers(0, spec.data_info.num_outputs, (n, *spec.data_info.input_shape))
    return rng.normal(size=(n, *spec.data_info.input_shape)).astype(np.float32)


def lowrank(spec: ModelSpec, weights: Params, masks: dict[str, np.ndarray] | None = None,
            **params: object) -> tuple[ModelSpec, CompressResult]:
    """Run ``lowrank`` through the registered schema; the factorised spec and the result."""
    comp = component("compressor", "lowrank")
    compressor = comp.obj(validate_params(comp.schema, dict(params), "compress.0"))
    result = compressor.apply(CompressContext(spec, spec.name, dict(spec.params), weights, dict(masks or {})))
    assert result.model_params is not None
    new = build_model(spec.name, result.model_params, spec.data_info)
    new.check_weights(result.weights)
    return new, result


def full_rank(model: str) -> tuple[ModelSpec, Params, ModelSpec, Params]:
    """The original spec and weights, and the same model factorised at full rank."""
    spec = spec_of(model)
    weights = spec.init(3)
    new, result = lowrank(spec, weights, rank=10_000)  # clipped to min(in, out) per layer
    return spec, weights, new, result.weights


def dims(spec: ModelSpec, prefix: str) -> tuple[int, int]:
    """``(in, out)`` of a dense layer of ``spec``."""
    return spec.dense_dims(prefix)


# --------------------------------------------------------------------------- the model param


@pytest.mark.parametrize("model", sorted(CASES))
def test_factorisable_layers_are_the_ones_the_model_accepts(model: str) -> None:
    spec = spec_of(model)
    assert factorisable_layers(spec) == LAYERS[model]
    ranks = {layer: 1 for layer in LAYERS[model]}
    factored = spec_of(model, low_rank=ranks)
    names = {p.name: p for p in factored.table}
    for layer in LAYERS[model]:
        fan_in, fan_out = dims(spec, layer)
        assert f"{layer}.weight" not in names
        assert names[f"{layer}.weight_u"].shape == (fan_in, 1) and names[f"{layer}.weight_u"].layout == "dense"
        assert names[f"{layer}.weight_v"].shape == (1, fan_out) and names[f"{layer}.weight_v"].layout == "dense"
        assert dims(factored, layer) == (fan_in, fan_out)
    assert factored.params["low_rank"] == ranks
    assert "low_rank" not in spec.params, "a full-rank spec reads as before"


@pytest.mark.parametrize(("model", "low_rank", "message"), [
    ("mlp", {"layers.3": 2}, "model.low_rank: unknown layer 'layers.3'"),
    ("mlp", {"layers.2": 6}, "model.low_rank: rank 6 for 'layers.2' is outside 1..min(in, out) = 5"),
    ("mlp", {"layers.0": 0}, "model.low_rank.layers.0"),
    ("cnn", {"conv.0": 2}, "model.low_rank: unknown layer 'conv.0'"),
    ("cnn", {"fc.1": 4}, "model.low_rank: rank 4 for 'fc.1' is outside 1..min(in, out) = 3"),
    ("gpt", {"h.0.attn.qkv": 9}, "model.low_rank: rank 9 for 'h.0.attn.qkv' is outside 1..min(in, out) = 8"),
    ("gpt", {"lm_head": 2}, "model.low_rank: unknown layer 'lm_head'"),
])
def test_bad_low_rank_is_a_one_line_config_error(model: str, low_rank: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec_of(model, low_rank=low_rank)
    assert message in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- full rank reproduces outputs


@pytest.mark.parametrize("model", sorted(CASES))
def test_full_rank_reproduces_the_reference_outputs(model: str) -> None:
    spec, weights, new, factored = full_rank(model)
    assert set(new.low_rank) == set(LAYERS[model])
    x = inputs(spec)
    diff = np.max(np.abs(new.forward(factored, x) - spec.forward(weights, x)))
    assert diff <= 1e-4, f"{model}: full-rank factorisation changed the outputs by {diff:.3g}"


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"])
def test_full_rank_reproduces_outputs_on_every_backend(backend: str) -> None:
    from crossframe.train.runner import make_backend

    try:
        impl = make_backend(backend)
    except CapabilityError as exc:
        pytest.skip(str(exc))
    for model in sorted(CASES):
        spec, weights, new, factored = full_rank(model)
        x = inputs(spec)
        got = impl.predict(impl.inference_state(new, factored), x)
        want = spec.forward(weights, x)
        assert got.shape == want.shape
        diff = float(np.max(np.abs(got - want)))
        assert diff <= 1e-4, f"{backend}/{model}: factorised model differs from the original by {diff:.3g}"
        # the backend's canonical export of the factorised model is exact
        state = impl.create_state(TrainSetup(new, factored))
        back, _ = impl.export_state(state)
        assert set(back) == set(factored)
        for name, value in factored.items():
            assert np.array_equal(back[name], value), f"{backend}/{model}: round trip changed '{name}'"


def test_factorised_model_trains_on_torch() -> None:
    """Gradients reach both factors: one step changes weight_u and weight_v."""
    from crossframe.train.runner import make_backend

    spec = spec_of("mlp", low_rank={"layers.0": 2, "layers.1": 3})
    weights = spec.init(1)
    impl = make_backend("torch")
    state = impl.create_state(TrainSetup(spec, weights, "sgd", {"lr": 0.1}))
    x = inputs(spec, 8)
    batch = {"x": x, "y": np.arange(8) % spec.data_info.num_outputs}
    state, _ = impl.train_step(state, batch, 0.1)
    after, _ = impl.export_state(state)
    for name in ("layers.0.weight_u", "layers.0.weight_v", "layers.1.weight_u", "layers.1.weight_v"):
        assert not np.array_equal(after[name], weights[name]), f"'{name}' did not change in a training step"


# --------------------------------------------------------------------------- lower rank


@pytest.mark.parametrize("model", sorted(CASES))
def test_lower_rank_drops_the_parameter_count_as_computed(model: str) -> None:
    spec = spec_of(model)
    weights = spec.init(5)
    new, result = lowrank(spec, weights, rank=2)
    expected = spec.param_count
    for layer in LAYERS[model]:
        fan_in, fan_out = dims(spec, layer)
        expected += 2 * (fan_in + fan_out) - fan_in * fan_out
        assert new.low_rank[layer] == 2
        info = result.summary["layers"][layer]
        assert info["params_before"] == fan_in * fan_out and info["params_after"] == 2 * (fan_in + fan_out)
    assert new.param_count == expected
    assert result.summary["param_count_before"] == spec.param_count
    assert result.summary["param_count_after"] == expected
    # Eckart-Young: the product is the best rank-2 approximation; its error is the dropped singular values
    for layer in LAYERS[model]:
        w = weights[f"{layer}.weight"].astype(np.float64)
        s = np.linalg.svd(w, compute_uv=False)
        approx = result.weights[f"{layer}.weight_u"].astype(np.float64) @ result.weights[f"{layer}.weight_v"]
        assert np.linalg.norm(w - approx) == pytest.approx(np.sqrt((s[2:] ** 2).sum()), rel=1e-4, abs=1e-6)
    x = inputs(spec)
    assert new.forward(result.weights, x).shape == spec.forward(weights, x).shape


def test_include_exclude_and_refactorising() -> None:
    spec = spec_of("gpt")
    weights = spec.init(2)
    new, result = lowrank(spec, weights, rank=4, include=["h.*.mlp.*"], exclude=["h.1.*"])
    assert new.low_rank == {"h.0.mlp.fc": 4, "h.0.mlp.proj": 4}
    again, second = lowrank(new, result.weights, rank=2, include=["h.0.mlp.fc"])
    assert again.low_rank == {"h.0.mlp.fc": 2, "h.0.mlp.proj": 4}
    kernel = result.weights["h.0.mlp.fc.weight_u"].astype(np.float64) @ result.weights["h.0.mlp.fc.weight_v"]
    s = np.linalg.svd(kernel, compute_uv=False)
    approx = second.weights["h.0.mlp.fc.weight_u"].astype(np.float64) @ second.weights["h.0.mlp.fc.weight_v"]
    assert np.linalg.norm(kernel - approx) == pytest.approx(np.sqrt((s[2:] ** 2).sum()), rel=1e-4, abs=1e-6)


def test_masks_of_factorised_layers_are_dropped_others_kept() -> None:
    spec = spec_of("mlp")
    weights = spec.init(0)
    masks = {"layers.0.weight": np.ones((12, 12), np.float32), "layers.1.weight": np.ones((12, 7), np.float32)}
    _, result = lowrank(spec, weights, masks, rank=3, include=["layers.0"])
    assert set(result.masks) == {"layers.1.weight"}
    assert result.summary["masks_dropped"] == ["layers.0.weight"]


@pytest.mark.parametrize(("params", "message"), [
    ({}, "give exactly one of 'rank'"),
    ({"rank": 2, "energy": 0.9}, "give exactly one of 'rank'"),
    ({"energy": 1.5}, "compress.0.energy"),
    ({"rank": 2, "include": ["conv.*"]}, "lowrank.include: 'conv.*' matches no factorisable layer"),
])
def test_bad_params_are_one_line_errors(params: dict, message: str) -> None:
    spec = spec_of("mlp")
    with pytest.raises(ConfigError) as info:
        lowrank(spec, spec.init(0), **params)
    assert message in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- energy


@given(values=st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=6),
       energy=st.floats(0.01, 1.0, allow_nan=False))
def test_energy_picks_the_smallest_rank_holding_that_share(values: list[float], energy: float) -> None:
    s = np.sort(np.asarray(values))[::-1]
    r = energy_rank(s, energy)
    total = float((s**2).sum())
    if total == 0.0:
        assert r == 1
        return
    share = [float((s[:k] ** 2).sum()) / total for k in range(1, len(s) + 1)]
    assert share[r - 1] >= energy - 1e-9
    assert r == 1 or share[r - 2] < energy


@given(spectrum=st.lists(st.floats(0.05, 5.0, allow_nan=False), min_size=4, max_size=4),
       energy=st.floats(0.05, 1.0, allow_nan=False))
def test_energy_through_the_compressor(spectrum: list[float], energy: float) -> None:
    """A kernel with a known spectrum is cut at the rank the energy asks for."""
    spec = build_model("mlp", {"hidden": []}, DataInfo("classification", (6,), 4))
    rng = np.random.default_rng(0)
    left, _ = np.linalg.qr(rng.normal(size=(6, 4)))
    right, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    s = np.sort(np.asarray(spectrum))[::-1]
    weights = spec.init(0)
    weights["layers.0.weight"] = (left * s) @ right.T
    new, result = lowrank(spec, {k: v.astype(np.float32) for k, v in weights.items()}, energy=energy)
    singular = np.linalg.svd(weights["layers.0.weight"].astype(np.float32).astype(np.float64), compute_uv=False)
    shares = np.cumsum(singular**2) / np.sum(singular**2)
    expected = next(k + 1 for k, share in enumerate(shares) if share >= energy * (1 - 1e-12) or k == len(shares) - 1)
    assert new.low_rank == {"layers.0": expected}
    assert result.summary["layers"]["layers.0"]["energy"] >= energy - 1e-6
