"""The ``quantize`` compressor: round-to-nearest error bound, int4 packing, the stored form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crossframe.compress.base import CompressContext, CompressResult
from crossframe.compress.quantize import dequantize_array, pack_int4, quantize_array, read_stored, unpack_int4
from crossframe.config.validation import validate_params
from crossframe.data.dataset import DataInfo
from crossframe.errors import ConfigError
from crossframe.models import build_model
from crossframe.models.spec import ModelSpec, Params
from crossframe.plugins import component

QMAX = {8: 127, 4: 7}

float_arrays = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6),
    elements=st.floats(-1e3, 1e3, allow_nan=False, width=32) | st.sampled_from([0.0, 1e-30, -1e-30]))


def quantize(spec: ModelSpec, weights: Params, masks: dict[str, np.ndarray] | None = None,
             **params: object) -> CompressResult:
    """Run ``quantize`` with ``params`` through the registered schema."""
    comp = component("compressor", "quantize")
    compressor = comp.obj(validate_params(comp.schema, dict(params), "compress.0"))
    return compressor.apply(CompressContext(spec, spec.name, dict(spec.params), weights, dict(masks or {})))


def cnn() -> ModelSpec:
    """A tiny cnn (conv and dense kernels)."""
    return build_model("cnn", {"channels": [3], "hidden": 6}, DataInfo("classification", (4, 4, 2), 3))


@given(w=float_arrays, bits=st.sampled_from([8, 4]), granularity=st.sampled_from(["per_channel", "per_tensor"]))
@example(w=np.array([4e-45], np.float32), bits=8, granularity="per_channel")  # found in CI: its scale was 0
def test_round_to_nearest_error_is_at_most_half_a_step(w: np.ndarray, bits: int, granularity: str) -> None:
    q, scale = quantize_array(w, bits, granularity)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scale.dtype == np.float32 and np.all(scale > 0)
    assert scale.shape == ((w.shape[-1],) if granularity == "per_channel" else (1,))
    assert np.all(np.abs(q) <= QMAX[bits])
    deq = dequantize_array(q, scale)
    assert deq.dtype == np.float32 and deq.shape == w.shape
    step = np.broadcast_to(scale.astype(np.float64), w.shape)
    err = np.abs(deq.astype(np.float64) - w.astype(np.float64))
    # scale / 2 from rounding, plus float32 rounding of the product q * scale
    assert np.all(err <= step / 2 * (1 + 1e-6) + np.abs(w) * 2**-23), float((err / step).max())
    # each channel's largest value maps to +-qmax: the full range is used (unless the scale that needs is
    # below float32's smallest normal number, the floor of every scale)
    peak = np.abs(w.reshape(-1, w.shape[-1])).max(axis=0) if granularity == "per_channel" else np.abs(w).max()
    top = np.abs(q.reshape(-1, w.shape[-1])).max(axis=0) if granularity == "per_channel" else np.abs(q).max()
    full = np.asarray(peak, np.float64) / QMAX[bits] >= np.finfo(np.float32).tiny
    assert np.all(np.where(full, np.asarray(top) == QMAX[bits], np.asarray(top) <= QMAX[bits]))
    assert np.all((np.asarray(peak) > 0) | (np.asarray(top) == 0))  # an all-zero channel stays zero
    assert np.all(deq[w == 0] == 0)


@given(q=hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=7), elements=st.integers(-8, 7)))
def test_int4_pack_unpack_round_trip(q: np.ndarray) -> None:
    packed = pack_int4(q)
    assert packed.dtype == np.uint8 and packed.shape == ((q.size + 1) // 2,)
    assert np.array_equal(unpack_int4(packed, q.shape), q)
    flat = q.reshape(-1).astype(np.int64)
    assert np.array_equal(packed & 0xF, flat[0::2] & 0xF)  # element 2i in the low nibble
    assert np.array_equal(packed[: flat.size // 2] >> 4, flat[1::2] & 0xF)  # 2i + 1 in the high nibble


def test_pack_int4_rejects_values_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"-8\.\.7"):
        pack_int4(np.array([8], np.int8))
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_int4(np.zeros(3, np.uint8), (7, 2))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_compressor_stores_ints_and_scales_and_returns_dequantised_weights(bits: int, granularity: str) -> None:
    spec = cnn()
    weights = spec.init(3)
    result = quantize(spec, weights, bits=bits, granularity=granularity)
    assert result.stored is not None and result.model_params is None
    kernels = [p.name for p in spec.table if p.layout in ("dense", "conv2d")]
    suffix = ".int8" if bits == 8 else ".int4"
    assert {k for k in result.stored if k.endswith(suffix)} == {k + suffix for k in kernels}
    back = read_stored(result.stored)
    assert set(back) == set(kernels)
    for p in spec.table:
        if p.name in kernels:
            assert np.array_equal(back[p.name], result.weights[p.name])
            values = result.stored[p.name + suffix]
            assert values.dtype == (np.int8 if bits == 8 else np.uint8)
            assert values.size == (weights[p.name].size if bits == 8 else (weights[p.name].size + 1) // 2)
            scale = result.stored[p.name + ".scale"]
            assert scale.dtype == np.float32
            err = np.abs(result.weights[p.name].astype(np.float64) - weights[p.name])
            assert np.all(err <= np.broadcast_to(scale, err.shape) / 2 * (1 + 1e-6) + 1e-12)
            assert result.summary["tensors"][p.name]["max_abs_error"] == pytest.approx(float(err.max()))
            assert not np.array_equal(result.weights[p.name], weights[p.name])
        else:  # biases are not quantised
            assert np.array_equal(result.weights[p.name], weights[p.name])
    float_bytes = sum(weights[k].nbytes for k in kernels)
    assert result.summary["float32_bytes"] == float_bytes
    assert result.summary["stored_bytes"] == sum(a.nbytes for a in result.stored.values())
    expected = 0
    for k in kernels:
        shape = weights[k].shape
        values = weights[k].size if bits == 8 else (weights[k].size + 1) // 2 + 8 * len(shape)  # + int64 shape
        expected += values + 4 * (shape[-1] if granularity == "per_channel" else 1)
    assert result.summary["stored_bytes"] == expected
    assert result.summary["ratio"] == pytest.approx(float_bytes / expected)
    x = np.random.default_rng(0).normal(size=(4, 4, 4, 2)).astype(np.float32)
    ref, got = spec.forward(weights, x), spec.forward(result.weights, x)
    assert np.max(np.abs(got - ref)) < (0.05 if bits == 8 else 0.5) * np.max(np.abs(ref))


def test_pruned_zeros_stay_zero_and_masks_pass_through() -> None:
    spec = build_model("mlp", {"hidden": [9]}, DataInfo("classification", (6,), 4))
    weights = spec.init(0)
    mask = (np.random.default_rng(1).random((6, 9)) > 0.5).astype(np.float32)
    weights["layers.0.weight"] = weights["layers.0.weight"] * mask
    result = quantize(spec, weights, {"layers.0.weight": mask}, bits=4, include=["layers.0.weight"])
    assert np.all(result.weights["layers.0.weight"][mask == 0] == 0)
    assert np.array_equal(result.masks["layers.0.weight"], mask)
    assert np.array_equal(result.weights["layers.1.weight"], weights["layers.1.weight"])
    assert set(read_stored(result.stored or {})) == {"layers.0.weight"}


def test_unknown_include_is_a_one_line_error() -> None:
    spec = cnn()
    with pytest.raises(ConfigError, match=r"^quantize\.include: 'fc\.9\*' matches no parameter"):
        quantize(spec, spec.init(0), include=["fc.9*"])
    with pytest.raises(ConfigError, match=r"compress\.0\.bits"):
        quantize(spec, spec.init(0), bits=2)
