"""Native ``nn.Module`` s for the hand-written ``gpt`` (graphs, ``mlp`` and ``cnn`` included, lower through
:mod:`crossframe_torch.lowering`) and exact native <-> canonical conversion.

Native parameter names equal the canonical ones; only layouts differ (torch keeps dense weights
as ``[out, in]`` and conv kernels as OIHW on NCHW data; embeddings and norms are unchanged). A
factorised (``low_rank``) layer is a :class:`LowRankLinear` whose ``weight_u`` ``[r, in]`` and
``weight_v`` ``[out, r]`` are the canonical factors in torch's dense layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from crossframe.errors import CapabilityError
from crossframe.models.gpt import LN_EPS
from crossframe.models.spec import ModelSpec, Params


class LowRankLinear(nn.Module):
    """A dense layer factorised as ``x @ U @ V + b``: two matmuls through rank ``r``.

    Parameters ``weight_u`` ``[r, in]`` and ``weight_v`` ``[out, r]`` (torch's ``[out, in]``
    convention for each factor) and ``bias`` ``[out]``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.weight_u = nn.Parameter(torch.empty(rank, in_features))
        self.weight_v = nn.Parameter(torch.empty(out_features, rank))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x @ U) @ V + b``."""
        return F.linear(F.linear(x, self.weight_u), self.weight_v, self.bias)


def linear(in_features: int, out_features: int, rank: int | None = None, bias: bool = True) -> nn.Module:
    """``nn.Linear``, or a :class:`LowRankLinear` of ``rank``."""
    if rank is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return LowRankLinear(in_features, out_features, rank, bias=bias)


# ---------------------------------------------------------------------- gpt


@dataclass
class KVCache:
    """Per-layer keys and values ``[B, H, max_seq_len, head_dim]``, allocated on first write."""

    max_seq_len: int
    k: list[torch.Tensor | None] = field(default_factory=list)
    v: list[torch.Tensor | None] = field(default_factory=list)

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` ``[B, H, t, hd]`` at positions ``start..start+t`` and return keys/values so far."""
        while len(self.k) <= layer:
            self.k.append(None)
            self.v.append(None)
        if self.k[layer] is None:
            b, h, _, hd = k.shape
            self.k[layer] = k.new_empty(b, h, self.max_seq_len, hd)
            self.v[layer] = v.new_empty(b, h, self.max_seq_len, hd)
        ck, cv = self.k[layer], self.v[layer]
        assert ck is not None and cv is not None
        end = start + k.shape[2]
        ck[:, :, start:end] = k
        cv[:, :, start:end] = v
        return ck[:, :, :end], cv[:, :, :end]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half convention: ``[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]``.

    ``cos`` and ``sin`` are ``[t, hd]`` (each half-table repeated twice).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through fused ``scaled_dot_product_attention``."""

    def __init__(self, d: int, n_head: int, dropout: float, qkv_rank: int | None = None,
                 proj_rank: int | None = None) -> None:
        super().__init__()
        self.qkv = linear(d, 3 * d, qkv_rank)
        self.proj = linear(d, d, proj_rank)
        self.n_head, self.dropout = n_head, dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        """``x`` ``[B, t, d]`` at positions ``start..start+t``; ``rope`` is ``(cos, sin)`` for those positions."""
        b, t, d = x.shape
        q, k, v = (part.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
                   for part in self.qkv(x).split(d, dim=2))
        if rope is not None:
            cos, sin = (r.to(q.dtype) for r in rope)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            k, v = cache.update(layer, start, k, v)
            if t == 1:
                causal = False  # one new query sees every cached position
            elif start > 0:  # a chunk after a prefix: queries see the prefix and their own past
                causal = False
                mask = (torch.arange(t, device=x.device)[:, None] + start
                        >= torch.arange(start + t, device=x.device)[None, :])
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class FeedForward(nn.Module):
    """The block's MLP: dense, GELU (tanh approximation), dense, dropout."""

    def __init__(self, d: int, ff: int, dropout: float, fc_rank: int | None = None,
                 proj_rank: int | None = None) -> None:
        super().__init__()
        self.fc = linear(d, ff, fc_rank)
        self.proj = linear(ff, d, proj_rank)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``proj(gelu(fc(x)))`` with dropout."""
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: ``h + attn(ln_1(h))``, then ``h + mlp(ln_2(h))``."""

    def __init__(self, d: int, n_head: int, ff: int, dropout: float, ranks: dict[str, int] | None = None) -> None:
        super().__init__()
        rank = (ranks or {}).get  # by linear within the block: attn.qkv, attn.proj, mlp.fc, mlp.proj
        self.ln_1 = nn.LayerNorm(d, eps=LN_EPS)
        self.attn = CausalSelfAttention(d, n_head, dropout, rank("attn.qkv"), rank("attn.proj"))
        self.ln_2 = nn.LayerNorm(d, eps=LN_EPS)
        self.mlp = FeedForward(d, ff, dropout, rank("mlp.fc"), rank("mlp.proj"))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        """The block on ``x`` ``[B, t, d]``."""
        x = x + self.attn(self.ln_1(x), rope, cache, layer, start)
        return x + self.mlp(self.ln_2(x))


