"""Native ``tf.Module`` s for the core's architectures and exact native <-> canonical conversion.

Variables carry the canonical names, and TensorFlow's own layouts *are* the canonical ones
(dense ``[in, out]`` for ``x @ W``; conv kernels HWIO on NHWC data; embeddings ``[vocab, dim]``
for ``tf.gather``), so conversion is the identity: weights go in with ``assign`` and come out as
float32 numpy copies, bit for bit. The forward passes are plain tf ops; no Keras. A factorised
(``low_rank``) dense layer holds ``<prefix>.weight_u`` ``[in, r]`` and ``<prefix>.weight_v``
``[r, out]`` and runs as two matmuls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import partial

import numpy as np

from crossframe.errors import CapabilityError
from crossframe.models.gpt import LN_EPS
from crossframe.models.spec import ModelSpec, Params
from crossframe_tensorflow.devices import tf

MODELS = ("mlp", "cnn", "gpt", "graph", "hf")
RNG_ALG = "philox"  # dropout masks: the same bits on CPU and GPU for a given seed

ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "relu": tf.nn.relu,
    "tanh": tf.math.tanh,
    "gelu": lambda x: tf.nn.gelu(x, approximate=True),  # the tanh approximation, as the reference
}

Forward = Callable[..., tf.Tensor]  # (weights, x[, seed]) -> outputs


def _dense(h: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.nn.bias_add(tf.matmul(h, w), b)


class Model(tf.Module):
    """A model's float32 variables under their canonical names, and its forward pass.

    ``model(x, dtype)`` computes in ``dtype`` (float32, or bfloat16 / float16 for mixed
    precision: weights and float inputs are cast inside the forward) and returns float32
    outputs. ``training`` and ``seed`` (an int ``[2]`` tensor) matter only to models with
    randomness (dropout) or activation checkpointing; ``mlp`` and ``cnn`` ignore them.
    """

    def __init__(self, spec: ModelSpec, weights: Params) -> None:
        super().__init__(name=module_name(spec.name))
        spec.check_weights(weights)
        self.spec = spec
        with self.name_scope:
            self.params = {p.name: tf.Variable(_canonical_array(weights[p.name]), name=p.name)
                           for p in spec.table}

    @property
    def ordered(self) -> list[tf.Variable]:
        """The variables in the order of the canonical table."""
        return [self.params[p.name] for p in self.spec.table]

    @property
    def uses_rng(self) -> bool:
        """Whether a training forward draws random numbers (and so needs a ``seed``)."""
        return False

    def weight(self, name: str, dtype: tf.DType) -> tf.Tensor:
        """Parameter ``name`` in ``dtype``: the variable itself in float32, else a cast of it.

        The cast happens where the weight is used, so a block under ``tf.recompute_grad``
        reads its variables itself (recompute_grad differentiates variables read inside the
        block, not tensors captured from outside it).
        """
        v = self.params[name]
        return v if dtype == tf.float32 else tf.cast(v, dtype)

    def __call__(self, x: tf.Tensor, dtype: tf.DType = tf.float32, *, training: bool = False,
                 seed: tf.Tensor | None = None) -> tf.Tensor:
        """Outputs (float32) for a batch ``x`` computed in ``dtype``."""
        raise NotImplementedError


class GPT(Model):
    """``gpt``: the decoder-only transformer of :mod:`crossframe.models.gpt`, in tf ops.

    Token ids ``[B, T]`` (int32) in, float32 logits ``[B, T, vocab]`` out. The residual stream
    is kept as ``[B * T, d]`` so every dense layer is one ``tf.matmul``; attention reshapes to
    ``[B, H, T, hd]`` and computes ``softmax(q k^T / sqrt(hd) + causal mask) v`` with the
    masked scores set to ``-inf`` by ``tf.where`` (as the reference: every row keeps its
    diagonal, so no row is all ``-inf``). In bf16 / fp16 the matmuls, GELU and the residual
    stream run in the low precision; LayerNorm, the softmax and the rotary rotation compute
    in float32 and cast back (as Keras' mixed-precision layers and torch autocast do).

    Dropout (rate ``dropout``, only when ``training`` and the rate is positive) follows
    nanoGPT's places: after the embeddings, after each attention output projection and after
    each MLP output projection. Masks come from ``tf.nn.experimental.stateless_dropout``
    seeded from ``seed`` folded with the site index, so a step's masks are a pure function of
    (run seed, step, micro-batch): runs repeat exactly, and a block recomputed under
    ``tf.recompute_grad`` (activation checkpointing) draws the very same masks again.
    """

    def __init__(self, spec: ModelSpec, weights: Params, activation_checkpointing: bool = False) -> None:
        super().__init__(spec, weights)
        p = spec.params
        self.n_layer, self.n_head, self.d_model = int(p["n_layer"]), int(p["n_head"]), int(p["d_model"])
        self.head_dim = self.d_model // self.n_head
        self.vocab = spec.data_info.num_outputs
        self.dropout = float(p.get("dropout", 0.0))
        self.rope = bool(p.get("rope", False))
        self.tied = bool(p.get("tied_embeddings", True))
        self.checkpointing = bool(activation_checkpointing)
        if self.rope:  # the reference's tables, in float64 on the host, rounded once to float32
            hd = self.head_dim
            inv_freq = float(p.get("rope_base", 10000.0)) ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
            angles = np.arange(int(p["max_seq_len"]), dtype=np.float64)[:, None] * inv_freq[None, :]
            self._cos = np.cos(angles).astype(np.float32)
            self._sin = np.sin(angles).astype(np.float32)

    @property
    def uses_rng(self) -> bool:
        """Dropout in training."""
        return self.dropout > 0.0

    def __call__(self, x: tf.Tensor, dtype: tf.DType = tf.float32, *, training: bool = False,
                 seed: tf.Tensor | None = None) -> tf.Tensor:
        """Logits (float32 ``[B, T, vocab]``) for int token ids ``x`` ``[B, T]``, computed in ``dtype``."""
        drop = training and self.dropout > 0.0
        if drop and seed is None:
            raise ValueError("gpt: dropout in training needs a seed")
        b = tf.shape(x)[0]
        t = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
        h = tf.gather(self.params["wte"], x)  # float32 rows; cast after the gather, not the whole table
        if not self.rope:
            h = h + self.params["wpe"][:t]
        h = tf.cast(tf.reshape(h, [-1, self.d_model]), dtype)
        if drop:
            h = self._dropout(h, seed, 0)
        for i in range(self.n_layer):
            block = partial(self._block, i, b, t, dtype, seed if drop else None)
            if training and self.checkpointing:
                block = tf.recompute_grad(block)
            h = block(h)
        h = self._layer_norm(h, "ln_f")
        if self.tied:
            logits = tf.matmul(h, self.weight("wte", dtype), transpose_b=True)
        else:
            logits = tf.matmul(h, self.weight("lm_head.weight", dtype))
        return tf.reshape(tf.cast(logits, tf.float32), [b, t, self.vocab])

    # ------------------------------------------------------------------ pieces

    def _block(self, i: int, b: tf.Tensor, t: int | tf.Tensor, dtype: tf.DType, seed: tf.Tensor | None,
               h: tf.Tensor) -> tf.Tensor:
        """``h + attn(ln_1(h))``, then ``+ mlp(ln_2(.))``, on the ``[B * T, d]`` residual stream."""
        p = f"h.{i}"

        def dense(x: tf.Tensor, name: str) -> tf.Tensor:
            bias = self.weight(f"{p}.{name}.bias", dtype)
            if f"{p}.{name}.weight" in self.params:
                return _dense(x, self.weight(f"{p}.{name}.weight", dtype), bias)
            x = tf.matmul(x, self.weight(f"{p}.{name}.weight_u", dtype))  # low rank: (x @ U) @ V + b
            return _dense(x, self.weight(f"{p}.{name}.weight_v", dtype), bias)

        qkv = dense(self._layer_norm(h, f"{p}.ln_1"), "attn.qkv")
        a = dense(self._attention(qkv, b, t), "attn.proj")
        if seed is not None:
            a = self._dropout(a, seed, 1 + 2 * i)
        h = h + a
        m = ACTIVATIONS["gelu"](dense(self._layer_norm(h, f"{p}.ln_2"), "mlp.fc"))
        m = dense(m, "mlp.proj")
        if seed is not None:
            m = self._dropout(m, seed, 2 + 2 * i)
        return h + m

    def _layer_norm(self, h: tf.Tensor, prefix: str) -> tf.Tensor:
        """LayerNorm over the last axis in float32 (biased variance, eps 1e-5), cast back to ``h``'s dtype."""
        x = tf.cast(h, tf.float32)
        centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
        var = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
        y = centred * tf.math.rsqrt(var + LN_EPS) * self.params[f"{prefix}.weight"] + self.params[f"{prefix}.bias"]
        return tf.cast(y, h.dtype)

    def _attention(self, qkv: tf.Tensor, b: tf.Tensor, t: int | tf.Tensor) -> tf.Tensor:
        """Causal multi-head attention of ``qkv`` ``[B * T, 3 d]``; ``[B * T, d]`` out."""
        heads = tf.transpose(tf.reshape(qkv, [b, t, 3, self.n_head, self.head_dim]), [2, 0, 3, 1, 4])
        q, k, v = tf.unstack(heads, 3)  # [B, H, T, hd] each
        if self.rope:
            q, k = self._rotary(q, t), self._rotary(k, t)
        scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) * (1.0 / math.sqrt(self.head_dim))
        positions = tf.range(t)
        causal = positions[:, None] >= positions[None, :]  # [T, T]: key j visible from query i iff j <= i
        scores = tf.where(causal, scores, tf.constant(-np.inf, tf.float32))
        weights = tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype)
        out = tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3])  # [B, T, H, hd]
        return tf.reshape(out, [-1, self.d_model])

    def _rotary(self, x: tf.Tensor, t: int | tf.Tensor) -> tf.Tensor:
        """Rotate-half rotary embedding of ``x`` ``[B, H, T, hd]`` (in float32, cast back)."""
        half = self.head_dim // 2
        cos, sin = tf.constant(self._cos)[:t], tf.constant(self._sin)[:t]
        xf = tf.cast(x, tf.float32)
        x1, x2 = xf[..., :half], xf[..., half:]
        return tf.cast(tf.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1), x.dtype)

    def _dropout(self, x: tf.Tensor, seed: tf.Tensor, site: int) -> tf.Tensor:
        site_seed = tf.random.experimental.stateless_fold_in(seed, site, alg=RNG_ALG)
        return tf.nn.experimental.stateless_dropout(x, self.dropout, seed=site_seed, rng_alg=RNG_ALG)


