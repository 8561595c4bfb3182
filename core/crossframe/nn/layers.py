"""The built-in neutral layers: parameter table, seeded init, shape inference, FLOPs, numpy reference.

Every layer is a pydantic model of its config (``extra="forbid"``, so a misspelt key is a one-line
error). Shapes are per example (no batch axis); the reference forward takes and returns float64
arrays with the batch first. Canonical layouts are those of :mod:`crossframe.models.spec`: dense
kernels ``[in, out]``, conv kernels HWIO on NHWC data, embeddings ``[rows, dim]``.

A layer's parameters have local names (``weight``, ``bias``, ``qkv.weight``); the graph prefixes them
with the layer's path (``h.0.attn.qkv.weight``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from crossframe.models.spec import ParamSpec

Shape = tuple[int, ...]
Weights = Mapping[str, np.ndarray]

EMBED_STD = 0.02


class Layer(BaseModel):
    """Base of every layer: its config, and what the graph asks of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the config key (``dense``, ``conv2d``, ...)
    kind: ClassVar[str] = ""
    #: the field a scalar or list value fills (``{dense: 10}`` -> ``units: 10``); None: no shorthand
    shorthand: ClassVar[str | None] = None
    #: whether the input holds integer ids rather than features (``embedding``)
    takes_ids: ClassVar[bool] = False
    #: per-backend implementations of a plugin layer: ``{"torch": "pkg.module:function"}`` (see docs/layers.md)
    implementations: ClassVar[dict[str, str]] = {}

    name: str | None = Field(None, description="this layer's name in canonical parameter names")

    def output_shape(self, shape: Shape) -> Shape:
        """The per-example output shape for input ``shape``; ``ValueError`` (one line) when it cannot apply."""
        return shape

    def param_specs(self, shape: Shape) -> list[ParamSpec]:
        """The layer's parameters under local names, for input ``shape``."""
        return []

    def flops(self, shape: Shape) -> int:
        """Forward FLOPs per example (a multiply-add counts two) for input ``shape``."""
        return 0

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        """The float64 numpy forward on a batch ``x``; ``w`` holds the local parameters."""
        raise NotImplementedError


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


def _need_rank(kind: str, shape: Shape, rank: int | None = None, at_least: int | None = None) -> None:
    if rank is not None and len(shape) != rank:
        raise ValueError(f"{kind} needs inputs of rank {rank} per example, got shape {shape}")
    if at_least is not None and len(shape) < at_least:
        raise ValueError(f"{kind} needs inputs of rank >= {at_least} per example, got shape {shape}")


# --------------------------------------------------------------------------- dense


class Dense(Layer):
    """``y = x @ W + b`` on the last axis; ``units: outputs`` takes the dataset's output count."""

    kind: ClassVar[str] = "dense"
    shorthand: ClassVar[str | None] = "units"
    units: PositiveInt | Literal["outputs"]
    bias: bool = True
    gain: float = Field(1.0, gt=0.0, description="init std is sqrt(gain / fan_in)")
    std: float | None = Field(None, gt=0.0, description="init std of the kernel (instead of sqrt(gain / fan_in))")

    def output_shape(self, shape: Shape) -> Shape:
        _need_rank("dense", shape, at_least=1)
        assert isinstance(self.units, int), "resolved by the graph"
        return (*shape[:-1], self.units)

    def param_specs(self, shape: Shape) -> list[ParamSpec]:
        fan_in = shape[-1]
        std = self.std if self.std is not None else math.sqrt(self.gain / fan_in)
        out = [ParamSpec("weight", (fan_in, int(self.units)), "dense", "normal", std)]
        return out + ([ParamSpec("bias", (int(self.units),), "bias", decay=False)] if self.bias else [])

    def flops(self, shape: Shape) -> int:
        return 2 * math.prod(shape) * int(self.units)

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        y = x @ w["weight"] if "weight" in w else (x @ w["weight_u"]) @ w["weight_v"]  # factorised: U, V
        return y + w["bias"] if self.bias else y


# --------------------------------------------------------------------------- conv and pooling


