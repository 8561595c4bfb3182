"""A graph of neutral layers lowered once into one ``tf.Module`` whose call the backend traces as a
``tf.function``.

Variables carry the canonical names in the canonical layouts (TensorFlow's own: dense ``[in, out]``,
conv HWIO on NHWC). The graph is walked once into a list of closures; tracing runs them once, so the
step is one TensorFlow graph. Dense layers are 2-D ``tf.matmul`` s over ``[B * T, D]`` (a factorised
one, ``low_rank``, as ``(x @ U) @ V + b``); attention is ``softmax(q k^T / sqrt(hd) + causal mask) v``
with grouped-query heads repeated to the query heads and dropout on its weights in training;
dropout draws stateless masks from the step's ``seed`` folded with the layer's index. With activation
checkpointing, each block of a repeated ``sequential`` runs under ``tf.recompute_grad`` in training.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec, Params
from crossframe.nn import layers as L
from crossframe.nn.graph import Graph, Node
from crossframe_tensorflow.devices import tf
from crossframe_tensorflow.models import RNG_ALG, Model

BACKEND = "tensorflow"

ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "relu": tf.nn.relu,
    # exact GELU through erf: tf.nn.gelu's erfc form has no ONNX converter
    "gelu": lambda x: 0.5 * x * (1.0 + tf.math.erf(x * tf.cast(1.0 / math.sqrt(2.0), x.dtype))),
    "gelu_tanh": lambda x: tf.nn.gelu(x, approximate=True),
    "silu": tf.nn.silu,
    "tanh": tf.math.tanh,
    "sigmoid": tf.math.sigmoid,
    "softmax": lambda x: tf.nn.softmax(x, axis=-1),
}

#: ``fn(weight, x, ctx) -> y``: ``weight(local_name)`` reads the layer's variable in the compute dtype
Fn = Callable[[Callable[[str], tf.Tensor], tf.Tensor, dict], tf.Tensor]


def _matmul(x: tf.Tensor, w: tf.Tensor, transpose_b: bool = False) -> tf.Tensor:
    """``x @ w`` (``x @ w^T`` with ``transpose_b``) on the last axis as one 2-D matmul."""
    if x.shape.rank == 2:
        return tf.matmul(x, w, transpose_b=transpose_b)
    y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), w, transpose_b=transpose_b)
    out = w.shape[0] if transpose_b else w.shape[-1]
    inner = x.shape[1:-1]
    if inner.is_fully_defined():  # only the batch is dynamic (the step's signature): no shape arithmetic
        return tf.reshape(y, [-1, *inner.as_list(), out])
    return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [out]], axis=0))


def _linear(weight: Callable[[str], tf.Tensor], ctx: dict, prefix: str, x: tf.Tensor, bias: bool) -> tf.Tensor:
    """``x @ W + b`` of the linear ``<prefix>weight``; a factorised one (``low_rank``: ``weight_u`` ``[in, r]``,
    ``weight_v`` ``[r, out]``) as ``(x @ U) @ V + b``, two thin matmuls instead of the product's."""
    if not ctx["has"](f"{prefix}weight"):
        y = _matmul(_matmul(x, weight(f"{prefix}weight_u")), weight(f"{prefix}weight_v"))
        return tf.nn.bias_add(y, weight(f"{prefix}bias")) if bias else y
    y = _matmul(x, weight(f"{prefix}weight"))
    delta = getattr(weight, "lora_delta", None)  # adapter dropout while training (_AdapterReader)
    if delta is not None:
        extra = delta(prefix, x)
        y = y if extra is None else y + extra
    return tf.nn.bias_add(y, weight(f"{prefix}bias")) if bias else y


def _mix(x: tf.Tensor) -> tf.Tensor:
    """:func:`crossframe.nn.lora_dropout.mix` on int64 tensors (values stay below 2**63 before masking)."""
    from crossframe.nn.lora_dropout import MASK, MULTIPLIER

    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.int64)))
    x = tf.bitwise.bitwise_and(x * MULTIPLIER, tf.constant(MASK, tf.int64))
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.int64)))
    x = tf.bitwise.bitwise_and(x * MULTIPLIER, tf.constant(MASK, tf.int64))
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.int64)))


