"""A graph of neutral layers lowered once into one pure function for ``jax.jit``.

``fn(params, x, *, train=False, rng=None)`` over the canonical pytree (a dict by canonical name; JAX's
layouts are the canonical ones). The graph is walked while building a list of closures, and again only
while JAX traces them: the compiled step holds one XLA program, with no Python per layer. Dense layers
run as 2-D matmuls over ``[B * T, D]``; attention goes through ``jax.nn.dot_product_attention`` (causal,
grouped-query heads natively); convolutions and pooling are ``lax.conv_general_dilated`` and
``lax.reduce_window`` on NHWC. Dropout draws from ``rng`` folded with the layer's index.
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
        if f"{path}weight" in p:
            return _linear(p, path, x, ctx, bias)
        h = _matmul(_matmul(x, p[f"{path}weight_u"], ctx["precision"]), p[f"{path}weight_v"], ctx["precision"])
        return h + p[f"{path}bias"] if bias else h

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


def _attention(node: Node) -> Fn:
    layer: L.Attention = node.layer
    path = _prefix(node)
    t, d = node.in_shape
    h, kv, hd = layer.dims(d)
    tables = None
    if layer.rope:
        cos, sin = layer.rope_cos_sin(t, hd)
        tables = (np.asarray(cos, np.float32)[:, None, :], np.asarray(sin, np.float32)[:, None, :])  # [T, 1, hd/2]

    def rotate(z: jax.Array, n: int, start: Any = 0) -> jax.Array:
        assert tables is not None
        cos, sin = (lax.dynamic_slice_in_dim(jnp.asarray(a, z.dtype), start, n) for a in tables)
        z1, z2 = z[..., : hd // 2], z[..., hd // 2:]
        return jnp.concatenate([z1 * cos - z2 * sin, z2 * cos + z1 * sin], axis=-1)

    def attention(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
        b, n, _ = x.shape
        qkv = _linear(p, f"{path}qkv.", x, ctx, layer.qkv_bias)
        q = qkv[..., : h * hd].reshape(b, n, h, hd)
        k = qkv[..., h * hd: (h + kv) * hd].reshape(b, n, kv, hd)
        v = qkv[..., (h + kv) * hd:].reshape(b, n, kv, hd)
        cache = ctx.get("cache")
        start = ctx["start"] if cache is not None else 0
        if tables is not None:
            q, k = rotate(q, n, start), rotate(k, n, start)
        if cache is None:
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # [B, T, H, hd]
        else:  # generation: write positions start..start+n-1 into this layer's [B, T_max, kv, hd] cache
            keys, values = cache[node.path]
            keys = lax.dynamic_update_slice(keys, k.astype(keys.dtype), (0, start, 0, 0))
            values = lax.dynamic_update_slice(values, v.astype(values.dtype), (0, start, 0, 0))
            ctx["new_cache"][node.path] = (keys, values)
            seen = jnp.arange(keys.shape[1])[None, :] <= (start + jnp.arange(n))[:, None]  # [n, T_max]
            y = jax.nn.dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype),
                                             mask=seen[None, None])
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


def lower_layer(node: Node, index: int) -> Fn:
    """The function of one leaf layer (``index``: its position, which keys its dropout)."""
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
        path = _prefix(node)
        return lambda p, x, ctx: x + lax.dynamic_slice_in_dim(p[f"{path}weight"], ctx.get("start", 0), x.shape[1])
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
        return _attention(node)
    target = implementation(node.kind)
    if target is None:
        raise CapabilityError(f"{node.where}: backend '{BACKEND}' has no implementation of layer '{node.kind}'")
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(node.layer, node.in_shape, _prefix(node))


def _lower(node: Node, counter: list[int]) -> Fn:
    if isinstance(node.layer, L.Sequential | L.Residual):
        parts = [_lower(child, counter) for child in node.children]
        residual = isinstance(node.layer, L.Residual)

        def run(p: Params, x: jax.Array, ctx: dict) -> jax.Array:
            h = x
            for part in parts:
                h = part(p, h, ctx)
            return x + h if residual else h

        return run
    counter[0] += 1
    return lower_layer(node, counter[0])


def make_forward(graph: Graph, dtype: Any = None) -> Callable[..., jax.Array]:
    """The pure ``fn(params, x, *, train=False, rng=None)`` of ``graph``; ``dtype`` is the compute dtype
    (None: float32 with HIGHEST matmul precision; else parameters and float inputs are cast inside)."""
    missing = missing_layers(graph)
    if missing:
        raise CapabilityError(f"model.layers: backend '{BACKEND}' has no implementation of layer "
                              f"{', '.join(repr(m) for m in missing)}")
    body = _lower(graph.root, [0])
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


def uses_rng(graph: Graph) -> bool:
    """Whether training draws random numbers (a dropout with a positive rate)."""
    return any(isinstance(n.layer, L.Dropout) and n.layer.rate > 0 for n in graph.root.walk())


def make_cached_forward(graph: Graph, dtype: Any = None) -> Callable[..., Any]:
    from crossframe.nn.lora import lora_scales

    """The pure ``fn(params, ids, cache, start) -> (logits, cache)`` of a decoder ``graph`` for generation:
    ``ids`` ``[B, n]`` at positions ``start..start+n-1``; ``cache`` maps each attention layer's path to its
    ``(keys, values)`` ``[B, T_max, kv_heads, head_dim]`` (see :func:`new_cache`)."""
    body = _lower(graph.root, [0])
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
