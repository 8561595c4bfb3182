"""A graph of neutral layers lowered once into one pure function for ``jax.jit``.

``fn(params, x, *, train=False, rng=None)`` over the canonical pytree (a dict by canonical name; JAX's
layouts are the canonical ones). The graph is walked while building a list of closures, and again only
while JAX traces them: the compiled step holds one XLA program, with no Python per layer. Dense layers
(and attention's ``qkv`` / ``proj``, a gated MLP's ``gate`` / ``up`` / ``down``) run as 2-D matmuls over
``[B * T, D]``, a factorised one (``low_rank``: ``weight_u``, ``weight_v``) as two; attention goes through
``jax.nn.dot_product_attention`` (causal, grouped-query heads natively; cuDNN's fused kernel on NVIDIA GPUs
in bf16/fp16, see :func:`attention_implementation`), or, in training with attention dropout, through the
same math written out so the weights can be dropped; convolutions and pooling are
``lax.conv_general_dilated`` and ``lax.reduce_window`` on NHWC. Dropout (layers and attention weights)
draws from ``rng`` folded with the layer's index. With ``remat`` each block of a repeated ``sequential`` is a
``jax.checkpoint`` in training: its activations are recomputed in the backward pass instead of kept.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crossframe.errors import CapabilityError
from crossframe.nn import layers as L
from crossframe.nn.graph import Graph, Node

BACKEND = "jax"
CONV_DIMS = ("NHWC", "HWIO", "NHWC")

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
}

Params = Mapping[str, jax.Array]
#: one lowered layer: ``fn(params, x, ctx) -> y``; ``ctx`` holds ``train``, ``rng`` and ``precision``
Fn = Callable[[Params, jax.Array, dict], jax.Array]


def _matmul(x: jax.Array, w: jax.Array, precision: Any) -> jax.Array:
    """``x @ w`` on the last axis as one 2-D matmul over ``[prod(leading), in]``."""
    lead = x.shape[:-1]
    y = jnp.matmul(x.reshape(-1, x.shape[-1]), w, precision=precision)
    return y.reshape(*lead, w.shape[-1])


def _linear(p: Params, prefix: str, x: jax.Array, ctx: dict, bias: bool) -> jax.Array:
    """Linear ``prefix`` (``attn.qkv.``, ...) on ``x``: ``x @ W + b`` with its LoRA adapter if it has one, or
    ``(x @ U) @ V + b`` when it is factorised (``weight_u``, ``weight_v``)."""
    if f"{prefix}weight" not in p:  # low rank: two thin matmuls, never the folded [in, out] kernel
        precision = ctx["precision"]
        y = _matmul(_matmul(x, p[f"{prefix}weight_u"], precision), p[f"{prefix}weight_v"], precision)
        return y + p[f"{prefix}bias"] if bias else y
    w = p[f"{prefix}weight"]
    scale = ctx.get("lora", {}).get(prefix[:-1])
    if scale is not None and ctx.get("lora_call") is not None:  # adapter dropout while training
        precision = ctx["precision"]
        kept = jnp.where(_keep(x, ctx, prefix[:-1]), x / (1.0 - ctx["lora_dropout"]), jnp.zeros_like(x))
        delta = _matmul(_matmul(kept, p[f"{prefix}lora_a"], precision), p[f"{prefix}lora_b"], precision)
        y = _matmul(x, w, precision) + scale * delta
        return y + p[f"{prefix}bias"] if bias else y
    if scale is not None:  # LoRA: W + scale * A @ B (crossframe.nn.lora)
        w = w + scale * jnp.matmul(p[f"{prefix}lora_a"], p[f"{prefix}lora_b"], precision=ctx["precision"])
    y = _matmul(x, w, ctx["precision"])
    return y + p[f"{prefix}bias"] if bias else y


def _mix(x: jax.Array) -> jax.Array:
    """:func:`crossframe.nn.lora_dropout.mix` in uint32 (products wrap to the same low 32 bits)."""
    from crossframe.nn.lora_dropout import MULTIPLIER

    x = x ^ (x >> 16)
    x = x * jnp.uint32(MULTIPLIER)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(MULTIPLIER)
    return x ^ (x >> 16)


def _keep(x: jax.Array, ctx: dict, name: str) -> jax.Array:
    """The core's keep mask of adapted linear ``name``'s input ``x`` in this forward call."""
    from crossframe.nn.lora_dropout import threshold

    base = _mix(_mix(jnp.uint32(ctx["lora_run"]) ^ ctx["lora_call"]) ^ jnp.uint32(ctx["lora_sites"][name]))
    j = jnp.arange(x.size, dtype=jnp.uint32)
    return (_mix(j + base) >= jnp.uint32(threshold(ctx["lora_dropout"]))).reshape(x.shape)


def _dense(node: Node) -> Fn:
    path, bias = _prefix(node), node.layer.bias

    def dense(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
        return _linear(p, path, x, ctx, bias)

    return dense


def _conv(node: Node) -> Fn:
    layer: L.Conv2D = node.layer
    path, pads = _prefix(node), [tuple(pad) for pad in layer.pads(node.in_shape)]
    stride, dilation = L._pair(layer.stride), L._pair(layer.dilation)

    def conv(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
        y = lax.conv_general_dilated(x, p[f"{path}weight"], stride, pads, rhs_dilation=dilation,
                                     dimension_numbers=CONV_DIMS, feature_group_count=layer.groups,
                                     precision=ctx["precision"])
        return y + p[f"{path}bias"] if layer.bias else y

    return conv


def _pool(node: Node) -> Fn:
    layer: L.Pool = node.layer
    if layer.kind_ == "global_max":
        return lambda p, x, ctx: jnp.max(x, axis=(1, 2))
    if layer.kind_ == "global_avg":
        return lambda p, x, ctx: jnp.mean(x, axis=(1, 2))
    (kh, kw), (sh, sw) = layer.window()
    window, strides = (1, kh, kw, 1), (1, sh, sw, 1)
    if layer.kind_ == "max":  # a Python -inf init lets JAX recognise the max monoid (differentiable)
        return lambda p, x, ctx: lax.reduce_window(x, -jnp.inf, lax.max, window, strides, "VALID")
    return lambda p, x, ctx: lax.reduce_window(x, 0.0, lax.add, window, strides, "VALID") / (kh * kw)


def _norm(node: Node) -> Fn:
    layer: L.Norm = node.layer
    path = _prefix(node)

    def norm(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
        h = x.astype(jnp.float32)  # statistics in float32 under mixed precision
        if layer.kind_ == "rms":
            y = h * lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + layer.eps) * p[f"{path}weight"]
        else:
            mu = jnp.mean(h, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(h - mu), axis=-1, keepdims=True)
            y = (h - mu) * lax.rsqrt(var + layer.eps) * p[f"{path}weight"] + p[f"{path}bias"]
        return y.astype(x.dtype)

    return norm


def _dropout(node: Node, index: int) -> Fn:
    rate = node.layer.rate

    def dropout(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
        if not ctx["train"] or rate == 0.0:
            return x
        if ctx["rng"] is None:
            raise ValueError(f"{node.where}: dropout in training needs an rng key")
        keep = jax.random.bernoulli(jax.random.fold_in(ctx["rng"], index), 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)

    return dropout


def _gated(node: Node) -> Fn:
    layer: L.GatedMLP = node.layer
    path, act = _prefix(node), ACTIVATIONS[layer.activation]

    def gated(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
        h = act(_linear(p, f"{path}gate.", x, ctx, layer.bias)) * _linear(p, f"{path}up.", x, ctx, layer.bias)
        return _linear(p, f"{path}down.", h, ctx, layer.bias)

    return gated


def attention_implementation(device: Any, dtype: Any, head_dim: int) -> str | None:
    """``"cudnn"`` (fused attention) on NVIDIA GPUs in bf16/fp16 for head sizes it takes; else XLA's (None)."""
    if device is None:
        return None
    fused = (device.platform.lower() in ("gpu", "cuda") and dtype in (jnp.bfloat16, jnp.float16)
             and head_dim % 8 == 0 and head_dim <= 128)
    return "cudnn" if fused else None


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, ctx: dict, implementation: str | None,
            mask: jax.Array | None = None) -> jax.Array:
    """``jax.nn.dot_product_attention`` on ``[B, T, heads, hd]`` (keys and values ``[B, S, kv, hd]``): causal
    without ``mask``, else masked. float32: both einsums at HIGHEST (no TF32 on GPUs); ``implementation``
    (``"cudnn"``) where it applies, XLA's where that kernel refuses the call."""
    kwargs: dict[str, Any] = {"is_causal": True} if mask is None else {"mask": mask}
    if ctx["precision"] == lax.Precision.HIGHEST:
        with jax.default_matmul_precision("highest"):
            return jax.nn.dot_product_attention(q, k, v, **kwargs)
    if implementation is not None and mask is None:
        try:  # the fused kernel where the platform has it
            return jax.nn.dot_product_attention(q, k, v, implementation=implementation, **kwargs)
        except Exception:  # an unsupported shape, dtype or cuDNN version: XLA's path below
            pass
    if q.dtype == jnp.float16:
        # XLA's path asks for an F16_F16_F32 dot, which the CPU cannot lower: attend in float32
        up = [a.astype(jnp.float32) for a in (q, k, v)]
        return jax.nn.dot_product_attention(*up, **kwargs).astype(jnp.float16)
    return jax.nn.dot_product_attention(q, k, v, **kwargs)


