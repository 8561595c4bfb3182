"""The neutral GPT: a graph of neutral layers with its canonical table, GPT-2 initialisation and reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.data.dataset import DataInfo
from crossframe.errors import ConfigError
from crossframe.models import build_model
from crossframe.models.gpt import GPTParams, flops_per_token
from crossframe.nn.layers import Attention, Norm, rope_tables, rotate_half


def gpt(vocab: int = 11, seq: int = 8, **params):
    base = {"n_layer": 2, "n_head": 2, "d_model": 8, "max_seq_len": 16}
    return build_model("gpt", base | params, DataInfo("language_modeling", (seq,), vocab))


def tokens(b: int, t: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (b, t))


@pytest.mark.parametrize("params", [{}, {"rope": True}, {"tied_embeddings": False}, {"d_ff": 12}, {"dropout": 0.1}])
def test_outputs_are_causal(params) -> None:
    spec = gpt(**params)
    w = spec.init(0)
    x = tokens(2, 8, 11)
    changed = x.copy()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    a, b = spec.forward(w, x), spec.forward(w, changed)
    assert a.shape == (2, 8, 11)
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-4


def test_table_matches_the_architecture() -> None:
    spec = gpt(vocab=50, n_layer=3, d_model=16, n_head=4, max_seq_len=32, seq=32)
    d, ff = 16, 64
    per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)
    assert spec.param_count == 50 * d + 32 * d + 3 * per_layer + 2 * d
    names = {p.name for p in spec.table}
    assert "lm_head.weight" not in names and "wpe.weight" in names
    assert "wpe.weight" not in {p.name for p in gpt(rope=True).table}
    untied = gpt(tied_embeddings=False)
    assert next(p for p in untied.table if p.name == "lm_head.weight").shape == (8, 11)
    no_decay = {p.name for p in spec.table if not p.decay}
    assert all(n.endswith(".bias") or ".ln_" in n or n.startswith("ln_f") for n in no_decay)


def test_gpt2_initialisation() -> None:
    spec = gpt(vocab=300, n_layer=4, d_model=64, n_head=4, seq=16)
    w = spec.init(1)
    assert w["wte.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert w["h.0.attn.qkv.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert w["h.0.mlp.fc.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert w["h.0.attn.proj.weight"].std() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert w["h.0.mlp.proj.weight"].std() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert np.all(w["h.1.ln_1.weight"] == 1) and np.all(w["h.1.ln_1.bias"] == 0)


def test_attention_equals_the_textbook_loop() -> None:
    rng = np.random.default_rng(3)
    layer, d = Attention(heads=2, qkv_bias=False, bias=False), 8  # head size 4: scores scaled by 1/2
    x = rng.normal(size=(1, 5, d))
    w = {"qkv.weight": rng.normal(size=(d, 3 * d)), "proj.weight": np.eye(d)}
    out = layer.reference(w, x)
    q, k, v = (x[0] @ w["qkv.weight"][:, i * d:(i + 1) * d] for i in range(3))
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        for i in range(5):
            s = np.array([q[i, cols] @ k[j, cols] / 2.0 for j in range(i + 1)])
            p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            np.testing.assert_allclose(out[0, i, cols], p @ v[: i + 1, cols], atol=1e-12)


@given(offset=st.integers(0, 20), m=st.integers(0, 10), n=st.integers(0, 10))
def test_rotary_scores_depend_only_on_relative_position(offset, m, n) -> None:
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 8))
    t = 40

    cos, sin = rope_tables(t, 8, 10000.0)

    def score(pos_q: int, pos_k: int) -> float:
        qs, ks = np.zeros((1, 1, t, 8)), np.zeros((1, 1, t, 8))
        qs[0, 0, pos_q], ks[0, 0, pos_k] = q, k
        return float(rotate_half(qs, cos, sin)[0, 0, pos_q] @ rotate_half(ks, cos, sin)[0, 0, pos_k])

    assert score(m, n) == pytest.approx(score(m + offset, n + offset), abs=1e-9)


def test_layer_norm_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(3, 7))
    scale, bias = np.linspace(0.5, 1.5, 7), np.linspace(-1, 1, 7)
    want = torch.nn.functional.layer_norm(torch.from_numpy(x), (7,), torch.from_numpy(scale),
                                          torch.from_numpy(bias), eps=1e-5).numpy()
    np.testing.assert_allclose(Norm().reference({"weight": scale, "bias": bias}, x), want, atol=1e-12)


def test_bad_gpt_configs_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"model: d_model \(10\) must be divisible by n_head \(4\)"):
        gpt(d_model=10, n_head=4)
    with pytest.raises(ConfigError, match=r"model\.max_seq_len: 16 is shorter"):
        gpt(seq=32)
    with pytest.raises(ConfigError, match="needs token sequences"):
        build_model("gpt", {}, DataInfo("classification", (8, 8, 1), 10))


def test_flops_per_token_counts_the_matmuls() -> None:
    params = GPTParams(n_layer=2, d_model=8, n_head=2)
    per_layer = 8 * 24 + 8 * 8 + 2 * 8 * 32
    assert flops_per_token(params, 11, 16) == 6 * (2 * per_layer + 8 * 11) + 12 * 2 * 16 * 8


def test_a_one_block_gpt_keeps_the_block_names() -> None:
    """``h.0...`` as in a deeper gpt (and in its hand-written checkpoints, and a one-layer GPT-2's file)."""
    names = [p.name for p in gpt(n_layer=1).table]
    assert "h.0.ln_1.weight" in names and "h.0.attn.qkv.weight" in names and "h.0.mlp.proj.bias" in names
    assert not [n for n in names if n.startswith("h.") and not n.startswith("h.0.")]
