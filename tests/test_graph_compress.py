"""Compressors work by layer type on any graph: attention heads pruned (grouped-query too), every dense layer
factorised (with or without a bias), every dense, conv and attention kernel quantised."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from crossframe.compress.base import CompressContext
from crossframe.data.dataset import DataInfo
from crossframe.models import build_model
from crossframe.plugins import component
from crossframe.validation import validate_params

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
LM = DataInfo("language_modeling", (5,), 11)
#: two blocks of grouped-query attention (4 query heads reading 2 key/value heads of size 2), a gated MLP,
#: and an output layer without a bias
LAYERS = [
    {"embedding": {"name": "wte", "dim": 8}},
    {"sequential": {"name": "h", "repeat": 2, "layers": [
        {"residual": {"name": "", "layers": [{"norm": {"name": "ln_1"}},
                                             {"attention": {"name": "attn", "heads": 4, "kv_heads": 2,
                                                            "head_dim": 2, "qkv_bias": True}}]}},
        {"residual": {"name": "", "layers": [{"norm": {"name": "ln_2"}},
                                             {"gated_mlp": {"name": "mlp", "hidden": 12}}]}}]}},
    {"norm": {"name": "ln_f"}},
    {"dense": {"name": "lm_head", "units": "outputs", "bias": False}},
]


def lm() -> Any:
    return build_model("graph", {"layers": LAYERS}, LM)


def compress(name: str, spec: Any, weights: Any, **params: Any) -> Any:
    comp = component("compressor", name)
    compressor = comp.obj(validate_params(comp.schema, dict(params), "compress.0"))
    return compressor.apply(CompressContext(spec, spec.name, dict(spec.params), weights, {}))


def with_small_heads(weights: dict, layer: str, heads: list[int], hd: int = 2, n_heads: int = 4) -> dict:
    """Weights where query heads ``heads`` of ``layer`` (and their projection rows) are tiny."""
    out = {k: v.copy() for k, v in weights.items()}
    for h in heads:
        out[f"{layer}.qkv.weight"][:, h * hd:(h + 1) * hd] *= 1e-3
        out[f"{layer}.proj.weight"][h * hd:(h + 1) * hd] *= 1e-3
    assert n_heads * hd <= out[f"{layer}.qkv.weight"].shape[1]
    return out


def test_heads_of_grouped_query_attention_are_pruned_by_score() -> None:
    spec = lm()
    weights = with_small_heads(spec.init(0), "h.0.attn", [1, 2])  # one head of each kv group
    weights = with_small_heads(weights, "h.1.attn", [2, 3])  # both readers of kv head 1
    result = compress("prune", spec, weights, pattern="heads", sparsity=0.5)
    units = result.summary["units"]
    assert units["h.0.attn"]["pruned_heads"] == [1, 2] and units["h.0.attn"]["pruned_kv_heads"] == []
    assert units["h.1.attn"]["pruned_heads"] == [2, 3] and units["h.1.attn"]["pruned_kv_heads"] == [1]
    qkv, proj = result.weights["h.1.attn.qkv.weight"], result.weights["h.1.attn.proj.weight"]
    # columns: q heads 0..3 (2 each), then k heads 0..1, then v heads 0..1
    zero_cols = [4, 5, 6, 7, 10, 11, 14, 15]
    assert np.all(qkv[:, zero_cols] == 0) and np.all(np.delete(qkv, zero_cols, axis=1) != 0)
    assert np.all(result.weights["h.1.attn.qkv.bias"][zero_cols] == 0)
    assert np.all(proj[4:8] == 0) and np.all(proj[:4] != 0)
    assert set(result.masks) == {f"h.{i}.attn.{p}" for i in (0, 1) for p in ("qkv.weight", "qkv.bias", "proj.weight")}


def test_heads_ranked_across_layers_with_global_scope() -> None:
    spec = lm()
    weights = with_small_heads(spec.init(1), "h.1.attn", [0, 1, 3])
    result = compress("prune", spec, weights, pattern="heads", sparsity=3 / 8, scope="global")
    units = result.summary["units"]
    assert units["h.0.attn"]["pruned_heads"] == [] and units["h.1.attn"]["pruned_heads"] == [0, 1, 3]
    assert units["h.1.attn"]["pruned_kv_heads"] == [0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_head_pruned_graph_runs_on_every_backend(backend: str) -> None:
    from crossframe.train.runner import make_backend

    spec = lm()
    result = compress("prune", spec, with_small_heads(spec.init(2), "h.0.attn", [0, 3]), pattern="heads",
                      sparsity=0.25)
    x = np.random.default_rng(0).integers(0, 11, (3, 5))
    impl = make_backend(backend)
    got = impl.predict(impl.inference_state(spec, result.weights), x)
    # float32 through two blocks of width 8-12 against the float64 reference
    np.testing.assert_allclose(got, spec.forward(result.weights, x), rtol=0, atol=1e-5)


def test_every_linear_of_a_graph_is_factorisable_with_or_without_a_bias() -> None:
    """Dense layers, attention projections (grouped-query, biased qkv) and gated-MLP linears alike."""
    spec = lm()
    weights = spec.init(3)
    result = compress("lowrank", spec, weights, rank=10_000)  # full rank: the same function
    linears = {f"h.{i}.{k}" for i in (0, 1) for k in ("attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.down")}
    assert set(result.model_params["low_rank"]) == linears | {"lm_head"}
    new = build_model("graph", result.model_params, LM)
    names = {p.name for p in new.table}
    assert {f"{k}.weight_{f}" for k in linears | {"lm_head"} for f in "uv"} <= names
    assert not {f"{k}.weight" for k in linears | {"lm_head"}} & names
    assert "lm_head.bias" not in names and "h.0.attn.qkv.bias" in names
    x = np.random.default_rng(1).integers(0, 11, (2, 5))
    # float64 references of one function; U and V are stored in float32 (relative 6e-8 per entry, width 8)
    np.testing.assert_allclose(new.forward(result.weights, x), spec.forward(weights, x), atol=1e-5)
    smaller = compress("lowrank", spec, weights, rank=2)
    assert build_model("graph", smaller.model_params, LM).param_count < spec.param_count


def test_every_kernel_of_a_graph_is_quantised_and_nothing_else() -> None:
    spec = lm()
    weights = spec.init(4)
    result = compress("quantize", spec, weights, bits=8)
    kernels = {p.name for p in spec.table if p.layout in ("dense", "conv2d")}
    assert kernels == {f"h.{i}.{k}" for i in (0, 1) for k in ("attn.qkv.weight", "attn.proj.weight",
                                                               "mlp.gate.weight", "mlp.up.weight",
                                                               "mlp.down.weight")} | {"lm_head.weight"}
    for p in spec.table:
        got, orig = result.weights[p.name], weights[p.name]
        if p.name not in kernels:
            assert np.array_equal(got, orig), p.name  # embeddings, norms and biases stay float32
            continue
        scale = np.abs(orig).max(axis=tuple(range(orig.ndim - 1))) / 127  # per output channel
        assert np.all(np.abs(got - orig) <= scale / 2 * (1 + 1e-6) + 1e-12), p.name
        assert len(np.unique(got[:, 0])) <= 255
