"""A graph of neutral layers lowered once into one ``nn.Module``.

The module's parameters carry the canonical names (``h.0.attn.qkv.weight``) in torch's layouts (dense
``[out, in]``, conv OIHW), so :func:`crossframe_torch.models.load_canonical` and ``export_canonical``
work unchanged. Image tensors stay NCHW from one convolution or pooling to the next and go back to the
canonical NHWC only where a layer needs the channels last (flatten, dense, norm), so a conv stack does
not permute between layers. Attention runs through ``F.scaled_dot_product_attention`` (fused kernels,
grouped-query heads natively).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from crossframe.errors import CapabilityError
from crossframe.nn import layers as L
from crossframe.nn.graph import Graph, Node

BACKEND = "torch"

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=-1),
}

#: layers that run on NCHW images; elementwise ones run on either layout
SPATIAL = (L.Conv2D, L.Pool)


def _empty(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape))


def linear(fan_in: int, fan_out: int, bias: bool) -> nn.Linear:
    """A dense layer on the last axis (canonical ``[in, out]`` kernel held as torch's ``[out, in]``): a plain
    ``nn.Linear``, so torch's own tools (torchao's int8 ``quantize_``, exporters) recognise it."""
    return nn.Linear(fan_in, fan_out, bias=bias)


class Conv(nn.Module):
    """``conv2d`` on NCHW; asymmetric 'same' padding is padded explicitly first."""

    def __init__(self, layer: L.Conv2D, shape: tuple[int, ...]) -> None:
        super().__init__()
        kh, kw = L._pair(layer.kernel)
        self.weight = _empty(layer.filters, shape[2] // layer.groups, kh, kw)
        self.bias = _empty(layer.filters) if layer.bias else None
        (pt, pb), (pl, pr) = layer.pads(shape)
        self.symmetric = pt == pb and pl == pr
        self.padding = (pt, pl) if self.symmetric else (0, 0)
        self.pad = (pl, pr, pt, pb)
        self.stride, self.dilation, self.groups = L._pair(layer.stride), L._pair(layer.dilation), layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of NCHW ``x``."""
        if not self.symmetric:
            x = F.pad(x, self.pad)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Norm(nn.Module):
    """Layer norm or RMS norm over the last axis."""

    def __init__(self, layer: L.Norm, d: int) -> None:
        super().__init__()
        self.rms, self.eps, self.d = layer.kind_ == "rms", layer.eps, d
        self.weight = _empty(d)
        self.bias = None if self.rms else _empty(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised ``x``."""
        if self.rms:
            return F.rms_norm(x, (self.d,), self.weight, self.eps)
        return F.layer_norm(x, (self.d,), self.weight, self.bias, self.eps)


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))``."""

    def __init__(self, layer: L.GatedMLP, d: int) -> None:
        super().__init__()
        self.gate = linear(d, layer.hidden, layer.bias)
        self.up = linear(d, layer.hidden, layer.bias)
        self.down = linear(layer.hidden, d, layer.bias)
        self.act = ACTIVATIONS[layer.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gated MLP of ``x``."""
        return self.down(self.act(self.gate(x)) * self.up(x))


class Attention(nn.Module):
    """Causal self-attention (multi-head or grouped-query, optional rotary) through fused SDPA."""

    def __init__(self, layer: L.Attention, d: int) -> None:
        super().__init__()
        self.h, self.kv, self.hd = layer.dims(d)
        self.qkv = linear(d, (self.h + 2 * self.kv) * self.hd, layer.qkv_bias)
        self.proj = linear(self.h * self.hd, d, layer.bias)
        self.rope, self.base, self.layer = layer.rope, layer.rope_base, layer
        self._tables: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        #: generation: this layer's key/value cache ``([B, kv, T_max, hd], same)`` and the first position of
        #: the next call (set by :mod:`crossframe_torch.decoding`; None in training and evaluation)
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.start = 0

    def _rope(self, t: int, like: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        key = (start + t, str(like.device))
        if key not in self._tables:  # built once per length, in float64 like the reference, rounded once
            cos, sin = self.layer.rope_cos_sin(start + t, self.hd)
            self._tables[key] = (torch.from_numpy(cos).float().to(like.device),
                                 torch.from_numpy(sin).float().to(like.device))
        cos, sin = self._tables[key]
        return cos[start:].to(like.dtype), sin[start:].to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over ``x`` ``[B, T, D]`` (with a cache: positions ``start..start+T-1`` against it)."""
        b, t, _ = x.shape
        start = self.start if self.cache is not None else 0
        q, k, v = self.qkv(x).split((self.h * self.hd, self.kv * self.hd, self.kv * self.hd), dim=-1)
        q = q.view(b, t, self.h, self.hd).transpose(1, 2)
        k = k.view(b, t, self.kv, self.hd).transpose(1, 2)
        v = v.view(b, t, self.kv, self.hd).transpose(1, 2)
        if self.rope:
            cos, sin = self._rope(t, q, start)
            half = self.hd // 2
            q, k = (torch.cat((z[..., :half] * cos - z[..., half:] * sin, z[..., half:] * cos + z[..., :half] * sin),
                              dim=-1) for z in (q, k))
        if self.cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.h)
        else:
            keys, values = self.cache
            keys[:, :, start:start + t] = k.to(keys.dtype)
            values[:, :, start:start + t] = v.to(values.dtype)
            end = start + t
            seen = torch.arange(end, device=x.device)[None, :] <= (start + torch.arange(t, device=x.device))[:, None]
            y = F.scaled_dot_product_attention(q, keys[:, :, :end].to(q.dtype), values[:, :, :end].to(q.dtype),
                                               attn_mask=seen, enable_gqa=self.kv != self.h)
        return self.proj(y.transpose(1, 2).reshape(b, t, self.h * self.hd))


class Table(nn.Module):
    """A lookup table (``embedding``) or a learned position table (``positional``)."""

    def __init__(self, rows: int, dim: int, add_positions: bool) -> None:
        super().__init__()
        self.weight = _empty(rows, dim)
        self.add_positions = add_positions
        self.start = 0  # generation: the position of the first row of ``x``

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rows for ids, or ``x`` plus the positions ``start..start+T-1``."""
        if self.add_positions:
            return x + self.weight[self.start: self.start + x.shape[1]]
        return F.embedding(x, self.weight)


class Stateless(nn.Module):
    """A layer without parameters (activation, pooling, dropout, reshaping)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)``."""
        return self.fn(x)


def _pool(layer: L.Pool) -> Callable[[torch.Tensor], torch.Tensor]:
    if layer.kind_ == "global_max":
        return lambda x: x.amax(dim=(2, 3))
    if layer.kind_ == "global_avg":
        return lambda x: x.mean(dim=(2, 3))
    size, stride = layer.window()
    pool = F.max_pool2d if layer.kind_ == "max" else F.avg_pool2d
    return lambda x: pool(x, size, stride)


def lower_layer(node: Node, dropout: Callable[[float], Callable[[torch.Tensor], torch.Tensor]]) -> nn.Module:
    """The module of one built-in leaf layer."""
    layer, shape = node.layer, node.in_shape
    if isinstance(layer, L.Dense):
        factors = {p.name: p.shape for p in node.params if p.name.endswith("weight_u")}
        if factors:  # low rank: x @ U @ V + b
            from crossframe_torch.models import LowRankLinear

            return LowRankLinear(shape[-1], int(layer.units), next(iter(factors.values()))[1], bias=layer.bias)
        return linear(shape[-1], int(layer.units), layer.bias)
    if isinstance(layer, L.Conv2D):
        return Conv(layer, shape)
    if isinstance(layer, L.Pool):
        return Stateless(_pool(layer))
    if isinstance(layer, L.Flatten):
        return Stateless(lambda x: x.reshape(x.shape[0], -1))
    if isinstance(layer, L.Reshape):
        out = node.out_shape
        return Stateless(lambda x: x.reshape(x.shape[0], *out))
    if isinstance(layer, L.Embedding):
        return Table(int(layer.vocab), layer.dim, add_positions=False)
    if isinstance(layer, L.PositionalEmbedding):
        return Table(layer.max_len, shape[1], add_positions=True)
    if isinstance(layer, L.Norm):
        return Norm(layer, shape[-1])
    if isinstance(layer, L.Dropout):
        return Stateless(dropout(layer.rate))
    if isinstance(layer, L.Activation):
        return Stateless(ACTIVATIONS[layer.fn])
    if isinstance(layer, L.GatedMLP):
        return GatedMLP(layer, shape[-1])
    if isinstance(layer, L.Attention):
        return Attention(layer, shape[-1])
    return _plugin_layer(node)


def implementation(kind: str) -> str | None:
    """The ``module:function`` a plugin registered for ``kind`` on this backend, if any."""
    from crossframe.plugins import get_plugin_manager

    comp = get_plugin_manager().components("layer").get(kind)
    return None if comp is None else comp.extra.get(BACKEND)


def _plugin_layer(node: Node) -> nn.Module:
    target = implementation(node.kind)
    if target is None:
        raise CapabilityError(f"{node.where}: backend '{BACKEND}' has no implementation of layer '{node.kind}'")
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(node.layer, node.in_shape)


def missing_layers(graph: Graph) -> list[str]:
    """The graph's layer kinds this backend cannot run (empty when it runs them all)."""
    builtin = {cls.kind for cls in L.BUILTIN_LAYERS}
    return sorted(k for k in graph.kinds() if k not in builtin and implementation(k) is None)


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    """Place ``module`` at dotted ``path`` under ``root``, creating empty containers on the way."""
    parts = path.split(".") if path else []
    if not parts:
        raise CapabilityError("a graph's layer needs a name")
    parent = root
    for part in parts[:-1]:
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent.add_module(part, child)
        parent = child
    parent.add_module(parts[-1], module)