def module_name(model: str) -> str:
    """A ``tf.Module`` name for model ``model`` (a plugin's model may be named ``my-model``: not an identifier)."""
    name = re.sub(r"\W", "_", model)
    return name if name[:1].isalpha() else f"model_{name}"


def _canonical_array(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.float32)


def build_model(spec: ModelSpec, weights: Params, activation_checkpointing: bool = False) -> Model:
    """The native model for ``spec`` holding ``weights`` (create it under the target ``tf.device``).

    ``activation_checkpointing`` recomputes each transformer block in the backward pass
    (``tf.recompute_grad``); the feed-forward models have no blocks and ignore it.
    """
    if spec.graph is not None:  # neutral layers: one lowering for every graph
        from crossframe_tensorflow.lowering import GraphModel

        return GraphModel(spec, weights)
    if spec.name == "gpt":
        return GPT(spec, weights, activation_checkpointing)
    raise CapabilityError(f"model.name: backend 'tensorflow' has no native '{spec.name}'")


def load_canonical(model: Model, weights: Params) -> None:
    """Assign canonical numpy weights to the model's variables, exactly."""
    model.spec.check_weights(weights)
    for p in model.spec.table:
        model.params[p.name].assign(_canonical_array(weights[p.name]))


def export_canonical(model: Model) -> Params:
    """The model's weights as canonical float32 numpy arrays (copies)."""
    return {p.name: np.array(model.params[p.name].numpy(), dtype=np.float32, copy=True) for p in model.spec.table}
