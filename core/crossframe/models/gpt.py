"""``gpt``: a decoder-only transformer (GPT-2 style): its params and its FLOPs per token.

The model itself is a graph of neutral layers, built by :func:`crossframe.nn.presets.build_gpt`.

Pre-LayerNorm blocks ``h = h + attn(ln_1(h)); h = h + mlp(ln_2(h))``, GELU (tanh approximation),
learned positions (or rotary embeddings with ``rope: true``), a final LayerNorm, and logits from
the token embedding (``tied_embeddings: true``) or a separate ``lm_head``. Initialisation follows
GPT-2: normal(0, 0.02) weights, with the residual projections scaled by ``1 / sqrt(2 n_layer)``.

Inputs are int token ids ``[B, T]`` with ``T <= max_seq_len``; outputs are logits ``[B, T, vocab]``.
Rotary embeddings rotate the two halves of each head (``x1, x2 -> x1 cos - x2 sin, x2 cos + x1 sin``)
with frequencies ``base ** (-2i / head_dim)``. ``low_rank`` factorises the blocks' linears
(``h.{i}.attn.qkv``, ``h.{i}.attn.proj``, ``h.{i}.mlp.fc``, ``h.{i}.mlp.proj``) into two factors.
Canonical names follow the graph's paths: ``wte.weight``, ``wpe.weight``, ``h.{i}.ln_1.weight``, ...
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationInfo, field_validator, model_validator

from crossframe.models.spec import (
    LowRank,
    LowRankModelParams,
    check_low_rank_layers,
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
        if not {"n_layer", "d_model", "d_ff", "tied_embeddings"} <= set(data):
            return value  # an earlier field failed; that error is the one reported
        dims = linear_dims(data["n_layer"], data["d_model"], data["d_ff"])
        check_low_rank_layers(value, [*dims, *([] if data["tied_embeddings"] else ["lm_head"])])
        return check_low_rank_layers({k: r for k, r in value.items() if k in dims}, dims) | value

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