Step = Callable[[torch.Tensor, bool], tuple[torch.Tensor, bool]]


class GraphModule(nn.Module):
    """The lowered graph: leaf modules under their canonical paths and one forward plan.

    The plan is a list of closures built once; the image layout (NCHW between spatial layers) is
    decided then, not per call.
    """

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        missing = missing_layers(graph)
        if missing:
            raise CapabilityError(f"model.layers: backend '{BACKEND}' has no implementation of layer "
                                  f"{', '.join(repr(m) for m in missing)}")
        self.graph = graph
        self._plan = self._steps(graph.root.children)

    def _dropout(self, rate: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: F.dropout(x, rate, self.training) if rate > 0 else x

    def _steps(self, nodes: list[Node]) -> list[Step]:
        return [self._step(node) for node in nodes]

    def _step(self, node: Node) -> Step:
        layer = node.layer
        if isinstance(layer, L.Sequential):
            plan = self._steps(node.children)
            return lambda x, nchw: _run(plan, x, nchw)
        if isinstance(layer, L.Residual):
            plan = self._steps(node.children)

            def residual(x: torch.Tensor, nchw: bool) -> tuple[torch.Tensor, bool]:
                y, y_nchw = _run(plan, x, nchw)
                return x + _layout(y, y_nchw, nchw), nchw

            return residual
        if isinstance(layer, L.TiedHead):  # logits from the embedding's table, no parameter of its own
            name = layer.weight_name
            return lambda x, nchw: (F.linear(_layout(x, nchw, False), self.get_parameter(name)), False)
        module = lower_layer(node, self._dropout)
        _attach(self, node.path, module)
        # a parameter-free layer runs its function directly: ``nn.Module.__call__`` (hook checks) costs
        # microseconds per layer per step, which a small model's step notices; the module stays attached
        fn = module.fn if type(module) is Stateless else module
        if isinstance(layer, SPATIAL):
            keeps = not (isinstance(layer, L.Pool) and layer.is_global)
            return lambda x, nchw: (fn(_layout(x, nchw, True)), keeps)
        if isinstance(layer, L.Dropout) or (isinstance(layer, L.Activation) and layer.fn != "softmax"):
            return lambda x, nchw: (fn(x), nchw)  # elementwise: either layout
        return lambda x, nchw: (fn(_layout(x, nchw, False)), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's outputs for a batch in the canonical layout (NHWC images, int ids)."""
        y, nchw = _run(self._plan, x, False)
        return _layout(y, nchw, False)


def _layout(x: torch.Tensor, nchw: bool, want_nchw: bool) -> torch.Tensor:
    """``x`` (NCHW when ``nchw``) in the wanted layout; only rank-4 tensors are ever NCHW."""
    if nchw == want_nchw or x.dim() != 4:
        return x
    return x.permute(0, 3, 1, 2) if want_nchw else x.permute(0, 2, 3, 1)


def _run(plan: list[Step], x: torch.Tensor, nchw: bool) -> tuple[torch.Tensor, bool]:
    for step in plan:
        x, nchw = step(x, nchw)
    return x, nchw


def build_module(graph: Graph) -> GraphModule:
    """The native module of ``graph`` (weights still to be loaded with ``load_canonical``)."""
    module = GraphModule(graph)
    if any(n.lora for n in graph.nodes()):  # LoRA adapters (crossframe_torch.adapters)
        from crossframe_torch.adapters import attach_adapters

        attach_adapters(module, graph)
    return module