def _keep(x: tf.Tensor, run: int, call: tf.Tensor, site: int, rate: float) -> tf.Tensor:
    """The core's keep mask of an adapter's input ``x`` in forward call ``call`` (:mod:`crossframe.nn.lora_dropout`)."""
    from crossframe.nn.lora_dropout import MASK, threshold

    mask = tf.constant(MASK, tf.int64)
    base = _mix(tf.bitwise.bitwise_xor(_mix(tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(
        tf.cast(call, tf.int64), tf.constant(run, tf.int64)), mask)), tf.constant(site, tf.int64)))
    j = tf.range(tf.size(x, out_type=tf.int64), dtype=tf.int64)
    keep = _mix(tf.bitwise.bitwise_and(j + base, mask)) >= threshold(rate)
    return tf.reshape(keep, tf.shape(x))


class _AdapterReader:
    """A layer's weight reader while adapter dropout trains: kernels without the adapters, which
    :func:`_linear` adds on the dropped input through :meth:`lora_delta`."""

    def __init__(self, read: Callable[[str], tf.Tensor], delta: Callable[[str, tf.Tensor], tf.Tensor | None]
                 ) -> None:
        self.read, self.lora_delta = read, delta

    def __call__(self, name: str) -> tf.Tensor:
        return self.read(name)


def _conv(layer: L.Conv2D, shape: tuple[int, ...]) -> Fn:
    (pt, pb), (pl, pr) = layer.pads(shape)
    # TensorFlow's own SAME / VALID pad exactly as the core does (the odd pixel after) and take its fast path
    padding: Any = layer.padding.upper() if isinstance(layer.padding, str) else [[0, 0], [pt, pb], [pl, pr], [0, 0]]
    stride, dilation = L._pair(layer.stride), L._pair(layer.dilation)
    g = layer.groups

    kh, kw = L._pair(layer.kernel)
    dh, dw = dilation
    # TensorFlow's CPU kernels have no dilated backward pass: spread the taps into a zero kernel instead
    taps = [[i * dh, j * dw] for i in range(kh) for j in range(kw)]
    spread = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)

    def dilate(w: tf.Tensor) -> tf.Tensor:
        if dilation == (1, 1):
            return w
        values = tf.reshape(w, [kh * kw, w.shape[2], w.shape[3]])
        return tf.scatter_nd(taps, values, [*spread, w.shape[2], w.shape[3]])

    def conv(weight: Callable[[str], tf.Tensor], x: tf.Tensor, ctx: dict) -> tf.Tensor:
        w = dilate(weight("weight"))
        if g == 1:
            y = tf.nn.conv2d(x, w, strides=stride, padding=padding)
        else:  # grouped: one convolution per group (TensorFlow's CPU kernels have no groups)
            xs, ws = tf.split(x, g, axis=-1), tf.split(w, g, axis=-1)
            y = tf.concat([tf.nn.conv2d(a, b, strides=stride, padding=padding)
                           for a, b in zip(xs, ws, strict=True)], axis=-1)
        return tf.nn.bias_add(y, weight("bias")) if layer.bias else y

    return conv


def _pool(layer: L.Pool) -> Fn:
    if layer.kind_ == "global_max":
        return lambda weight, x, ctx: tf.reduce_max(x, axis=[1, 2])
    if layer.kind_ == "global_avg":
        return lambda weight, x, ctx: tf.reduce_mean(x, axis=[1, 2])
    size, stride = layer.window()
    pool = tf.nn.max_pool2d if layer.kind_ == "max" else tf.nn.avg_pool2d
    return lambda weight, x, ctx: pool(x, ksize=size, strides=stride, padding="VALID")


