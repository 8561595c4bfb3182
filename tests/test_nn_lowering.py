"""Every built-in layer, lowered on every installed backend, matches its numpy reference: the forward in
float32 against float64, and the gradients against float64 central differences of the reference."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.nn_backends import BACKENDS, U32, directional_derivative, forward_and_grads, graph_spec

pytestmark = pytest.mark.slow

INSTALLED = [b for b in BACKENDS if importlib.util.find_spec({"tensorflow": "tensorflow"}.get(b, b))]
# every case is drawn once per backend; a jax case compiles twice (forward, gradient)
EXAMPLES = settings(max_examples=6, deadline=None)


@st.composite
def dense(draw: Any) -> tuple[list, tuple, int]:
    lead = draw(st.lists(st.integers(1, 3), max_size=1))
    d = draw(st.integers(1, 8))
    return [{"dense": {"units": draw(st.integers(1, 6)), "bias": draw(st.booleans())}}], (*lead, d), d


@st.composite
def conv2d(draw: Any) -> tuple[list, tuple, int]:
    groups = draw(st.sampled_from([1, 2]))
    c = groups * draw(st.integers(1, 2))
    kernel = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    size = (kernel - 1) * dilation + 1
    h, w = draw(st.integers(size, 7)), draw(st.integers(size, 7))
    layer = {"filters": groups * draw(st.integers(1, 3)), "kernel": kernel, "stride": draw(st.integers(1, 2)),
             "padding": draw(st.sampled_from(["same", "valid", 1])), "dilation": dilation, "groups": groups,
             "bias": draw(st.booleans())}
    return [{"conv2d": layer}], (h, w, c), kernel * kernel * c


@st.composite
def pool(draw: Any) -> tuple[list, tuple, int]:
    kind = draw(st.sampled_from(["max", "avg", "global_max", "global_avg"]))
    size = draw(st.integers(1, 3))
    shape = (draw(st.integers(size, 6)), draw(st.integers(size, 6)), draw(st.integers(1, 3)))
    return [{"pool": {"kind": kind, "size": size, "stride": draw(st.integers(1, 3))}}], shape, shape[0] * shape[1]


@st.composite
def reshaping(draw: Any) -> tuple[list, tuple, int]:
    h, w, c = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    first = draw(st.sampled_from(["flatten", {"reshape": [w, -1]}]))
    return [first, {"dense": 2}], (h, w, c), h * w * c


@st.composite
def embeddings(draw: Any) -> tuple[list, tuple, int]:
    t, dim = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    layers = [{"embedding": {"vocab": draw(st.integers(2, 9)), "dim": dim}}, {"positional": draw(st.integers(t, 8))}]
    return layers, (t,), 1


@st.composite
def norms(draw: Any) -> tuple[list, tuple, int]:
    d = draw(st.integers(2, 8))
    return [{"norm": draw(st.sampled_from(["layer", "rms"]))}], (draw(st.integers(1, 3)), d), d


@st.composite
def activations(draw: Any) -> tuple[list, tuple, int]:
    fn = draw(st.sampled_from(["relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "softmax"]))
    d = draw(st.integers(1, 6))
    return [{"dense": d}, fn, {"dropout": 0.3}], (d,), d


@st.composite
def blocks(draw: Any) -> tuple[list, tuple, int]:
    d = draw(st.integers(1, 6))
    body = [{"norm": "rms"}, {"gated_mlp": {"hidden": draw(st.integers(1, 8)),
                                            "activation": draw(st.sampled_from(["silu", "gelu_tanh", "gelu"])),
                                            "bias": draw(st.booleans())}}]
    return [{"sequential": {"name": "h", "repeat": 2, "layers": [{"residual": body}]}}], (2, d), 8


@st.composite
def attention(draw: Any) -> tuple[list, tuple, int]:
    kv = draw(st.integers(1, 2))
    heads = kv * draw(st.integers(1, 2))
    hd = draw(st.sampled_from([2, 4]))
    layer = {"heads": heads, "kv_heads": kv, "head_dim": hd, "rope": draw(st.booleans()),
             "rope_base": draw(st.sampled_from([100.0, 10000.0])), "qkv_bias": draw(st.booleans()),
             "bias": draw(st.booleans())}
    t, d = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return [{"attention": layer}], (t, d), max(d, heads * hd, t)


CASES = {"dense": dense(), "conv2d": conv2d(), "pool": pool(), "reshaping": reshaping(),
         "embeddings": embeddings(), "norms": norms(), "activations": activations(), "blocks": blocks(),
         "attention": attention()}


def _inputs(spec: Any, rng: np.random.Generator) -> np.ndarray:
    shape = (2, *spec.graph.input_shape)
    if spec.graph.takes_ids:
        first = spec.graph.root.children[0].layer
        return rng.integers(0, int(first.vocab), shape)
    return rng.normal(size=shape)


@pytest.mark.parametrize("backend", INSTALLED)
@pytest.mark.parametrize("case", list(CASES))
def test_layer_matches_the_reference_forward_and_gradients(backend: str, case: str) -> None:
    @EXAMPLES
    @given(drawn=CASES[case], seed=st.integers(0, 2**16))
    def check(drawn: tuple[list, tuple, int], seed: int) -> None:
        layers, shape, reduction = drawn
        spec = graph_spec(layers, shape)
        rng = np.random.default_rng(seed)
        # weights of order 1 (not the init's small scale), so every path is exercised, rounded to float32
        weights = {p.name: (rng.normal(size=p.shape) * 0.5 + (1.0 if p.init == "ones" else 0.0)).astype(np.float32)
                   for p in spec.table}
        x = _inputs(spec, rng)
        x = x if spec.graph.takes_ids else x.astype(np.float32)
        ref = spec.graph.reference(weights, x)
        cot = rng.normal(size=ref.shape)
        out, grads, gx = forward_and_grads(backend, spec, weights, x, cot)
        # float32 against float64 from the same float32 inputs: each reduction of length K loses at most
        # K * u relative to the sum of absolute terms; allow 4 chained reductions on values of |ref| + 1
        scale = float(np.abs(ref).max(initial=0.0)) + 1.0
        bound = 4 * reduction * U32 * scale * 8
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=0, atol=max(bound, 1e-6))
        # gradients: <grad, d> against the float64 directional derivative along a random direction d
        dw = {k: rng.normal(size=v.shape) for k, v in weights.items()}
        dx = None if gx is None else rng.normal(size=x.shape)
        expected = directional_derivative(spec.graph, weights, x, cot, dw, dx)
        terms = [np.asarray(grads[k], np.float64) * dw[k] for k in weights]
        if dx is not None:
            terms.append(np.asarray(gx, np.float64) * dx)
        got = float(sum(t.sum() for t in terms))
        magnitude = float(sum(np.abs(t).sum() for t in terms)) + 1e-3
        # fp32 backward: the same per-reduction bound, over forward and backward passes (x 2), summed over
        # the direction (the absolute sum above); central differences in float64 add ~1e-8
        assert abs(got - expected) <= 8 * 4 * reduction * U32 * scale * magnitude + 1e-6, (got, expected)

    check()