def _attend_dropped(q: jax.Array, k: jax.Array, v: jax.Array, rate: float, key: jax.Array, precision: Any
                    ) -> jax.Array:
    """Causal attention whose weights are dropped with probability ``rate`` (and the rest scaled by
    ``1 / (1 - rate)``), as ``F.scaled_dot_product_attention(dropout_p=rate)``; ``[B, T, heads, hd]`` out."""
    _, t, h, hd = q.shape
    group = h // k.shape[2]
    if group > 1:  # query head i reads key/value head i // group
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision).astype(jnp.float32) / np.sqrt(hd)
    causal = np.tril(np.ones((t, t), bool))
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    keep = jax.random.bernoulli(key, 1.0 - rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - rate), 0.0).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=precision)


def _attention(node: Node, index: int, device: Any, dtype: Any) -> Fn:
    layer: L.Attention = node.layer
    path = _prefix(node)
    _, d = node.in_shape
    h, kv, hd = layer.dims(d)
    implementation = attention_implementation(device, dtype, hd)

    def tables(n: Any, start: Any, length: int | None) -> tuple[jax.Array, jax.Array]:
        """``cos, sin`` ``[n, 1, hd / 2]`` float32 of positions ``start..start+n-1``: from the reference's float64
        tables (built at trace time for ``length`` positions, or ``n`` from 0), or, for a symbolic ``n`` (an
        export's), computed in the graph from the float64 frequencies."""
        if length is None and not isinstance(n, int):
            inv = jnp.asarray(layer.rope_frequencies(hd), jnp.float32)
            angles = jnp.arange(n, dtype=jnp.float32)[:, None, None] * inv
            return jnp.cos(angles), jnp.sin(angles)
        cos, sin = layer.rope_cos_sin(n if length is None else length, hd)  # float64, any length
        cos, sin = (jnp.asarray(np.asarray(a, np.float32)[:, None, :]) for a in (cos, sin))
        if length is None:
            return cos, sin
        return lax.dynamic_slice_in_dim(cos, start, n), lax.dynamic_slice_in_dim(sin, start, n)

    def rotate(z: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """Rotate-half rotary embedding of ``z`` ``[B, n, heads, hd]``."""
        cos, sin = cos.astype(z.dtype), sin.astype(z.dtype)
        z1, z2 = z[..., : hd // 2], z[..., hd // 2:]
        return jnp.concatenate([z1 * cos - z2 * sin, z2 * cos + z1 * sin], axis=-1)

    def attention(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
        b, n, _ = x.shape
        qkv = _linear(p, f"{path}qkv.", x, ctx, layer.qkv_bias)
        q = qkv[..., : h * hd].reshape(b, n, h, hd)
        k = qkv[..., h * hd: (h + kv) * hd].reshape(b, n, kv, hd)
        v = qkv[..., (h + kv) * hd:].reshape(b, n, kv, hd)
        cache = ctx.get("cache")
        if layer.rope:
            cached = cache is not None
            cos, sin = tables(n, ctx["start"], cache[node.path][0].shape[1]) if cached else tables(n, 0, None)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is None and ctx["train"] and layer.dropout > 0.0:
            if ctx["rng"] is None:
                raise ValueError(f"{node.where}: attention dropout in training needs an rng key")
            y = _attend_dropped(q, k, v, layer.dropout, jax.random.fold_in(ctx["rng"], index), ctx["precision"])
        elif cache is None:
            y = _attend(q, k, v, ctx, implementation)  # [B, T, H, hd]
        else:  # generation: write positions start..start+n-1 into this layer's [B, T_max, kv, hd] cache
            start = ctx["start"]
            keys, values = cache[node.path]
            keys = lax.dynamic_update_slice(keys, k.astype(keys.dtype), (0, start, 0, 0))
            values = lax.dynamic_update_slice(values, v.astype(values.dtype), (0, start, 0, 0))
            ctx["new_cache"][node.path] = (keys, values)
            seen = jnp.arange(keys.shape[1])[None, :] <= (start + jnp.arange(n))[:, None]  # [n, T_max]
            y = _attend(q, keys.astype(q.dtype), values.astype(q.dtype), ctx, None, mask=seen[None, None])
        return _linear(p, f"{path}proj.", y.reshape(b, n, h * hd), ctx, layer.bias)

    return attention


def _prefix(node: Node) -> str:
    return f"{node.path}." if node.path else ""


def implementation(kind: str) -> str | None:
    """The ``module:function`` a plugin registered for ``kind`` on this backend, if any."""
    from crossframe.plugins import get_plugin_manager

    comp = get_plugin_manager().components("layer").get(kind)
    return None if comp is None else comp.extra.get(BACKEND)


def missing_layers(graph: Graph) -> list[str]:
    """The graph's layer kinds this backend cannot run (empty when it runs them all)."""
    builtin = {cls.kind for cls in L.BUILTIN_LAYERS}
    return sorted(k for k in graph.kinds() if k not in builtin and implementation(k) is None)


def _positional(node: Node) -> Fn:
    layer: L.PositionalEmbedding = node.layer
    name = f"{_prefix(node)}weight"

    def positional(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
        if isinstance(x.shape[1], int) and x.shape[1] > layer.max_len:  # a slice past the table would clamp
            raise ValueError(f"{node.where}: sequences of {x.shape[1]} tokens are longer than max_len "
                             f"{layer.max_len} (a gpt's model.max_seq_len)")
        return x + lax.dynamic_slice_in_dim(p[name], ctx.get("start", 0), x.shape[1])

    return positional


def lower_layer(node: Node, index: int, device: Any = None, dtype: Any = None) -> Fn:
    """The function of one leaf layer (``index``: its position, which keys its dropout; ``device`` and
    ``dtype``: where and in what it runs, which picks the attention kernel)."""
    layer = node.layer
    if isinstance(layer, L.Dense):
        return _dense(node)
    if isinstance(layer, L.Conv2D):
        return _conv(node)
    if isinstance(layer, L.Pool):
        return _pool(node)
    if isinstance(layer, L.Flatten):
        return lambda p, x, ctx: x.reshape(x.shape[0], -1)
    if isinstance(layer, L.Reshape):
        out = node.out_shape
        return lambda p, x, ctx: x.reshape(x.shape[0], *out)
    if isinstance(layer, L.Embedding):
        path = _prefix(node)
        return lambda p, x, ctx: jnp.take(p[f"{path}weight"], x, axis=0)
    if isinstance(layer, L.PositionalEmbedding):
        return _positional(node)
    if isinstance(layer, L.TiedHead):  # logits from the embedding's table
        name = layer.weight_name
        return lambda p, x, ctx: _matmul(x, p[name].T, ctx["precision"])
    if isinstance(layer, L.Norm):
        return _norm(node)
    if isinstance(layer, L.Dropout):
        return _dropout(node, index)
    if isinstance(layer, L.Activation):
        act = ACTIVATIONS[layer.fn]
        return lambda p, x, ctx: act(x)
    if isinstance(layer, L.GatedMLP):
        return _gated(node)
    if isinstance(layer, L.Attention):
        return _attention(node, index, device, dtype)
    target = implementation(node.kind)
    if target is None:
        raise CapabilityError(f"{node.where}: backend '{BACKEND}' has no implementation of layer '{node.kind}'")
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(node.layer, node.in_shape, _prefix(node))


#: the entries of a forward's ``ctx`` that are arrays (traced), as opposed to Python settings
TRACED_CONTEXT = ("rng", "lora_call")


def _block_names(node: Node) -> tuple[str, tuple[str, ...]]:
    """The parameters block ``node`` reads: its own (by prefix) and the tables its tied heads borrow."""
    borrowed = tuple(sorted({n.layer.weight_name for n in node.walk() if isinstance(n.layer, L.TiedHead)}))
    return f"{node.path}.", borrowed


def checkpointed(part: Fn, node: Node) -> Fn:
    """``part`` (one block at ``node``) as a ``jax.checkpoint`` while training: the backward pass recomputes
    its activations (and redraws the very same dropout masks, from the same key) instead of keeping them.
    Its parameters and the traced context (keys) go in as arguments; evaluation runs ``part`` as it is."""
    prefix, borrowed = _block_names(node)

    def run(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
        if not ctx["train"]:
            return part(p, x, ctx)
        settings = {k: v for k, v in ctx.items() if k not in TRACED_CONTEXT}
        traced = {k: ctx[k] for k in TRACED_CONTEXT if ctx.get(k) is not None}
        own = {k: v for k, v in p.items() if k.startswith(prefix) or k in borrowed}

        def block(own: Params, x: jax.Array, traced: dict) -> jax.Array:
            return part(own, x, {**settings, **traced})

        return jax.checkpoint(block)(own, x, traced)

    return run


def _lower(node: Node, counter: list[int], device: Any = None, dtype: Any = None, remat: bool = False) -> Fn:
    if isinstance(node.layer, L.Sequential | L.Residual):
        parts = [_lower(child, counter, device, dtype, remat) for child in node.children]
        if remat and isinstance(node.layer, L.Sequential) and node.layer.repeated:
            parts = [checkpointed(part, child) for part, child in zip(parts, node.children, strict=True)]
        residual = isinstance(node.layer, L.Residual)

        def run(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
            h = x
            for part in parts:
                h = part(p, h, ctx)
            return x + h if residual else h

        return run
    counter[0] += 1
    return lower_layer(node, counter[0], device, dtype)


def make_forward(graph: Graph, dtype: Any = None, *, remat: bool = False, device: Any = None
                 ) -> Callable[..., jax.Array]:
    """The pure ``fn(params, x, *, train=False, rng=None)`` of ``graph``; ``dtype`` is the compute dtype
    (None: float32 with HIGHEST matmul precision; else parameters and float inputs are cast inside).
    ``remat``: each block of a repeated ``sequential`` is recomputed in the backward pass (training only,
    see :func:`checkpointed`); ``device`` (a ``jax.Device``) picks the attention kernel."""
    missing = missing_layers(graph)
    if missing:
        raise CapabilityError(f"model.layers: backend '{BACKEND}' has no implementation of layer "
                              f"{', '.join(repr(m) for m in missing)}")
    body = _lower(graph.root, [0], device, dtype, remat)
    precision = lax.Precision.HIGHEST if dtype is None else lax.Precision.DEFAULT
    ids = graph.takes_ids
    from crossframe.nn.lora import lora_scales

    lora = lora_scales(graph)
    from crossframe.nn import lora_dropout

    dropout = {"lora_dropout": graph.lora_dropout, "lora_sites": lora_dropout.site_constants(lora)}

    def forward(params: Params, x: jax.Array, *, train: bool = False, rng: Any = None, lora_call: Any = None,
                seed: int = 0) -> jax.Array:
        """``lora_call`` (uint32, training with ``train.lora.dropout``) keys the adapters' dropout masks."""
        if dtype is not None:
            params = {k: v.astype(dtype) for k, v in params.items()}
            x = x if ids else x.astype(dtype)
        ctx = {"train": train, "rng": rng, "precision": precision, "lora": lora}
        if train and lora_call is not None and graph.lora_dropout > 0:
            ctx.update(dropout, lora_call=lora_call, lora_run=lora_dropout.run_constant(seed))
        return body(params, x, ctx)

    return forward


def make_cached_forward(graph: Graph, dtype: Any = None) -> Callable[..., Any]:
    """The pure ``fn(params, ids, cache, start) -> (logits, cache)`` of a decoder ``graph`` for generation:
    ``ids`` ``[B, n]`` at positions ``start..start+n-1``; ``cache`` maps each attention layer's path to its
    ``(keys, values)`` ``[B, T_max, kv_heads, head_dim]`` (see :func:`new_cache`)."""
    from crossframe.nn.lora import lora_scales

    body = _lower(graph.root, [0], dtype=dtype)
    precision = lax.Precision.HIGHEST if dtype is None else lax.Precision.DEFAULT

    def forward(params: Params, ids: jax.Array, cache: dict, start: jax.Array) -> tuple[jax.Array, dict]:
        if dtype is not None:
            params = {k: v.astype(dtype) for k, v in params.items()}
        ctx = {"train": False, "rng": None, "precision": precision, "cache": cache, "start": start, "new_cache": {},
               "lora": lora_scales(graph)}
        y = body(params, ids, ctx)
        return y, {**cache, **ctx["new_cache"]}

    return forward


def new_cache(graph: Graph, batch: int, dtype: Any = jnp.float32) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Zeroed ``(keys, values)`` ``[batch, T_max, kv_heads, head_dim]`` per attention layer of ``graph``."""
    out = {}
    for node in graph.root.walk():
        if isinstance(node.layer, L.Attention):
            _, kv, hd = node.layer.dims(node.in_shape[1])
            shape = (batch, node.in_shape[0], kv, hd)
            out[node.path] = (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    return out
