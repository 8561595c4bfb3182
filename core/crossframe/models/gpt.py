"""``gpt``: a decoder-only transformer (GPT-2 style), its canonical table and numpy reference.

Pre-LayerNorm blocks ``h = h + attn(ln_1(h)); h = h + mlp(ln_2(h))``, GELU (tanh approximation),
learned positions (or rotary embeddings with ``rope: true``), a final LayerNorm, and logits from
the token embedding (``tied_embeddings: true``) or a separate ``lm_head``. Initialisation follows
GPT-2: normal(0, 0.02) weights, with the residual projections scaled by ``1 / sqrt(2 n_layer)``.

Inputs are int token ids ``[B, T]`` with ``T <= max_seq_len``; outputs are logits ``[B, T, vocab]``.
Rotary embeddings rotate the two halves of each head (``x1, x2 -> x1 cos - x2 sin, x2 cos + x1 sin``)
with frequencies ``base ** (-2i / head_dim)``. ``low_rank`` factorises the blocks' linears
(``h.{i}.attn.qkv``, ``h.{i}.attn.proj``, ``h.{i}.mlp.fc``, ``h.{i}.mlp.proj``) into two factors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from pydantic import ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationInfo, field_validator, model_validator

from crossframe.data.dataset import DataInfo
from crossframe.errors import ConfigError
from crossframe.models import reference as ref
from crossframe.models.spec import (
    LowRank,
    LowRankModelParams,
    ModelSpec,
    ParamSpec,
    check_low_rank,
    check_low_rank_layers,
    dense_apply,
    dense_kernel_specs,
)

INIT_STD = 0.02
LN_EPS = 1e-5
#: the linears of a block that ``low_rank`` can factorise, under ``h.{i}.``
BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


class GPTParams(LowRankModelParams):
    """Params of ``model: {name: gpt}`` (the vocabulary size comes from the tokenizer)."""

    model_config = ConfigDict(extra="forbid")
    n_layer: PositiveInt = 4
    n_head: PositiveInt = 4
    d_model: PositiveInt = 128
    d_ff: PositiveInt | None = Field(None, description="default 4 * d_model")
    max_seq_len: PositiveInt = 256
    dropout: NonNegativeFloat = Field(0.0, lt=1.0)
    tied_embeddings: bool = True
    rope: bool = Field(False, description="rotary position embeddings instead of learned positions")
    rope_base: float = Field(10000.0, gt=1.0)
    low_rank: LowRank

    @field_validator("low_rank")
    @classmethod
    def _known_layers(cls, value: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        data = info.data
        if not {"n_layer", "d_model", "d_ff"} <= set(data):
            return value  # an earlier field failed; that error is the one reported
        return check_low_rank_layers(value, linear_dims(data["n_layer"], data["d_model"], data["d_ff"]))

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` of every block linear, by layer prefix."""
        return linear_dims(self.n_layer, self.d_model, self.d_ff)

    @model_validator(mode="after")
    def _heads_divide(self) -> GPTParams:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.rope and (self.d_model // self.n_head) % 2:
            raise ValueError("rope needs an even head size (d_model / n_head)")
        return self


def linear_dims(n_layer: int, d_model: int, d_ff: int | None) -> dict[str, tuple[int, int]]:
    """``(in, out)`` of every block linear of a GPT, by layer prefix (``h.{i}.attn.qkv``, ...)."""
    d, ff = d_model, d_ff or 4 * d_model
    shapes = {"attn.qkv": (d, 3 * d), "attn.proj": (d, d), "mlp.fc": (d, ff), "mlp.proj": (ff, d)}
    return {f"h.{i}.{lin}": shapes[lin] for i in range(n_layer) for lin in BLOCK_LINEARS}


def _table(p: GPTParams, vocab: int) -> list[ParamSpec]:
    d, ff = p.d_model, p.d_ff or 4 * p.d_model
    residual_std = INIT_STD / math.sqrt(2 * p.n_layer)
    table = [ParamSpec("wte", (vocab, d), "embedding", "normal", INIT_STD)]
    if not p.rope:
        table.append(ParamSpec("wpe", (p.max_seq_len, d), "embedding", "normal", INIT_STD))

    def norm(prefix: str) -> list[ParamSpec]:
        return [ParamSpec(f"{prefix}.weight", (d,), "norm_scale", "ones", decay=False),
                ParamSpec(f"{prefix}.bias", (d,), "norm_bias", decay=False)]

    def dense(prefix: str, fan_in: int, fan_out: int, std: float) -> list[ParamSpec]:
        return [*dense_kernel_specs(prefix, fan_in, fan_out, std, p.low_rank.get(prefix)),
                ParamSpec(f"{prefix}.bias", (fan_out,), "bias", decay=False)]

    for i in range(p.n_layer):
        h = f"h.{i}"
        table += norm(f"{h}.ln_1") + dense(f"{h}.attn.qkv", d, 3 * d, INIT_STD)
        table += dense(f"{h}.attn.proj", d, d, residual_std) + norm(f"{h}.ln_2")
        table += dense(f"{h}.mlp.fc", d, ff, INIT_STD) + dense(f"{h}.mlp.proj", ff, d, residual_std)
    table += norm("ln_f")
    if not p.tied_embeddings:
        table.append(ParamSpec("lm_head.weight", (d, vocab), "dense", "normal", INIT_STD))
    return table


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis (eps 1e-5, biased variance)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * scale + bias


def rotary(x: np.ndarray, base: float) -> np.ndarray:
    """Rotary position embedding of ``x`` ``[B, H, T, hd]`` (rotate-half convention)."""
    t, hd = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Softmax(q k^T / sqrt(hd)) v with a causal mask; ``[B, H, T, hd]`` in and out."""
    t, hd = q.shape[-2], q.shape[-1]
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(hd)
    scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v


def build_gpt(params: GPTParams, info: DataInfo) -> ModelSpec:
    """The spec of a GPT whose vocabulary is ``info.num_outputs`` and context ``info.input_shape[0]``."""
    if len(info.input_shape) != 1:
        raise ConfigError(f"model.name: 'gpt' needs token sequences; the dataset gives inputs of shape "
                          f"{info.input_shape}")
    if info.input_shape[0] > params.max_seq_len:
        raise ConfigError(f"model.max_seq_len: {params.max_seq_len} is shorter than the data's sequences "
                          f"({info.input_shape[0]} tokens)")
    vocab = info.num_outputs
    n_head, d = params.n_head, params.d_model
    check_low_rank(params.low_rank, params.linear_dims())

    def forward(w: Mapping[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        b, t = tokens.shape
        h = w["wte"].astype(np.float64)[tokens]
        if not params.rope:
            h = h + w["wpe"].astype(np.float64)[:t]
        for i in range(params.n_layer):
            p = f"h.{i}"
            a = layer_norm(h, w[f"{p}.ln_1.weight"], w[f"{p}.ln_1.bias"])
            qkv = dense_apply(w, f"{p}.attn.qkv", a)
            q, k, v = (part.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3)
                       for part in np.split(qkv, 3, axis=-1))
            if params.rope:
                q, k = rotary(q, params.rope_base), rotary(k, params.rope_base)
            att = causal_attention(q, k, v).transpose(0, 2, 1, 3).reshape(b, t, d)
            h = h + dense_apply(w, f"{p}.attn.proj", att)
            m = layer_norm(h, w[f"{p}.ln_2.weight"], w[f"{p}.ln_2.bias"])
            m = ref.activation("gelu", dense_apply(w, f"{p}.mlp.fc", m))
            h = h + dense_apply(w, f"{p}.mlp.proj", m)
        h = layer_norm(h, w["ln_f.weight"], w["ln_f.bias"])
        head = w["wte"].T if params.tied_embeddings else w["lm_head.weight"]
        return h @ head.astype(np.float64)

    return ModelSpec("gpt", params.model_dump(), info, _table(params, vocab), forward)


def flops_per_token(params: GPTParams, vocab: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), the PaLM appendix-B estimate:
    6 N + 12 L T d, with N the non-embedding parameters plus the output projection (a factorised
    linear counts its two factors)."""
    d = params.d_model
    n = d * vocab
    for prefix, (fan_in, fan_out) in params.linear_dims().items():
        rank = params.low_rank.get(prefix)
        n += fan_in * fan_out if rank is None else rank * (fan_in + fan_out)
    return 6.0 * n + 12.0 * params.n_layer * seq_len * d