def _block_ranks(low_rank: dict[str, int], layer: int) -> dict[str, int]:
    """The ranks of block ``layer``'s factorised linears, keyed within the block (``attn.qkv``, ...)."""
    prefix = f"h.{layer}."
    return {k[len(prefix):]: r for k, r in low_rank.items() if k.startswith(prefix)}


class GPT(nn.Module):
    """``gpt``: a decoder-only transformer on int token ids ``[B, T]``, logits ``[B, T, vocab]``.

    Parameters are named exactly as in the canonical table (``wte``, ``wpe``, ``h.{i}.ln_1.weight``,
    ``h.{i}.attn.qkv.weight``, ..., ``ln_f.*``, ``lm_head.weight``). Rotary tables are
    non-persistent buffers, so they are neither parameters nor checkpointed.

    Dropout (as in nanoGPT: on the embeddings, the attention weights inside SDPA, and the
    attention and MLP outputs) draws from torch's generator, seeded by ``TrainSetup.seed``: runs
    repeat on this backend, but the masks cannot match another backend's.
    """

    def __init__(self, vocab: int, n_layer: int, n_head: int, d_model: int, d_ff: int | None,
                 max_seq_len: int, dropout: float = 0.0, tied_embeddings: bool = True, rope: bool = False,
                 rope_base: float = 10000.0, activation_checkpointing: bool = False,
                 low_rank: dict[str, int] | None = None) -> None:
        super().__init__()
        d, ff = d_model, d_ff or 4 * d_model
        low_rank = low_rank or {}
        self.max_seq_len = max_seq_len
        self.activation_checkpointing = activation_checkpointing
        self.wte = nn.Parameter(torch.empty(vocab, d))
        self.wpe = None if rope else nn.Parameter(torch.empty(max_seq_len, d))
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(d, n_head, ff, dropout, _block_ranks(low_rank, i)) for i in range(n_layer))
        self.ln_f = nn.LayerNorm(d, eps=LN_EPS)
        self.lm_head = None if tied_embeddings else nn.Linear(d, vocab, bias=False)
        if rope:
            hd = d // n_head
            inv_freq = rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
            angles = torch.arange(max_seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
            angles = torch.cat((angles, angles), dim=-1)  # [T, hd]: the same angle for both halves
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    def _embed(self, idx: torch.Tensor, start: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        t = idx.shape[1]
        if start + t > self.max_seq_len:
            raise ValueError(f"gpt: {start + t} positions exceed max_seq_len ({self.max_seq_len})")
        x = F.embedding(idx, self.wte)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe[start:start + t]
        else:
            rope = (self.rope_cos[start:start + t], self.rope_sin[start:start + t])
        return self.drop(x), rope

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_f(x)
        return F.linear(x, self.wte) if self.lm_head is None else self.lm_head(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` for token ids ``[B, T]`` (``T <= max_seq_len``)."""
        x, rope = self._embed(idx, 0)
        remat = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.h:
            x = checkpoint(block, x, rope, use_reentrant=False) if remat else block(x, rope)
        return self._head(x)

    def forward_cached(self, idx: torch.Tensor, cache: KVCache, start: int, last_only: bool = False
                       ) -> torch.Tensor:
        """Logits for ``idx`` ``[B, t]`` at positions ``start..start+t``, reading and extending ``cache``.

        Equals the matching rows of :meth:`forward` on the whole sequence (up to float rounding).
        With ``last_only`` only the last position's logits are computed (``[B, 1, vocab]``).
        """
        x, rope = self._embed(idx, start)
        for i, block in enumerate(self.h):
            x = block(x, rope, cache, i, start)
        return self._head(x[:, -1:] if last_only else x)

    def new_cache(self) -> KVCache:
        """An empty KV cache for :meth:`forward_cached`."""
        return KVCache(self.max_seq_len)


def build_module(spec: ModelSpec, activation_checkpointing: bool = False) -> nn.Module:
    """The native module for ``spec`` (weights still to be loaded with :func:`load_canonical`)."""
    info, p, low_rank = spec.data_info, spec.params, spec.low_rank
    if spec.graph is not None:  # neutral layers: one lowering for every graph
        from crossframe_torch.lowering import build_module as lower

        if spec.graph.takes_ids:  # a decoder: no throwaway random init of its (large) tables, load_canonical fills it
            with torch.device("meta"):
                module = lower(spec.graph)
            return module.to_empty(device="cpu")
        return lower(spec.graph)
    if spec.name == "gpt":
        return GPT(info.num_outputs, p["n_layer"], p["n_head"], p["d_model"], p.get("d_ff"), p["max_seq_len"],
                   p.get("dropout", 0.0), p.get("tied_embeddings", True), p.get("rope", False),
                   p.get("rope_base", 10000.0), activation_checkpointing, low_rank)
    raise CapabilityError(f"model.name: backend 'torch' has no native '{spec.name}'")


def to_native(layout: str, value: torch.Tensor) -> torch.Tensor:
    """Canonical layout -> torch layout (``bias``, ``embedding`` and the norms are identical)."""
    if layout == "dense":
        return value.t()
    if layout == "conv2d":
        return value.permute(3, 2, 0, 1)  # HWIO -> OIHW
    return value


def to_canonical(layout: str, value: torch.Tensor) -> torch.Tensor:
    """Torch layout -> canonical layout."""
    if layout == "dense":
        return value.t()
    if layout == "conv2d":
        return value.permute(2, 3, 1, 0)  # OIHW -> HWIO
    return value


def native_parameters(module: nn.Module, spec: ModelSpec) -> dict[str, nn.Parameter]:
    """The module's parameters by canonical name, checked against the table."""
    params = dict(module.named_parameters())
    missing = [p.name for p in spec.table if p.name not in params]
    if missing or len(params) != len(spec.table):
        raise CapabilityError(f"model '{spec.name}': torch module does not match the canonical table ({missing})")
    return {p.name: params[p.name] for p in spec.table}


@torch.no_grad()
def load_canonical(module: nn.Module, spec: ModelSpec, weights: Params) -> None:
    """Copy canonical numpy weights into the module, exactly."""
    spec.check_weights(weights)
    native = native_parameters(module, spec)
    for p in spec.table:
        value = host_tensor(weights[p.name])
        native[p.name].copy_(to_native(p.layout, value))


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory (no copy, strides kept: a transposed view stays a view): bf16
    (``ml_dtypes``) through its 16-bit pattern, and a read-only array (a memory-mapped safetensors file) as is,
    since it is only read from."""
    import warnings

    array = np.asarray(array)
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if array.dtype.name == "bfloat16":
            return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(array)


@torch.no_grad()
def export_canonical(module: nn.Module, spec: ModelSpec) -> Params:
    """The module's weights as canonical float32 numpy arrays."""
    native = native_parameters(module, spec)
    return {p.name: to_canonical(p.layout, native[p.name].detach()).float().cpu().contiguous().numpy().copy()
            for p in spec.table}