def conv_padding(size: int, kernel: int, stride: int, dilation: int, padding: Any) -> tuple[int, int]:
    """Explicit ``(before, after)`` zero padding of one spatial axis (``same`` as TensorFlow and JAX pad it:
    the odd pixel goes after)."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        span = (kernel - 1) * dilation + 1
        total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
        return total // 2, total - total // 2
    return int(padding), int(padding)


class Conv2D(Layer):
    """2-D convolution on NHWC: kernel HWIO ``[kh, kw, in / groups, filters]``; stride, padding
    (``same``, ``valid`` or a number of pixels), dilation and groups."""

    kind: ClassVar[str] = "conv2d"
    shorthand: ClassVar[str | None] = "filters"
    filters: PositiveInt
    kernel: PositiveInt | tuple[PositiveInt, PositiveInt] = 3
    stride: PositiveInt | tuple[PositiveInt, PositiveInt] = 1
    padding: Literal["same", "valid"] | NonNegativeInt = "valid"
    dilation: PositiveInt | tuple[PositiveInt, PositiveInt] = 1
    groups: PositiveInt = 1
    bias: bool = True

    def pads(self, shape: Shape) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((top, bottom), (left, right))`` zero padding for input ``shape`` (H, W, C)."""
        (kh, kw), (sh, sw), (dh, dw) = _pair(self.kernel), _pair(self.stride), _pair(self.dilation)
        return (conv_padding(shape[0], kh, sh, dh, self.padding), conv_padding(shape[1], kw, sw, dw, self.padding))

    def output_shape(self, shape: Shape) -> Shape:
        _need_rank("conv2d", shape, rank=3)
        if shape[2] % self.groups or self.filters % self.groups:
            raise ValueError(f"conv2d: groups ({self.groups}) must divide the input channels ({shape[2]}) "
                             f"and filters ({self.filters})")
        (kh, kw), (sh, sw), (dh, dw) = _pair(self.kernel), _pair(self.stride), _pair(self.dilation)
        (pt, pb), (pl, pr) = self.pads(shape)
        h = (shape[0] + pt + pb - (kh - 1) * dh - 1) // sh + 1
        w = (shape[1] + pl + pr - (kw - 1) * dw - 1) // sw + 1
        if h < 1 or w < 1:
            raise ValueError(f"conv2d: a {kh}x{kw} kernel (dilation {dh}x{dw}) does not fit {shape[:2]} images")
        return h, w, self.filters

    def param_specs(self, shape: Shape) -> list[ParamSpec]:
        kh, kw = _pair(self.kernel)
        cin = shape[2] // self.groups
        out = [ParamSpec("weight", (kh, kw, cin, self.filters), "conv2d", "normal", math.sqrt(2.0 / (kh * kw * cin)))]
        return out + ([ParamSpec("bias", (self.filters,), "bias", decay=False)] if self.bias else [])

    def flops(self, shape: Shape) -> int:
        kh, kw = _pair(self.kernel)
        h, w, _ = self.output_shape(shape)
        return 2 * h * w * self.filters * kh * kw * (shape[2] // self.groups)

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        (kh, kw), (sh, sw), (dh, dw) = _pair(self.kernel), _pair(self.stride), _pair(self.dilation)
        (pt, pb), (pl, pr) = self.pads(x.shape[1:])
        oh, ow, _ = self.output_shape(x.shape[1:])
        padded = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        kernel = w["weight"]
        g, cin = self.groups, kernel.shape[2]
        per = self.filters // g
        out = np.zeros((x.shape[0], oh, ow, self.filters))
        for i in range(kh):
            for j in range(kw):
                patch = padded[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw, :]
                for gi in range(g):
                    out[..., gi * per:(gi + 1) * per] += (patch[..., gi * cin:(gi + 1) * cin]
                                                          @ kernel[i, j, :, gi * per:(gi + 1) * per])
        return out + w["bias"] if self.bias else out


class Pool(Layer):
    """Pooling on NHWC: ``max`` / ``avg`` windows (``size``, ``stride`` defaulting to ``size``, 'valid'),
    or ``global_max`` / ``global_avg`` over all positions (``[H, W, C] -> [C]``)."""

    kind: ClassVar[str] = "pool"
    shorthand: ClassVar[str | None] = "kind"
    kind_: Literal["max", "avg", "global_max", "global_avg"] = Field("max", alias="kind")
    size: PositiveInt | tuple[PositiveInt, PositiveInt] = 2
    stride: PositiveInt | tuple[PositiveInt, PositiveInt] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def is_global(self) -> bool:
        """Whether it reduces over every position."""
        return self.kind_.startswith("global")

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(size, stride)`` pairs."""
        size = _pair(self.size)
        return size, _pair(self.stride) if self.stride is not None else size

    def output_shape(self, shape: Shape) -> Shape:
        _need_rank("pool", shape, rank=3)
        if self.is_global:
            return (shape[2],)
        (kh, kw), (sh, sw) = self.window()
        h, w = (shape[0] - kh) // sh + 1, (shape[1] - kw) // sw + 1
        if h < 1 or w < 1:
            raise ValueError(f"pool: a {kh}x{kw} window does not fit {shape[:2]} images")
        return h, w, shape[2]

    def flops(self, shape: Shape) -> int:
        return math.prod(shape)

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        if self.is_global:
            return x.max(axis=(1, 2)) if self.kind_ == "global_max" else x.mean(axis=(1, 2))
        (kh, kw), (sh, sw) = self.window()
        oh, ow, _ = self.output_shape(x.shape[1:])
        views = [x[:, i: i + (oh - 1) * sh + 1: sh, j: j + (ow - 1) * sw + 1: sw, :]
                 for i in range(kh) for j in range(kw)]
        stacked = np.stack(views)
        return stacked.max(axis=0) if self.kind_ == "max" else stacked.mean(axis=0)


# --------------------------------------------------------------------------- reshaping


class Flatten(Layer):
    """Everything but the batch axis into one (row-major: NHWC order)."""

    kind: ClassVar[str] = "flatten"

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        return x.reshape(len(x), -1)


class Reshape(Layer):
    """To per-example ``shape`` (one entry may be -1)."""

    kind: ClassVar[str] = "reshape"
    shorthand: ClassVar[str | None] = "shape"
    shape: tuple[int, ...]

    def output_shape(self, shape: Shape) -> Shape:
        size, target = math.prod(shape), list(self.shape)
        if target.count(-1) > 1 or any(d == 0 or d < -1 for d in target):
            raise ValueError(f"reshape: {self.shape} may hold positive sizes and at most one -1")
        known = math.prod(d for d in target if d != -1)
        if -1 in target:
            if size % known:
                raise ValueError(f"reshape: {shape} ({size} values) cannot become {self.shape}")
            target[target.index(-1)] = size // known
        if math.prod(target) != size:
            raise ValueError(f"reshape: {shape} ({size} values) cannot become {self.shape}")
        return tuple(target)

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        return x.reshape(len(x), *self.output_shape(x.shape[1:]))


# --------------------------------------------------------------------------- embeddings


class Embedding(Layer):
    """Integer ids ``[...]`` -> vectors ``[..., dim]`` from a ``[vocab, dim]`` table (``vocab: outputs``
    takes the dataset's vocabulary)."""

    kind: ClassVar[str] = "embedding"
    takes_ids: ClassVar[bool] = True
    vocab: PositiveInt | Literal["outputs"] = "outputs"
    dim: PositiveInt

    def output_shape(self, shape: Shape) -> Shape:
        return (*shape, self.dim)

    def param_specs(self, shape: Shape) -> list[ParamSpec]:
        return [ParamSpec("weight", (int(self.vocab), self.dim), "embedding", "normal", EMBED_STD)]

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        return w["weight"][np.asarray(x, np.int64)]


class PositionalEmbedding(Layer):
    """Adds a learned ``[max_len, dim]`` table to a sequence ``[T, dim]`` (positions ``0..T-1``)."""

    kind: ClassVar[str] = "positional"
    shorthand: ClassVar[str | None] = "max_len"
    max_len: PositiveInt

    def output_shape(self, shape: Shape) -> Shape:
        _need_rank("positional", shape, rank=2)
        if shape[0] > self.max_len:
            raise ValueError(f"positional: sequences of {shape[0]} exceed max_len {self.max_len}")
        return shape

    def param_specs(self, shape: Shape) -> list[ParamSpec]:
        return [ParamSpec("weight", (self.max_len, shape[1]), "embedding", "normal", EMBED_STD)]

    def flops(self, shape: Shape) -> int:
        return math.prod(shape)

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        return x + w["weight"][: x.shape[1]]


# --------------------------------------------------------------------------- norms, dropout, activations


class Norm(Layer):
    """``layer`` norm (scale and bias) or ``rms`` norm (scale only) over the last axis."""

    kind: ClassVar[str] = "norm"
    shorthand: ClassVar[str | None] = "kind"
    kind_: Literal["layer", "rms"] = Field("layer", alias="kind")
    eps: float = Field(1e-5, gt=0.0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def param_specs(self, shape: Shape) -> list[ParamSpec]:
        d = shape[-1]
        out = [ParamSpec("weight", (d,), "norm_scale", "ones", decay=False)]
        return out + ([ParamSpec("bias", (d,), "norm_bias", decay=False)] if self.kind_ == "layer" else [])

    def flops(self, shape: Shape) -> int:
        return 5 * math.prod(shape)

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        if self.kind_ == "rms":
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w["weight"]
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * w["weight"] + w["bias"]


class Dropout(Layer):
    """Zeroes a ``rate`` share of the values while training (and scales the rest by ``1 / (1 - rate)``);
    the identity at evaluation. Masks come from each backend's generator, so they differ across backends."""

    kind: ClassVar[str] = "dropout"
    shorthand: ClassVar[str | None] = "rate"
    rate: float = Field(ge=0.0, lt=1.0)

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        return x  # the reference is the evaluation forward


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


ACTIVATION_FUNCTIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "softmax": lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(
        -1, keepdims=True),
}


class Activation(Layer):
    """An elementwise activation (``softmax``: over the last axis). Written as a bare name: ``- relu``."""

    kind: ClassVar[str] = "activation"
    shorthand: ClassVar[str | None] = "fn"
    fn: Literal["relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "softmax"]

    def flops(self, shape: Shape) -> int:
        return math.prod(shape)

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        return ACTIVATION_FUNCTIONS[self.fn](x)


# --------------------------------------------------------------------------- blocks


class GatedMLP(Layer):
    """The SwiGLU family: ``down(act(x @ gate) * (x @ up))``, ``hidden`` wide (``activation: silu`` is SwiGLU,
    ``gelu_tanh`` GeGLU)."""

    kind: ClassVar[str] = "gated_mlp"
    shorthand: ClassVar[str | None] = "hidden"
    hidden: PositiveInt
    activation: Literal["silu", "gelu", "gelu_tanh", "relu", "sigmoid"] = "silu"
    bias: bool = False

    def param_specs(self, shape: Shape) -> list[ParamSpec]:
        d, h = shape[-1], self.hidden
        out = []
        for name, (a, b) in (("gate", (d, h)), ("up", (d, h)), ("down", (h, d))):
            out.append(ParamSpec(f"{name}.weight", (a, b), "dense", "normal", math.sqrt(1.0 / a)))
            if self.bias:
                out.append(ParamSpec(f"{name}.bias", (b,), "bias", decay=False))
        return out

    def output_shape(self, shape: Shape) -> Shape:
        _need_rank("gated_mlp", shape, at_least=1)
        return shape

    def flops(self, shape: Shape) -> int:
        return 2 * 3 * math.prod(shape) * self.hidden

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        def lin(name: str, h: np.ndarray) -> np.ndarray:
            y = h @ w[f"{name}.weight"]
            return y + w[f"{name}.bias"] if self.bias else y

        return lin("down", ACTIVATION_FUNCTIONS[self.activation](lin("gate", x)) * lin("up", x))


class RopeScaling(BaseModel):
    """Llama 3's rotary frequency scaling: long wavelengths divided by ``factor``, short ones kept, and a
    smooth blend between (wavelengths measured against ``original_max_position_embeddings``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    factor: float = Field(gt=0.0)
    low_freq_factor: float = Field(1.0, gt=0.0)
    high_freq_factor: float = Field(4.0, gt=0.0)
    original_max_position_embeddings: PositiveInt = 8192

    @model_validator(mode="after")
    def _ordered(self) -> RopeScaling:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("rope_scaling: high_freq_factor must exceed low_freq_factor")
        return self

    def apply(self, inv: np.ndarray) -> np.ndarray:
        """The scaled inverse frequencies."""
        old = float(self.original_max_position_embeddings)
        low_wavelen, high_wavelen = old / self.low_freq_factor, old / self.high_freq_factor
        wavelen = 2.0 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
        smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blended = (1.0 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, blended, scaled)


def rope_frequencies(head_dim: int, base: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """The ``head_dim / 2`` rotary frequencies (float64): ``base ** (-2i / head_dim)`` (with ``scaling``: Llama 3's
    scaled frequencies)."""
    inv = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return inv if scaling is None else scaling.apply(inv)


def rope_tables(t: int, head_dim: int, base: float, scaling: RopeScaling | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``cos, sin`` ``[t, head_dim / 2]`` (float64) of rotary embeddings at positions ``0..t-1``
    (:func:`rope_frequencies`)."""
    inv = rope_frequencies(head_dim, base, scaling)
    angles = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(angles), np.sin(angles)


def rotate_half(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotary embedding on ``[..., T, hd]``, rotate-half convention: ``[x1, x2] -> [x1 c - x2 s, x2 c + x1 s]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(Layer):
    """Causal self-attention on ``[T, D]``: ``heads`` query heads sharing ``kv_heads`` key/value heads
    (grouped-query; equal: multi-head), optional rotary embeddings (``rope``, ``rope_base``).

    Parameters: ``qkv.weight`` ``[D, (heads + 2 kv_heads) * head_dim]`` (queries, then keys, then values,
    each head's ``head_dim`` columns together), ``qkv.bias`` with ``qkv_bias``, ``proj.weight``
    ``[heads * head_dim, D]`` and ``proj.bias`` with ``bias``.
    """

    kind: ClassVar[str] = "attention"
    shorthand: ClassVar[str | None] = "heads"
    heads: PositiveInt
    kv_heads: PositiveInt | None = Field(None, description="default: heads (multi-head)")
    head_dim: PositiveInt | None = Field(None, description="default: D / heads")
    rope: bool = False
    rope_base: float = Field(10000.0, gt=1.0)
    rope_scaling: RopeScaling | None = Field(None, description="Llama 3 frequency scaling (factor, ...)")
    qkv_bias: bool = True
    bias: bool = True
    proj_gain: float = Field(1.0, gt=0.0, description="init std of proj.weight is sqrt(proj_gain / (heads * head_dim))")
    qkv_std: float | None = Field(None, gt=0.0, description="init std of qkv.weight (default sqrt(1 / D))")
    proj_std: float | None = Field(None, gt=0.0, description="init std of proj.weight (instead of proj_gain's)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the attention weights, in training only "
                           "(each backend's own generator)")

    @model_validator(mode="after")
    def _groups(self) -> Attention:
        if self.heads % self.n_kv:
            raise ValueError(f"kv_heads ({self.n_kv}) must divide heads ({self.heads})")
        return self

    def rope_cos_sin(self, t: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``cos, sin`` ``[t, head_dim / 2]`` (float64) of this layer's rotary embeddings (base and scaling)."""
        return rope_tables(t, head_dim, self.rope_base, self.rope_scaling)

    def rope_frequencies(self, head_dim: int) -> np.ndarray:
        """This layer's ``head_dim / 2`` rotary frequencies (float64; base and scaling)."""
        return rope_frequencies(head_dim, self.rope_base, self.rope_scaling)

    @property
    def n_kv(self) -> int:
        """Key/value heads."""
        return self.kv_heads or self.heads

    def dims(self, d: int) -> tuple[int, int, int]:
        """``(heads, kv_heads, head_dim)`` for model width ``d``."""
        if self.head_dim is None and d % self.heads:
            raise ValueError(f"attention: the width {d} does not split into {self.heads} heads; set head_dim")
        hd = self.head_dim or d // self.heads
        if self.rope and hd % 2:
            raise ValueError(f"attention: rope needs an even head_dim (got {hd})")
        return self.heads, self.n_kv, hd

    def output_shape(self, shape: Shape) -> Shape:
        _need_rank("attention", shape, rank=2)
        self.dims(shape[1])
        return shape

    def param_specs(self, shape: Shape) -> list[ParamSpec]:
        d = shape[1]
        h, kv, hd = self.dims(d)
        qkv_std = self.qkv_std if self.qkv_std is not None else math.sqrt(1.0 / d)
        proj_std = self.proj_std if self.proj_std is not None else math.sqrt(self.proj_gain / (h * hd))
        out = [ParamSpec("qkv.weight", (d, (h + 2 * kv) * hd), "dense", "normal", qkv_std)]
        if self.qkv_bias:
            out.append(ParamSpec("qkv.bias", ((h + 2 * kv) * hd,), "bias", decay=False))
        out.append(ParamSpec("proj.weight", (h * hd, d), "dense", "normal", proj_std))
        if self.bias:
            out.append(ParamSpec("proj.bias", (d,), "bias", decay=False))
        return out

    def flops(self, shape: Shape) -> int:
        t, d = shape
        h, kv, hd = self.dims(d)
        return 2 * t * d * (h + 2 * kv) * hd + 2 * t * h * hd * d + 4 * t * t * h * hd

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        return self.reference_with_weights(w, x)[0]

    def reference_with_weights(self, w: Weights, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The float64 forward and the attention weights ``[B, heads, T, T]`` (each row sums to 1; the
        evaluation forward: no dropout)."""
        b, t, d = x.shape
        h, kv, hd = self.dims(d)
        qkv = x @ w["qkv.weight"] + (w["qkv.bias"] if self.qkv_bias else 0.0)
        q = qkv[..., : h * hd].reshape(b, t, h, hd).transpose(0, 2, 1, 3)
        k = qkv[..., h * hd: (h + kv) * hd].reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        v = qkv[..., (h + kv) * hd:].reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        if self.rope:
            cos, sin = self.rope_cos_sin(t, hd)
            q, k = rotate_half(q, cos, sin), rotate_half(k, cos, sin)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)  # head i reads kv head i // (h / kv)
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, h * hd)
        out = y @ w["proj.weight"]
        return (out + w["proj.bias"] if self.bias else out), att


class TiedHead(Layer):
    """Logits from an embedding table read backwards: ``x @ E^T`` with ``E`` the ``[vocab, dim]`` weight of
    the embedding layer at path ``embedding`` (tied input and output embeddings; no parameters of its own)."""

    kind: ClassVar[str] = "tied_head"
    shorthand: ClassVar[str | None] = "embedding"
    embedding: str = Field(description="the path of the embedding layer whose table it reuses (wte)")

    @property
    def weight_name(self) -> str:
        """The canonical name of the shared table."""
        return f"{self.embedding}.weight"

    def output_shape(self, shape: Shape) -> Shape:
        raise ValueError("tied_head: needs the embedding's size; the graph resolves it")

    def flops(self, shape: Shape) -> int:
        return 0  # counted by the graph, which knows the vocabulary

    def reference(self, w: Weights, x: np.ndarray, train: bool = False) -> np.ndarray:
        return x @ w["weight"].T  # the graph passes the embedding's table as ``weight``


# --------------------------------------------------------------------------- containers


class Sequential(Layer):
    """Layers one after another; children are named by position (``0``, ``1``, ...) or by their ``name``."""

    kind: ClassVar[str] = "sequential"
    shorthand: ClassVar[str | None] = "layers"
    layers: list[Any]
    repeat: PositiveInt = Field(1, description="stack this many copies, named 0..repeat-1 (each its own weights)")

    @property
    def repeated(self) -> bool:
        """Whether the children are numbered copies (blocks ``0..repeat-1``): ``repeat`` was given, even as 1, so
        a one-block stack keeps the names (``h.0...``) a deeper one has."""
        return self.repeat > 1 or "repeat" in self.model_fields_set


class Residual(Layer):
    """``x + body(x)``: the body is a sequence of layers that keeps the shape."""

    kind: ClassVar[str] = "residual"
    shorthand: ClassVar[str | None] = "layers"
    layers: list[Any]


CONTAINERS = (Sequential, Residual)

BUILTIN_LAYERS: tuple[type[Layer], ...] = (
    Dense, Conv2D, Pool, Flatten, Reshape, Embedding, PositionalEmbedding, Norm, Dropout, Activation,
    GatedMLP, Attention, Sequential, Residual, TiedHead,
)