def _norm(layer: L.Norm) -> Fn:
    def norm(weight: Callable[[str], tf.Tensor], x: tf.Tensor, ctx: dict) -> tf.Tensor:
        h = tf.cast(x, tf.float32)  # statistics and the float32 scale and shift under mixed precision
        if layer.kind_ == "rms":
            y = h * tf.math.rsqrt(tf.reduce_mean(h * h, axis=-1, keepdims=True) + layer.eps) * ctx["raw"]("weight")
        else:  # the centred values once, for the variance and the output (tf.nn.moments would subtract twice)
            centred = h - tf.reduce_mean(h, axis=-1, keepdims=True)
            var = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
            y = centred * tf.math.rsqrt(var + layer.eps) * ctx["raw"]("weight") + ctx["raw"]("bias")
        return tf.cast(y, x.dtype)

    return norm


def _length(x: tf.Tensor) -> Any:
    """The sequence length of ``x`` ``[B, T, ...]``: static where traced so, else a tensor."""
    return x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]


def _heads(qkv: tf.Tensor, b: Any, n: Any, h: int, kv: int, hd: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``q`` ``[B, h, n, hd]``, ``k`` and ``v`` ``[B, kv, n, hd]`` from the fused projection ``[B, n, (h + 2 kv) hd]``.

    Multi-head: one reshape, one transpose and an unstack (its gradient is one stack), as a hand-written
    GPT did; grouped-query heads: one split (its gradient is one concat) and a transpose each."""
    if kv == h:
        return tuple(tf.unstack(tf.transpose(tf.reshape(qkv, [b, n, 3, h, hd]), [2, 0, 3, 1, 4])))  # type: ignore
    q, k, v = tf.split(qkv, [h * hd, kv * hd, kv * hd], axis=-1)
    return (tf.transpose(tf.reshape(q, [b, n, h, hd]), [0, 2, 1, 3]),
            tf.transpose(tf.reshape(k, [b, n, kv, hd]), [0, 2, 1, 3]),
            tf.transpose(tf.reshape(v, [b, n, kv, hd]), [0, 2, 1, 3]))


def _attention(layer: L.Attention, shape: tuple[int, ...], index: int) -> Fn:
    t_max, d = shape
    h, kv, hd = layer.dims(d)
    tables = None
    if layer.rope:
        cos, sin = layer.rope_cos_sin(t_max, hd)
        tables = (cos.astype(np.float32), sin.astype(np.float32))
        inv = layer.rope_frequencies(hd)
    mask = np.tril(np.ones((t_max, t_max), bool))
    scale = 1.0 / math.sqrt(hd)

    def within(n: Any) -> bool:
        """Whether ``n`` positions from 0 are a static length the precomputed tables cover."""
        return isinstance(n, int) and n <= t_max

    def rotary(start: Any, n: Any, cached: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """``cos, sin`` ``[n, hd / 2]`` (float32) of positions ``start..start+n-1``: rows of the reference's
        tables; a length known only at run time (an export's signature) may pass them, and the positions
        past the tables are computed in float32 (TFLite has no float64 kernels)."""
        if cached or within(n):
            return tuple(tf.constant(a)[start:start + n] for a in tables)  # type: ignore[return-value]
        angles = tf.cast(tf.range(t_max, tf.maximum(n, t_max)), tf.float32)[:, None] * tf.constant(
            inv.astype(np.float32))[None, :]
        return (tf.concat([tf.constant(tables[0])[:n], tf.cos(angles)], axis=0),
                tf.concat([tf.constant(tables[1])[:n], tf.sin(angles)], axis=0))

    def rotate(z: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor) -> tf.Tensor:
        """Rotate-half on ``[B, heads, n, hd]`` in float32 (cast back under mixed precision)."""
        zf = tf.cast(z, tf.float32)
        z1, z2 = zf[..., : hd // 2], zf[..., hd // 2:]
        return tf.cast(tf.concat([z1 * cos - z2 * sin, z2 * cos + z1 * sin], axis=-1), z.dtype)

    def attention(weight: Callable[[str], tf.Tensor], x: tf.Tensor, ctx: dict) -> tf.Tensor:
        b, n = tf.shape(x)[0], _length(x)
        cache = ctx.get("cache")
        start = ctx["start"] if cache is not None else 0
        qkv = _linear(weight, ctx, "qkv.", x, layer.qkv_bias)
        q, k, v = _heads(qkv, b, n, h, kv, hd)
        if tables is not None:
            cos, sin = rotary(start, n, cache is not None)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:  # generation: write positions start..start+n-1 into [B, kv, T_max, hd]
            keys, values = cache[ctx["path"]]
            pads = [[0, 0], [0, 0], [start, t_max - start - n], [0, 0]]
            fresh = tf.pad(tf.ones([1, 1, n, 1], tf.bool), pads)
            keys = tf.where(fresh, tf.pad(tf.cast(k, keys.dtype), pads), keys)
            values = tf.where(fresh, tf.pad(tf.cast(v, values.dtype), pads), values)
            ctx["new_cache"][ctx["path"]] = (keys, values)
            k, v = tf.cast(keys, q.dtype), tf.cast(values, q.dtype)
        if kv != h:
            k, v = tf.repeat(k, h // kv, axis=1), tf.repeat(v, h // kv, axis=1)
        scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) * scale
        if cache is not None:
            scores = tf.where(tf.range(t_max)[None, :] <= start + tf.range(n)[:, None], scores, -np.inf)
        elif within(n):
            scores = tf.where(tf.constant(mask)[:n, :n], scores, -np.inf)
        else:  # a length known only at run time
            scores = tf.where(tf.range(n)[None, :] <= tf.range(n)[:, None], scores, -np.inf)
        att = tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype)
        if layer.dropout > 0.0 and ctx["training"]:  # on the weights, as F.scaled_dot_product_attention(dropout_p)
            att = tf.nn.experimental.stateless_dropout(att, layer.dropout, seed=_site_seed(ctx, index),
                                                       rng_alg=RNG_ALG)
        y = tf.reshape(tf.transpose(tf.matmul(att, v), [0, 2, 1, 3]), [b, n, h * hd])
        return _linear(weight, ctx, "proj.", y, layer.bias)

    return attention


def _gated(layer: L.GatedMLP) -> Fn:
    act = ACTIVATIONS[layer.activation]

    def gated(weight: Callable[[str], tf.Tensor], x: tf.Tensor, ctx: dict) -> tf.Tensor:
        hidden = act(_linear(weight, ctx, "gate.", x, layer.bias)) * _linear(weight, ctx, "up.", x, layer.bias)
        return _linear(weight, ctx, "down.", hidden, layer.bias)

    return gated


def _site_seed(ctx: dict, index: int) -> tf.Tensor:
    """The step's dropout seed folded with the layer's index: a layer recomputed under activation
    checkpointing draws the very same mask again."""
    if ctx["seed"] is None:
        raise ValueError("graph: dropout in training needs a seed")
    return tf.random.experimental.stateless_fold_in(ctx["seed"], index, alg=RNG_ALG)


def _dropout(layer: L.Dropout, index: int) -> Fn:
    def dropout(weight: Callable[[str], tf.Tensor], x: tf.Tensor, ctx: dict) -> tf.Tensor:
        if not ctx["training"] or layer.rate == 0.0:
            return x
        return tf.nn.experimental.stateless_dropout(x, layer.rate, seed=_site_seed(ctx, index), rng_alg=RNG_ALG)

    return dropout


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
    layer, shape = node.layer, node.in_shape
    if isinstance(layer, L.Dense):
        return lambda weight, x, ctx: _linear(weight, ctx, "", x, layer.bias)
    if isinstance(layer, L.Conv2D):
        return _conv(layer, shape)
    if isinstance(layer, L.Pool):
        return _pool(layer)
    if isinstance(layer, L.Flatten):
        size = math.prod(shape)
        return lambda weight, x, ctx: tf.reshape(x, [-1, size])
    if isinstance(layer, L.Reshape):
        out = list(node.out_shape)
        return lambda weight, x, ctx: tf.reshape(x, [-1, *out])
    if isinstance(layer, L.Embedding):
        return lambda weight, x, ctx: tf.cast(tf.gather(ctx["raw"]("weight"), x), ctx["dtype"])  # cast the rows only
    if isinstance(layer, L.PositionalEmbedding):
        def positions(weight: Callable[[str], tf.Tensor], x: tf.Tensor, ctx: dict) -> tf.Tensor:
            if "start" not in ctx:
                return x + weight("weight")[: _length(x)]
            return x + weight("weight")[ctx["start"]: ctx["start"] + _length(x)]

        return positions
    if isinstance(layer, L.TiedHead):  # logits from the embedding's table
        return lambda weight, x, ctx: _matmul(x, ctx["param"](layer.weight_name), transpose_b=True)
    if isinstance(layer, L.Norm):
        return _norm(layer)
    if isinstance(layer, L.Dropout):
        return _dropout(layer, index)
    if isinstance(layer, L.Activation):
        act = ACTIVATIONS[layer.fn]
        return lambda weight, x, ctx: act(x)
    if isinstance(layer, L.GatedMLP):
        return _gated(layer)
    if isinstance(layer, L.Attention):
        return _attention(layer, shape, index)
    target = implementation(node.kind)
    if target is None:
        raise CapabilityError(f"{node.where}: backend '{BACKEND}' has no implementation of layer '{node.kind}'")
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(node.layer, node.in_shape)


def _recomputed(part: Callable[[tf.Tensor, dict], tf.Tensor], ctx: dict) -> Callable[[tf.Tensor], tf.Tensor]:
    """``part`` under ``tf.recompute_grad``: its activations are dropped after the forward and recomputed in
    the backward pass. The block reads its variables itself (:meth:`Model.weight`), which is what
    ``recompute_grad`` differentiates, and its dropout masks are a function of the step's seed and the
    layer's index, so the recomputation draws the same ones."""
    return tf.recompute_grad(lambda h: part(h, ctx))


class GraphModel(Model):
    """The lowered graph: the canonical variables and one forward built from the graph once."""

    def __init__(self, spec: ModelSpec, weights: Params, activation_checkpointing: bool = False) -> None:
        graph: Graph = spec.graph
        missing = missing_layers(graph)
        if missing:
            raise CapabilityError(f"model.layers: backend '{BACKEND}' has no implementation of layer "
                                  f"{', '.join(repr(m) for m in missing)}")
        super().__init__(spec, weights)
        self._counter = 0
        self.checkpointing = bool(activation_checkpointing)
        from crossframe.nn.lora import lora_scales
        from crossframe.nn.lora_dropout import site_constants

        self._lora_sites = site_constants(lora_scales(graph))
        self._body = self._lower(graph.root)
        self._rng = graph.has_dropout

    @property
    def uses_rng(self) -> bool:
        """Dropout in training."""
        return self._rng

    def _lower(self, node: Node) -> Callable[[tf.Tensor, dict], tf.Tensor]:
        if isinstance(node.layer, L.Sequential | L.Residual):
            parts = [self._lower(child) for child in node.children]
            residual = isinstance(node.layer, L.Residual)
            # activation checkpointing: each block of a repeated sequential is recomputed in the backward pass
            blocks = self.checkpointing and isinstance(node.layer, L.Sequential) and node.layer.repeated

            def run(x: tf.Tensor, ctx: dict) -> tf.Tensor:
                h = x
                for part in parts:
                    h = _recomputed(part, ctx)(h) if blocks and ctx["training"] else part(h, ctx)
                return x + h if residual else h

            return run
        self._counter += 1
        fn = lower_layer(node, self._counter)
        prefix = f"{node.path}." if node.path else ""

        lora = dict(node.lora)  # LoRA: kernels read as W + scale * A @ B (crossframe.nn.lora)
        sites = self._lora_sites

        def weight(name: str, dtype: tf.DType, merged: bool = True) -> tf.Tensor:
            w = self.weight(f"{prefix}{name}", dtype)
            base = f"{prefix}{name}"[: -len(".weight")] if name.endswith("weight") else None
            if merged and base is not None and base in lora:
                a, b = self.weight(f"{base}.lora_a", dtype), self.weight(f"{base}.lora_b", dtype)
                w = w + lora[base] * tf.matmul(a, b)
            return w

        def delta(local: str, x: tf.Tensor, ctx: dict) -> tf.Tensor | None:
            """``scale * (drop(x) @ A) @ B`` of the adapted linear ``<prefix><local>`` (None: not adapted)."""
            base = f"{prefix}{local}"[:-1] if local else node.path
            if base not in lora:
                return None
            rate, dtype = self.spec.graph.lora_dropout, ctx["dtype"]
            keep = _keep(x, ctx["lora_run"], ctx["lora_call"], sites[base], rate)
            kept = tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))
            a, b = self.weight(f"{base}.lora_a", dtype), self.weight(f"{base}.lora_b", dtype)
            return lora[base] * _matmul(_matmul(kept, a), b)

        def leaf(x: tf.Tensor, ctx: dict) -> tf.Tensor:
            local = dict(ctx, has=lambda name: f"{prefix}{name}" in self.params,
                         raw=lambda name: self.params[f"{prefix}{name}"], path=node.path,
                         param=lambda full: self.weight(full, ctx["dtype"]))
            if lora and ctx.get("lora_call") is not None:  # adapter dropout while training
                reader = _AdapterReader(lambda name: weight(name, ctx["dtype"], merged=False),
                                        lambda local_name, h: delta(local_name, h, ctx))
                return fn(reader, x, local)
            return fn(lambda name: weight(name, ctx["dtype"]), x, local)

        return leaf

    def __call__(self, x: tf.Tensor, dtype: tf.DType = tf.float32, *, training: bool = False,
                 seed: tf.Tensor | None = None, lora_call: tf.Tensor | None = None, lora_seed: int = 0) -> tf.Tensor:
        """Outputs (float32) for a batch ``x`` computed in ``dtype``; ``lora_call`` (``step * grad_accum +
        micro_batch``) and the run's ``lora_seed`` key the adapters' dropout masks while training."""
        if not self.spec.graph.takes_ids:
            x = tf.cast(x, dtype)
        ctx = {"dtype": dtype, "training": training, "seed": seed}
        if training and lora_call is not None and self.spec.graph.lora_dropout > 0:
            from crossframe.nn.lora_dropout import run_constant

            ctx.update(lora_call=lora_call, lora_run=run_constant(lora_seed))
        y = self._body(x, ctx)
        return tf.cast(y, tf.float32)

    def call_cached(self, x: tf.Tensor, cache: dict, start: tf.Tensor, dtype: tf.DType = tf.float32
                    ) -> tuple[tf.Tensor, dict]:
        """Generation: logits (float32) for ids ``x`` ``[B, n]`` at positions ``start..start+n-1``, and the
        caches (``{attention path: (keys, values) [B, kv_heads, T_max, head_dim]}``) with them written in."""
        ctx = {"dtype": dtype, "training": False, "seed": None, "cache": cache, "start": start, "new_cache": {}}
        y = self._body(x, ctx)
        return tf.cast(y, tf.float32), {**cache, **ctx["new_cache"]}

    def new_cache(self, batch: int, dtype: tf.DType = tf.float32) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
        """Zeroed ``(keys, values)`` ``[batch, kv_heads, T_max, head_dim]`` per attention layer."""
        out = {}
        for node in self.spec.graph.root.walk():
            if isinstance(node.layer, L.Attention):
                _, kv, hd = node.layer.dims(node.in_shape[1])
                shape = [batch, kv, node.in_shape[0], hd]
                out[node.path] = (tf.zeros(shape, dtype), tf.zeros(shape, dtype))
        return out
