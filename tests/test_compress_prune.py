"""The ``prune`` compressor: exact counts for every pattern and scope, N:M structure, masks that combine."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.compress.base import CompressContext, CompressResult
from crossframe.config.validation import validate_params
from crossframe.data.dataset import DataInfo
from crossframe.errors import ConfigError
from crossframe.models import build_model
from crossframe.models.spec import ModelSpec, Params
from crossframe.plugins import component


def mlp(features: int, hidden: list[int], outputs: int) -> ModelSpec:
    """A tiny mlp spec."""
    return build_model("mlp", {"hidden": hidden}, DataInfo("classification", (features,), outputs))


def gpt(n_layer: int = 2, n_head: int = 4, d_model: int = 8) -> ModelSpec:
    """A tiny gpt spec."""
    return build_model("gpt", {"n_layer": n_layer, "n_head": n_head, "d_model": d_model, "max_seq_len": 8},
                       DataInfo("language_modeling", (6,), 11))


def cnn() -> ModelSpec:
    """A tiny cnn spec (conv kernels with 1 and 3 input channels)."""
    return build_model("cnn", {"channels": [3, 5], "hidden": 6}, DataInfo("classification", (6, 6, 1), 3))


def prune(spec: ModelSpec, weights: Params, masks: dict[str, np.ndarray] | None = None,
          **params: object) -> CompressResult:
    """Run ``prune`` with ``params`` (validated through the registered schema)."""
    comp = component("compressor", "prune")
    compressor = comp.obj(validate_params(comp.schema, dict(params), "compress.0"))
    return compressor.apply(CompressContext(spec, spec.name, dict(spec.params), weights, dict(masks or {})))


def kernels(spec: ModelSpec) -> list[str]:
    """Names of the dense and conv kernels (the default selection)."""
    return [p.name for p in spec.table if p.layout in ("dense", "conv2d")]


def zeros(mask: np.ndarray) -> int:
    """Pruned entries of a mask."""
    return int(np.sum(np.asarray(mask) == 0))


shapes = st.tuples(st.integers(1, 12), st.lists(st.integers(1, 12), max_size=2), st.integers(1, 6))
fractions = st.floats(0.0, 1.0, allow_nan=False)


# --------------------------------------------------------------------------- unstructured


@given(shape=shapes, sparsity=fractions, seed=st.integers(0, 2**16))
def test_layer_scope_gives_each_tensor_exactly_the_sparsity(shape: tuple, sparsity: float, seed: int) -> None:
    spec = mlp(*shape)
    weights = spec.init(seed)
    result = prune(spec, weights, sparsity=sparsity)
    for name in kernels(spec):
        mask, w = result.masks[name], weights[name]
        assert abs(zeros(mask) - sparsity * w.size) <= 0.5, (name, zeros(mask), sparsity * w.size)
        assert np.array_equal(result.weights[name], np.where(mask != 0, w, 0))
        pruned, kept = np.abs(w[mask == 0]), np.abs(w[mask != 0])
        if pruned.size and kept.size:
            assert pruned.max() <= kept.min()
        assert result.summary["tensors"][name]["pruned"] == zeros(mask)
    for p in spec.table:  # biases are never selected by default
        if p.layout == "bias":
            assert p.name not in result.masks and np.array_equal(result.weights[p.name], weights[p.name])


@given(shape=shapes, sparsity=fractions, seed=st.integers(0, 2**16))
def test_global_scope_ranks_all_selected_weights_together(shape: tuple, sparsity: float, seed: int) -> None:
    spec = mlp(*shape)
    weights = spec.init(seed)
    result = prune(spec, weights, sparsity=sparsity, scope="global")
    names = kernels(spec)
    total = sum(weights[n].size for n in names)
    pruned_count = sum(zeros(result.masks[n]) for n in names)
    assert abs(pruned_count - sparsity * total) <= 0.5
    assert result.summary["pruned"] == pruned_count and result.summary["size"] == total
    pruned = np.concatenate([np.abs(weights[n][result.masks[n] == 0]) for n in names])
    kept = np.concatenate([np.abs(weights[n][result.masks[n] != 0]) for n in names])
    if pruned.size and kept.size:
        assert pruned.max() <= kept.min()


def test_ties_are_broken_by_position_and_repeat() -> None:
    spec = mlp(4, [], 6)
    weights = {k: np.ones_like(v) for k, v in spec.init(0).items()}
    first = prune(spec, weights, sparsity=0.5)
    again = prune(spec, weights, sparsity=0.5)
    flat = first.masks["layers.0.weight"].reshape(-1)
    assert np.array_equal(flat, again.masks["layers.0.weight"].reshape(-1))
    assert np.all(flat[:12] == 0) and np.all(flat[12:] == 1)


def test_inputs_are_not_modified() -> None:
    spec = mlp(5, [7], 3)
    weights = spec.init(1)
    copies = {k: v.copy() for k, v in weights.items()}
    old = {"layers.1.weight": np.ones((7, 3), np.float32)}
    prune(spec, weights, old, sparsity=0.6, pattern="rows")
    assert all(np.array_equal(weights[k], copies[k]) for k in weights)
    assert np.all(old["layers.1.weight"] == 1)


# --------------------------------------------------------------------------- N:M


@given(fan_in=st.integers(1, 13), fan_out=st.integers(1, 5), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8)]),
       seed=st.integers(0, 2**16))
def test_n_m_keeps_the_n_largest_of_every_m_along_the_input_axis(fan_in: int, fan_out: int, nm: tuple[int, int],
                                                                 seed: int) -> None:
    n, m = nm
    spec = mlp(fan_in, [], fan_out)
    weights = spec.init(seed)
    result = prune(spec, weights, pattern=f"{n}:{m}")
    w, mask = weights["layers.0.weight"], result.masks["layers.0.weight"]
    for start in range(0, fan_in, m):
        group_w, group_keep = np.abs(w[start:start + m]), mask[start:start + m] != 0  # [g, out]
        assert np.all(group_keep.sum(axis=0) == min(n, len(group_w)))
        for j in range(fan_out):
            if group_keep[:, j].all() or not group_keep[:, j].any():
                continue
            assert group_w[~group_keep[:, j], j].max() <= group_w[group_keep[:, j], j].min()
    if fan_in % m == 0:
        assert zeros(mask) == w.size * (m - n) // m


def test_n_m_on_conv_kernels_groups_input_channels() -> None:
    spec = cnn()
    weights = spec.init(2)
    result = prune(spec, weights, pattern="2:4", include=["conv.*.weight"])
    assert set(result.masks) == {"conv.0.weight", "conv.1.weight"}
    one = result.masks["conv.0.weight"]  # 1 input channel: a partial group keeps min(2, 1) = 1
    assert np.all(one == 1)
    three = result.masks["conv.1.weight"] != 0  # [3, 3, 3, 5]: one partial group of 3 keeps 2
    assert np.all(three.sum(axis=2) == 2)
    assert result.summary["tensors"]["conv.1.weight"]["sparsity"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- rows and heads


@given(shape=shapes, sparsity=fractions, seed=st.integers(0, 2**16), scope=st.sampled_from(["layer", "global"]))
def test_rows_prune_whole_output_units_by_norm(shape: tuple, sparsity: float, seed: int, scope: str) -> None:
    spec = mlp(*shape)
    weights = spec.init(seed)
    names = kernels(spec)
    if len(names) == 1:  # a linear model: its only units are the outputs
        with pytest.raises(ConfigError, match="would only remove the model's outputs"):
            prune(spec, weights, sparsity=sparsity, pattern="rows", scope=scope)
        return
    result = prune(spec, weights, sparsity=sparsity, pattern="rows", scope=scope)
    output = names.pop()  # the output layer is left alone unless include names it
    assert output not in result.masks and np.array_equal(result.weights[output], weights[output])
    units_total = units_pruned = 0
    rms_pruned, rms_kept = [], []
    for name in names:
        keep_units = result.masks[name] != 0
        assert np.all(keep_units == keep_units[:1]), "a unit is pruned only as a whole column"
        cut = ~keep_units[0]
        rms = np.sqrt((weights[name].astype(np.float64) ** 2).mean(axis=0))
        rms_pruned += list(rms[cut])
        rms_kept += list(rms[~cut])
        bias = name.replace(".weight", ".bias")
        assert np.array_equal(result.masks[bias] == 0, cut), "the pruned units' biases are masked too"
        assert np.all(result.weights[bias][cut] == 0) and np.all(result.weights[name][:, cut] == 0)
        if scope == "layer":
            assert abs(int(cut.sum()) - sparsity * cut.size) <= 0.5
            if cut.any() and not cut.all():
                assert rms[cut].max() <= rms[~cut].min()
        units_total, units_pruned = units_total + cut.size, units_pruned + int(cut.sum())
    if scope == "global":
        assert abs(units_pruned - sparsity * units_total) <= 0.5
        if rms_pruned and rms_kept:
            assert max(rms_pruned) <= min(rms_kept)


def test_rows_on_the_output_layer_only_when_included() -> None:
    spec = mlp(5, [6], 4)
    weights = spec.init(0)
    result = prune(spec, weights, sparsity=0.5, pattern="rows", include=["layers.1.weight"])
    assert set(result.masks) == {"layers.1.weight", "layers.1.bias"}
    assert zeros(result.masks["layers.1.bias"]) == 2


def test_rows_on_a_low_rank_layer_mask_the_layers_bias() -> None:
    spec = build_model("mlp", {"hidden": [8], "low_rank": {"layers.0": 3}}, DataInfo("classification", (6,), 3))
    weights = spec.init(1)
    result = prune(spec, weights, sparsity=0.5, pattern="rows", include=["layers.0.weight_v"])
    cut = result.masks["layers.0.weight_v"][0] == 0
    assert cut.sum() == 4 and np.array_equal(result.masks["layers.0.bias"] == 0, cut)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_heads_prune_whole_attention_heads(scope: str) -> None:
    spec = gpt(n_layer=2, n_head=4, d_model=8)
    weights = spec.init(4)
    result = prune(spec, weights, sparsity=0.5, pattern="heads", scope=scope)
    hd, pruned_total = 2, 0
    for i in range(2):
        qkv = result.weights[f"h.{i}.attn.qkv.weight"].reshape(8, 3, 4, hd)
        proj = result.weights[f"h.{i}.attn.proj.weight"].reshape(4, hd, 8)
        bias = result.weights[f"h.{i}.attn.qkv.bias"].reshape(3, 4, hd)
        dead = [h for h in range(4) if not qkv[:, :, h].any()]
        pruned_total += len(dead)
        assert dead == result.summary["units"][f"h.{i}.attn"]["pruned_heads"]
        for h in dead:
            assert not proj[h].any() and not bias[:, h].any()
        for h in set(range(4)) - set(dead):
            assert np.all(qkv[:, :, h] != 0) and np.all(proj[h] != 0)
        if scope == "layer":
            assert len(dead) == 2
        assert np.array_equal(result.weights[f"h.{i}.mlp.fc.weight"], weights[f"h.{i}.mlp.fc.weight"])
    assert pruned_total == 4
    # the pruned heads are those of smallest norm (checked against a direct computation)
    norms = []
    for i in range(2):
        q = weights[f"h.{i}.attn.qkv.weight"].astype(np.float64).reshape(8, 3, 4, hd)
        p = weights[f"h.{i}.attn.proj.weight"].astype(np.float64).reshape(4, hd, 8)
        norms.append((q**2).sum(axis=(0, 1, 3)) + (p**2).sum(axis=(1, 2)))
    if scope == "layer":
        for i in range(2):
            assert sorted(np.argsort(norms[i], kind="stable")[:2]) == result.summary["units"][f"h.{i}.attn"][
                "pruned_heads"]
    else:
        smallest = set(np.argsort(np.concatenate(norms), kind="stable")[:4])
        got = {i * 4 + h for i in range(2) for h in result.summary["units"][f"h.{i}.attn"]["pruned_heads"]}
        assert got == smallest
    # a pruned head contributes nothing: whatever its q/k/v biases, the outputs stay the same
    x = np.random.default_rng(0).integers(0, 11, (2, 6))
    noisy = dict(result.weights)
    for i in range(2):
        bias = noisy[f"h.{i}.attn.qkv.bias"].reshape(3, 4, hd).copy()
        for h in result.summary["units"][f"h.{i}.attn"]["pruned_heads"]:
            bias[:, h] = np.random.default_rng(i).normal(0, 1, (3, hd))
        noisy[f"h.{i}.attn.qkv.bias"] = bias.reshape(-1)
    assert np.allclose(spec.forward(noisy, x), spec.forward(result.weights, x), atol=1e-6)


# --------------------------------------------------------------------------- masks combine


@given(first=fractions, second=fractions, seed=st.integers(0, 2**16))
def test_masks_from_earlier_steps_combine(first: float, second: float, seed: int) -> None:
    spec = mlp(6, [5], 4)
    weights = spec.init(seed)
    one = prune(spec, weights, sparsity=first)
    two = prune(spec, one.weights, one.masks, sparsity=second)
    for name in kernels(spec):
        before, after = one.masks[name] != 0, two.masks[name] != 0
        assert not np.any(after & ~before), "a weight pruned earlier came back"
        size = before.size
        expected = max(zeros(one.masks[name]), math.floor(second * size + 0.5))
        assert zeros(two.masks[name]) == expected
        assert np.all(two.weights[name][~after] == 0)


def test_n_m_after_unstructured_keeps_both_constraints() -> None:
    spec = mlp(8, [], 5)
    weights = spec.init(3)
    one = prune(spec, weights, sparsity=0.3)
    two = prune(spec, one.weights, one.masks, pattern="2:4")
    before, after = one.masks["layers.0.weight"] != 0, two.masks["layers.0.weight"] != 0
    assert not np.any(after & ~before)
    assert np.all(after.reshape(2, 4, 5).sum(axis=1) <= 2)
    assert np.all(two.weights["layers.0.weight"][~after] == 0)


# --------------------------------------------------------------------------- selection and errors


def test_include_and_exclude_select_by_canonical_name() -> None:
    spec = gpt()
    weights = spec.init(0)
    result = prune(spec, weights, sparsity=0.5, include=["h.*.mlp.*.weight", "wte.weight"], exclude=["h.1.*"])
    assert set(result.masks) == {"h.0.mlp.fc.weight", "h.0.mlp.proj.weight", "wte.weight"}
    assert abs(zeros(result.masks["wte.weight"]) - 0.5 * weights["wte.weight"].size) <= 0.5


@pytest.mark.parametrize(("params", "message"), [
    ({"sparsity": 0.5, "include": ["nope.*"]}, "prune.include: 'nope.*' matches no parameter"),
    ({"sparsity": 0.5, "pattern": "heads"}, "'heads' prunes attention heads (of a 'gpt', or a graph's attention"),
    ({"sparsity": 0.5, "pattern": "rows", "include": ["layers.0.bias"]}, "dense and conv2d kernels only"),
    ({"pattern": "2:4", "sparsity": 0.5}, "compress.0.sparsity: pattern '2:4' fixes the sparsity"),
    ({"pattern": "3:2"}, "compress.0.pattern: '3:2': N:M needs 1 <= N < M"),
    ({}, "compress.0.sparsity: required"),
    ({"sparsity": 1.5}, "compress.0.sparsity"),
    ({"sparsity": 0.5, "scope": "model"}, "compress.0.scope"),
])
def test_bad_params_are_one_line_errors(params: dict, message: str) -> None:
    spec = mlp(4, [3], 2)
    with pytest.raises(ConfigError) as info:
        prune(spec, spec.init(0), **params)
    assert message in str(info.value) and "\n" not in str(info.value)
