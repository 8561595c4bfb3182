"""Pure JAX forward functions for the core's architectures, and native <-> canonical conversion.

The native parameters are a plain pytree: a dict from canonical name to ``jax.Array``. The
canonical layouts are JAX's own (dense ``[in, out]`` for ``x @ W``; conv kernels HWIO on NHWC
data through ``lax.conv_general_dilated``; embeddings ``[vocab, d]``), so conversion is the
identity; only placement on the device and exact float32 host copies happen here. A factorised
(``low_rank``) dense layer has ``<prefix>.weight_u`` ``[in, r]`` and ``<prefix>.weight_v``
``[r, out]`` instead of ``<prefix>.weight`` and runs as two matmuls.

Every forward is ``fn(params, x, *, train=False, rng=None)``; only ``gpt`` uses ``train`` and
``rng`` (dropout). ``gpt`` also has a cached path for generation: :func:`gpt_prefill` and
:func:`gpt_decode`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crossframe.errors import CapabilityError
from crossframe.models.gpt import LN_EPS
from crossframe.models.spec import ModelSpec, Params

Forward = Callable[..., jax.Array]  # fn(params, x, *, train=False, rng=None) -> outputs

def _precision(dtype: Any) -> Any:
    """HIGHEST for float32 (no silent TF32 / bf16 passes on GPUs and TPUs), the default otherwise."""
    return lax.Precision.HIGHEST if dtype is None else lax.Precision.DEFAULT


def make_forward(spec: ModelSpec, dtype: Any = None, *, remat: bool = False,
                 attention: str | None = None) -> Forward:
    """A pure ``fn(params, x, *, train=False, rng=None) -> outputs`` for ``spec``.

    ``dtype`` is the compute dtype (None: fp32). With a compute dtype, parameters and inputs are
    cast inside the function (the master weights stay float32) and a graph's outputs (``mlp`` and
    ``cnn`` are graphs) come back in that dtype; ``gpt`` keeps its residual stream, LayerNorms and logits in
    float32. ``remat`` (``gpt`` only) wraps each block in ``jax.checkpoint``; ``attention`` is the
    ``jax.nn.dot_product_attention`` implementation (``gpt`` only).
    """
    if spec.graph is not None:  # neutral layers: one lowering for every graph
        from crossframe_jax.lowering import make_forward as lower

        return lower(spec.graph, dtype)
    if spec.name == "gpt":
        return partial(gpt_forward, config=GPTConfig.from_spec(spec, dtype, remat, attention))
    raise CapabilityError(f"model.name: backend 'jax' has no native '{spec.name}'")


def to_native(layout: str, value: np.ndarray) -> np.ndarray:
    """Canonical layout -> JAX layout: the identity for every layout."""
    return value


def to_canonical(layout: str, value: np.ndarray) -> np.ndarray:
    """JAX layout -> canonical layout: the identity for every layout."""
    return value


def place(arrays: Mapping[str, np.ndarray], device: Any) -> dict[str, jax.Array]:
    """Fresh float32 device arrays (owned by JAX, so they can be donated) in canonical order."""
    host = {k: np.array(v, dtype=np.float32, copy=True) for k, v in arrays.items()}
    return jax.device_put(host, device)


def load_canonical(spec: ModelSpec, weights: Params, device: Any) -> dict[str, jax.Array]:
    """Canonical numpy weights as the native pytree on ``device``, checked against the table."""
    spec.check_weights(weights)
    return place({p.name: to_native(p.layout, weights[p.name]) for p in spec.table}, device)


def host_copy(values: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    """Exact float32 numpy copies of device arrays (one transfer for the whole dict)."""
    host = jax.device_get(dict(values))
    return {k: np.array(v, dtype=np.float32, copy=True) for k, v in host.items()}


def export_canonical(params: Mapping[str, jax.Array], spec: ModelSpec) -> Params:
    """The native pytree as canonical float32 numpy arrays, in table order."""
    host = host_copy(params)
    return {p.name: to_canonical(p.layout, host[p.name]) for p in spec.table}


# --------------------------------------------------------------------------- gpt


@dataclass(frozen=True)
class GPTConfig:
    """Static facts of a ``gpt`` forward: the architecture (``spec.params``) and how to run it.

    ``dtype`` is the compute dtype (None: float32 with ``Precision.HIGHEST``), ``remat`` wraps each
    block in ``jax.checkpoint`` and ``attention`` is the ``implementation`` passed to
    ``jax.nn.dot_product_attention`` (None: XLA's; ``"cudnn"``: the fused kernel, GPUs in bf16/fp16).
    """

    n_layer: int
    n_head: int
    d_model: int
    max_seq_len: int
    dropout: float = 0.0
    tied_embeddings: bool = True
    rope: bool = False
    rope_base: float = 10000.0
    dtype: Any = None
    remat: bool = False
    attention: str | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec, dtype: Any = None, remat: bool = False,
                  attention: str | None = None) -> GPTConfig:
        """The config of ``spec`` (a ``gpt``), run in ``dtype``."""
        p = spec.params
        return cls(p["n_layer"], p["n_head"], p["d_model"], p["max_seq_len"], float(p["dropout"]),
                   bool(p["tied_embeddings"]), bool(p["rope"]), float(p["rope_base"]), dtype, remat, attention)

    @property
    def head_dim(self) -> int:
        """``d_model / n_head``."""
        return self.d_model // self.n_head

    @property
    def cache_dtype(self) -> Any:
        """The dtype of keys and values (and of the KV cache)."""
        return jnp.float32 if self.dtype is None else self.dtype

    def rope_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """``cos, sin`` ``[max_seq_len, head_dim / 2]`` float32, computed in float64 like the reference."""
        return _rope_tables(self.max_seq_len, self.head_dim, self.rope_base)


@lru_cache(maxsize=16)
def _rope_tables(max_seq_len: int, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(max_seq_len, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """LayerNorm over the last axis (eps 1e-5, biased variance), always computed in float32."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + LN_EPS) * scale + bias


def rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half rotary embedding of ``x`` ``[B, T, H, hd]``; ``cos``, ``sin`` are ``[T, hd / 2]``."""
    half = x.shape[-1] // 2
    cos, sin = cos[:, None, :].astype(x.dtype), sin[:, None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout: zero with probability ``rate``, scale the rest by ``1 / (1 - rate)``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


def _mm(x: jax.Array, w: jax.Array, b: jax.Array | None, cfg: GPTConfig) -> jax.Array:
    """``x @ w + b`` in the compute dtype (float32 with HIGHEST precision by default)."""
    if cfg.dtype is not None:
        x, w = x.astype(cfg.dtype), w.astype(cfg.dtype)
        b = None if b is None else b.astype(cfg.dtype)
    y = jnp.matmul(x, w, precision=_precision(cfg.dtype))
    return y if b is None else y + b


def _linear(lp: Mapping[str, jax.Array], name: str, x: jax.Array, cfg: GPTConfig) -> jax.Array:
    """Block linear ``name`` (``attn.qkv``, ...): ``x @ W + b``, or ``(x @ U) @ V + b`` when factorised."""
    if f"{name}.weight" in lp:
        return _mm(x, lp[f"{name}.weight"], lp[f"{name}.bias"], cfg)
    return _mm(_mm(x, lp[f"{name}.weight_u"], None, cfg), lp[f"{name}.weight_v"], lp[f"{name}.bias"], cfg)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, cfg: GPTConfig, mask: jax.Array | None = None
            ) -> jax.Array:
    """``jax.nn.dot_product_attention`` on ``[B, T, H, hd]``: causal without ``mask``, else masked."""
    kwargs: dict[str, Any] = {"is_causal": True} if mask is None else {"mask": mask}
    if cfg.dtype is None:  # float32: both einsums at HIGHEST (no TF32 on GPUs)
        with jax.default_matmul_precision("highest"):
            return jax.nn.dot_product_attention(q, k, v, **kwargs)
    if cfg.attention is not None and mask is None:
        try:  # the fused kernel where the platform has it; XLA's otherwise
            return jax.nn.dot_product_attention(q, k, v, implementation=cfg.attention, **kwargs)
        except Exception:  # unsupported shape, dtype or cuDNN version
            pass
    if q.dtype == jnp.float16:
        # XLA's path asks for an F16_F16_F32 dot, which the CPU cannot lower: attend in float32
        out = jax.nn.dot_product_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                                           **kwargs)
        return out.astype(jnp.float16)
    return jax.nn.dot_product_attention(q, k, v, **kwargs)


def _qkv(lp: Mapping[str, jax.Array], h: jax.Array, cos: jax.Array | None, sin: jax.Array | None,
         cfg: GPTConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries, keys and values ``[B, T, H, hd]`` of ``ln_1(h)``, rotated when ``cos``/``sin`` are given."""
    b, t, _ = h.shape
    a = layer_norm(h, lp["ln_1.weight"], lp["ln_1.bias"])
    qkv = _linear(lp, "attn.qkv", a, cfg)
    q, k, v = (part.reshape(b, t, cfg.n_head, cfg.head_dim) for part in jnp.split(qkv, 3, axis=-1))
    if cos is not None and sin is not None:
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
    return q, k, v


def _finish_block(lp: Mapping[str, jax.Array], h: jax.Array, att: jax.Array, cfg: GPTConfig,
                  key: jax.Array | None) -> jax.Array:
    """``h + drop(proj(att))``, then ``h + drop(mlp(ln_2(h)))``; the residual stream stays float32."""
    b, t = att.shape[:2]
    out = _linear(lp, "attn.proj", att.reshape(b, t, cfg.d_model), cfg)
    if key is not None:
        out = dropout(out, cfg.dropout, jax.random.fold_in(key, 0))
    h = h + out.astype(jnp.float32)
    m = layer_norm(h, lp["ln_2.weight"], lp["ln_2.bias"])
    m = jax.nn.gelu(_linear(lp, "mlp.fc", m, cfg), approximate=True)
    m = _linear(lp, "mlp.proj", m, cfg)
    if key is not None:
        m = dropout(m, cfg.dropout, jax.random.fold_in(key, 1))
    return h + m.astype(jnp.float32)


def _block(lp: Mapping[str, jax.Array], h: jax.Array, cos: jax.Array | None, sin: jax.Array | None,
           key: jax.Array | None, cfg: GPTConfig) -> jax.Array:
    """One pre-LN transformer block on ``h`` ``[B, T, d]`` (positions ``0..T-1``)."""
    q, k, v = _qkv(lp, h, cos, sin, cfg)
    return _finish_block(lp, h, _attend(q, k, v, cfg), cfg, key)


def _layer(params: Mapping[str, jax.Array], i: int) -> dict[str, jax.Array]:
    """Block ``i``'s parameters keyed within the block (``ln_1.weight``, ``attn.qkv.weight`` or its factors, ...)."""
    prefix = f"h.{i}."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _embed(params: Mapping[str, jax.Array], tokens: jax.Array, start: Any, cfg: GPTConfig) -> jax.Array:
    """Token (plus learned position) embeddings for positions ``start..start+T``, float32."""
    h = jnp.take(params["wte"], tokens, axis=0).astype(jnp.float32)
    if not cfg.rope:
        h = h + lax.dynamic_slice_in_dim(params["wpe"], start, tokens.shape[1], axis=0)
    return h


def _rope(start: Any, t: int, cfg: GPTConfig) -> tuple[jax.Array | None, jax.Array | None]:
    if not cfg.rope:
        return None, None
    cos, sin = cfg.rope_tables()
    return (lax.dynamic_slice_in_dim(jnp.asarray(cos), start, t, axis=0),
            lax.dynamic_slice_in_dim(jnp.asarray(sin), start, t, axis=0))


def _head(params: Mapping[str, jax.Array], h: jax.Array, cfg: GPTConfig) -> jax.Array:
    """``ln_f`` then logits ``h @ wte.T`` (tied) or ``h @ lm_head``, float32 accumulation."""
    h = layer_norm(h, params["ln_f.weight"], params["ln_f.bias"])
    w = params["wte"].T if cfg.tied_embeddings else params["lm_head.weight"]
    if cfg.dtype is not None:
        h, w = h.astype(cfg.dtype), w.astype(cfg.dtype)
    return jnp.matmul(h, w, precision=_precision(cfg.dtype), preferred_element_type=jnp.float32)


def _check_length(t: int, cfg: GPTConfig) -> None:
    if t > cfg.max_seq_len:
        raise ValueError(f"gpt: sequences of {t} tokens are longer than model.max_seq_len ({cfg.max_seq_len})")


def gpt_forward(params: Mapping[str, jax.Array], tokens: jax.Array, *, config: GPTConfig, train: bool = False,
                rng: jax.Array | None = None) -> jax.Array:
    """Logits ``[B, T, vocab]`` (float32) of int token ids ``[B, T]`` over the canonical parameter dict.

    Dropout (after the embeddings, the attention output projection and the MLP) applies only when
    ``train`` and ``config.dropout > 0``, drawing from ``rng`` (a ``jax.random`` key); each block
    uses ``fold_in(rng, layer + 1)``, the embeddings ``fold_in(rng, 0)``.
    """
    cfg = config
    tokens = tokens.astype(jnp.int32)
    t = tokens.shape[1]
    _check_length(t, cfg)
    drop = train and cfg.dropout > 0.0
    if drop and rng is None:
        raise ValueError("gpt_forward: train=True with dropout needs an rng key")
    h = _embed(params, tokens, 0, cfg)
    if drop:
        h = dropout(h, cfg.dropout, jax.random.fold_in(rng, 0))
    cos, sin = _rope(0, t, cfg)
    block = jax.checkpoint(_block, static_argnums=(5,)) if cfg.remat else _block
    for i in range(cfg.n_layer):
        key = jax.random.fold_in(rng, i + 1) if drop else None
        h = block(_layer(params, i), h, cos, sin, key, cfg)
    return _head(params, h, cfg)


# --------------------------------------------------------------------------- gpt with a KV cache

KVCache = tuple[tuple[jax.Array, jax.Array], ...]  # per layer: keys, values [B, max_seq_len, H, hd]


def gpt_prefill(params: Mapping[str, jax.Array], tokens: jax.Array, *, config: GPTConfig
                ) -> tuple[jax.Array, KVCache]:
    """Run the prompt ``[B, T0]`` once (eval mode): last-position logits ``[B, vocab]`` and a filled cache.

    The cache holds ``max_seq_len`` positions per layer (fixed size, so one compiled decode step
    serves every position); positions ``T0..`` are zeros until :func:`gpt_decode` writes them.
    """
    cfg = config
    tokens = tokens.astype(jnp.int32)
    b, t = tokens.shape
    _check_length(t, cfg)
    h = _embed(params, tokens, 0, cfg)
    cos, sin = _rope(0, t, cfg)
    cache = []
    empty = jnp.zeros((b, cfg.max_seq_len, cfg.n_head, cfg.head_dim), cfg.cache_dtype)
    for i in range(cfg.n_layer):
        lp = _layer(params, i)
        q, k, v = _qkv(lp, h, cos, sin, cfg)
        cache.append((lax.dynamic_update_slice(empty, k.astype(cfg.cache_dtype), (0, 0, 0, 0)),
                      lax.dynamic_update_slice(empty, v.astype(cfg.cache_dtype), (0, 0, 0, 0))))
        h = _finish_block(lp, h, _attend(q, k, v, cfg), cfg, None)
    return _head(params, h[:, -1:], cfg)[:, 0], tuple(cache)


def gpt_decode(params: Mapping[str, jax.Array], token: jax.Array, pos: jax.Array, cache: KVCache, *,
               config: GPTConfig) -> tuple[jax.Array, KVCache]:
    """One new token ``[B]`` at position ``pos`` (a traced int32 scalar) against ``cache``.

    Writes its keys and values at ``pos`` (``lax.dynamic_update_slice``) and attends to positions
    ``0..pos``; returns its logits ``[B, vocab]`` and the updated cache.
    """
    cfg = config
    tokens = token.astype(jnp.int32).reshape(-1, 1)
    pos = jnp.asarray(pos, jnp.int32)
    h = _embed(params, tokens, pos, cfg)
    cos, sin = _rope(pos, 1, cfg)
    visible = (jnp.arange(cfg.max_seq_len) <= pos)[None, None, None, :]  # [1, 1, 1, S]
    new_cache = []
    for i in range(cfg.n_layer):
        lp = _layer(params, i)
        q, k, v = _qkv(lp, h, cos, sin, cfg)
        ck, cv = cache[i]
        ck = lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, pos, 0, 0))
        cv = lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, pos, 0, 0))
        new_cache.append((ck, cv))
        h = _finish_block(lp, h, _attend(q.astype(ck.dtype), ck, cv, cfg, mask=visible), cfg, None)
    return _head(params, h, cfg)[:, 0], tuple(new_cache)
