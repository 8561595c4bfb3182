"""A graph of neutral layers lowered once into one ``nn.Module``.

The module's parameters carry the canonical names (``h.0.attn.qkv.weight``) in torch's layouts (dense
``[out, in]``, conv OIHW), so :func:`crossframe_torch.models.load_canonical` and ``export_canonical``
work unchanged. Image tensors stay NCHW from one convolution or pooling to the next and go back to the
canonical NHWC only where a layer needs the channels last (flatten, dense, norm), so a conv stack does
not permute between layers. Attention runs through ``F.scaled_dot_product_attention`` (fused kernels,
grouped-query heads natively, dropout on the attention weights in training).

Each block of a repeated ``sequential`` (``h.0``, ``h.1``, ...) is a :class:`Block` module called as one, so
FSDP can shard the blocks one by one and ``activation_checkpointing`` recomputes each block in the backward
pass. A factorised (``low_rank``) linear, a dense layer's or an attention's ``qkv`` / ``proj`` or a gated
MLP's ``gate`` / ``up`` / ``down``, is a :class:`crossframe_torch.models.LowRankLinear`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from crossframe.errors import CapabilityError
from crossframe.nn import layers as L
from crossframe.nn.graph import Graph, Node
from crossframe_torch.models import LowRankLinear

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


def linear(fan_in: int, fan_out: int, bias: bool, rank: int | None = None) -> nn.Module:
    """A dense layer on the last axis (canonical ``[in, out]`` kernel held as torch's ``[out, in]``): a plain
    ``nn.Linear``, so torch's own tools (torchao's int8 ``quantize_``, exporters) recognise it, or with ``rank``
    a :class:`LowRankLinear` ``(x @ U) @ V + b``."""
    if rank is None:
        return nn.Linear(fan_in, fan_out, bias=bias)
    return LowRankLinear(fan_in, fan_out, rank, bias=bias)


def factor_ranks(node: Node) -> dict[str, int]:
    """The ranks of ``node``'s factorised linears by local prefix (``""`` for a dense layer itself, ``qkv``,
    ``proj``, ``gate``, ...): each ``<prefix>.weight_u`` is ``[in, rank]``."""
    prefix = f"{node.path}." if node.path else ""
    out = {}
    for p in node.params:
        local = p.name[len(prefix):]
        if local == "weight_u" or local.endswith(".weight_u"):
            out[local[: -len("weight_u")].rstrip(".")] = int(p.shape[1])
    return out


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

    def __init__(self, layer: L.GatedMLP, d: int, ranks: dict[str, int] | None = None) -> None:
        super().__init__()
        rank = (ranks or {}).get
        self.gate = linear(d, layer.hidden, layer.bias, rank("gate"))
        self.up = linear(d, layer.hidden, layer.bias, rank("up"))
        self.down = linear(layer.hidden, d, layer.bias, rank("down"))
        self.act = ACTIVATIONS[layer.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gated MLP of ``x``."""
        return self.down(self.act(self.gate(x)) * self.up(x))


def _rotate(z: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half convention, with ``cos`` / ``sin`` of half the head width."""
    half = z.shape[-1] // 2
    z1, z2 = z[..., :half], z[..., half:]
    return torch.cat((z1 * cos - z2 * sin, z2 * cos + z1 * sin), dim=-1)


class Attention(nn.Module):
    """Causal self-attention (multi-head or grouped-query, optional rotary) through fused SDPA.

    Generation (set by :mod:`crossframe_torch.decoding`, None / 0 in training and evaluation): ``cache`` holds
    this layer's keys and values ``([rows, kv, T_max, hd], same)``; ``start`` is the position of the first
    token of ``x``, one int for every row, or a tensor ``[B]`` of positions, one per row, when each row feeds one
    token (continuous batching); ``rows`` names the cache row of each batch row (None: row ``i`` is cache row
    ``i``); ``span`` is how many cached positions a per-row call reads (its largest position + 1).
    """

    def __init__(self, layer: L.Attention, d: int, ranks: dict[str, int] | None = None, positions: int = 0) -> None:
        super().__init__()
        rank = (ranks or {}).get
        self.h, self.kv, self.hd = layer.dims(d)
        self.qkv = linear(d, (self.h + 2 * self.kv) * self.hd, layer.qkv_bias, rank("qkv"))
        self.proj = linear(self.h * self.hd, d, layer.bias, rank("proj"))
        self.rope, self.base, self.layer = layer.rope, layer.rope_base, layer
        self.dropout, self.gqa = layer.dropout, self.kv != self.h
        #: rotary tables by device, built on first use for at least ``positions`` positions (the context), so a
        #: traced forward (``torch.export``, a symbolic length) slices them without a branch on the length
        self.positions = positions
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.start: int | torch.Tensor = 0
        self.rows: torch.Tensor | None = None
        self.span = 0

    def _rope(self, t: int, like: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` ``[t, hd / 2]`` of positions ``start..start+t-1`` in ``like``'s dtype."""
        key, end = str(like.device), start + t
        table = self._tables.get(key)
        longer = isinstance(end, int) and (table is None or end > table[0].shape[0])  # a symbolic end: the context
        if table is None or longer:  # in float64 like the reference, rounded once
            cos, sin = self.layer.rope_cos_sin(max(self.positions, end) if isinstance(end, int) else self.positions,
                                               self.hd)
            table = self._tables[key] = (torch.from_numpy(cos).float().to(like.device),
                                         torch.from_numpy(sin).float().to(like.device))
        cos, sin = table
        return cos[start:end].to(like.dtype), sin[start:end].to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over ``x`` ``[B, T, D]`` (with a cache: its positions against the cached ones)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split((self.h * self.hd, self.kv * self.hd, self.kv * self.hd), dim=-1)
        q = q.view(b, t, self.h, self.hd).transpose(1, 2)
        k = k.view(b, t, self.kv, self.hd).transpose(1, 2)
        v = v.view(b, t, self.kv, self.hd).transpose(1, 2)
        if self.cache is not None:
            y = self._cached(q, k, v)
        else:
            if self.rope:
                cos, sin = self._rope(t, q)
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.gqa,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, self.h * self.hd))

    def _cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write ``k``, ``v`` into the cache at their positions and attend to every cached position up to each
        query's own (the evaluation forward: no dropout)."""
        assert self.cache is not None
        keys, values = self.cache
        b, _, t, _ = q.shape
        device = q.device
        if isinstance(self.start, torch.Tensor):  # one token per row, each at its own position
            pos, span = self.start, self.span
            rows = self.rows if self.rows is not None else torch.arange(b, device=device)
            if self.rope:
                cos, sin = self._rope(keys.shape[2], q)
                cos, sin = cos[pos][:, None, None], sin[pos][:, None, None]
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            keys[rows, :, pos] = k[:, :, 0].to(keys.dtype)
            values[rows, :, pos] = v[:, :, 0].to(values.dtype)
            seen_k, seen_v = keys[rows, :, :span], values[rows, :, :span]
            mask = (torch.arange(span, device=device)[None, :] <= pos[:, None])[:, None, None, :]
        else:  # positions start..start+t-1 for every row
            start = self.start
            end = start + t
            if self.rope:
                cos, sin = self._rope(t, q, start)
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            rows = slice(None) if self.rows is None else self.rows  # every row, or the slots of the batch
            keys[rows, :, start:end] = k.to(keys.dtype)
            values[rows, :, start:end] = v.to(values.dtype)
            seen_k, seen_v = keys[rows, :, :end], values[rows, :, :end]
            mask = torch.arange(end, device=device)[None, :] <= (start + torch.arange(t, device=device))[:, None]
        return F.scaled_dot_product_attention(q, seen_k.to(q.dtype), seen_v.to(q.dtype), attn_mask=mask,
                                              enable_gqa=self.gqa)


class Table(nn.Module):
    """A lookup table (``embedding``) or a learned position table (``positional``)."""

    def __init__(self, rows: int, dim: int, add_positions: bool) -> None:
        super().__init__()
        self.weight = _empty(rows, dim)
        self.add_positions = add_positions
        #: generation: the position of the first token of ``x``, or a tensor ``[B]`` of one position per row
        self.start: int | torch.Tensor = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rows for ids, or ``x`` plus the positions ``start..start+T-1`` (per row: ``x[i]`` plus row ``start[i]``)."""
        if self.add_positions:
            if isinstance(self.start, torch.Tensor):
                return x + self.weight[self.start][:, None]
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
        return linear(shape[-1], int(layer.units), layer.bias, factor_ranks(node).get(""))
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
        return GatedMLP(layer, shape[-1], factor_ranks(node))
    if isinstance(layer, L.Attention):
        return Attention(layer, shape[-1], factor_ranks(node), positions=int(shape[0]))
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


class Block(nn.Module):
    """One block of a repeated ``sequential`` (``h.0``): its layers' modules below it and its part of the plan.

    Called as a module, so FSDP's hooks gather and free its weights around it and ``torch.utils.checkpoint``
    can recompute it."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: list[Step] = []

    def forward(self, x: torch.Tensor, nchw: bool = False) -> tuple[torch.Tensor, bool]:
        """The block on ``x`` (NCHW when ``nchw``) and whether its output is NCHW."""
        return _run(self.plan, x, nchw)


class GraphModule(nn.Module):
    """The lowered graph: leaf modules under their canonical paths and one forward plan.

    The plan is a list of closures built once; the image layout (NCHW between spatial layers) is
    decided then, not per call. With ``activation_checkpointing`` each block of a repeated ``sequential``
    (the outermost ones) keeps only its input in training and recomputes its activations in the backward
    pass (``torch.utils.checkpoint``, non-reentrant, the same dropout masks): the same numbers, less memory.
    """

    def __init__(self, graph: Graph, activation_checkpointing: bool = False) -> None:
        super().__init__()
        missing = missing_layers(graph)
        if missing:
            raise CapabilityError(f"model.layers: backend '{BACKEND}' has no implementation of layer "
                                  f"{', '.join(repr(m) for m in missing)}")
        self.graph = graph
        self.activation_checkpointing = activation_checkpointing
        self._blocks: list[Block] = []  # the outermost blocks, in order (FSDP wraps each)
        self._depth = 0  # while planning: how many repeated sequentials enclose the node
        self._plan = self._steps(graph.root.children)
        self._chain = self._chain_of(graph)

    def _chain_of(self, graph: Graph) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
        """The forward as a plain chain of layer calls, where the graph allows one: no image layer (so no layout
        to track) and no container but plain ``sequential`` s. Else None, and the plan runs."""
        if any(isinstance(node.layer, SPATIAL) for node in graph.nodes()):
            return None
        chain: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for step in self._plan:
            links = getattr(step, "chain", None)
            if links is None:
                return None
            chain += links
        return chain

    def _dropout(self, rate: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: F.dropout(x, rate, self.training) if rate > 0 else x

    def _steps(self, nodes: list[Node]) -> list[Step]:
        return [self._step(node) for node in nodes]

    def _repeated(self, node: Node) -> Step:
        """A repeated ``sequential``: one :class:`Block` per repetition, each called as a module."""
        blocks = []
        self._depth += 1
        for child in node.children:
            block = Block()
            _attach(self, child.path, block)
            block.plan = self._steps(child.children)
            blocks.append(block)
        self._depth -= 1
        if self._depth:  # inside an outer block: that one is the unit of sharding and recomputation
            return lambda x, nchw: _run_blocks(blocks, x, nchw)
        self._blocks += blocks

        def repeated(x: torch.Tensor, nchw: bool) -> tuple[torch.Tensor, bool]:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                for block in blocks:
                    x, nchw = checkpoint(block, x, nchw, use_reentrant=False)
                return x, nchw
            return _run_blocks(blocks, x, nchw)

        return repeated

    def _step(self, node: Node) -> Step:
        layer = node.layer
        if isinstance(layer, L.Sequential):
            if layer.repeated:
                return self._repeated(node)
            plan = self._steps(node.children)
            return _with_chain(lambda x, nchw: _run(plan, x, nchw), plan)
        if isinstance(layer, L.Residual):
            plan = self._steps(node.children)

            def residual(x: torch.Tensor, nchw: bool) -> tuple[torch.Tensor, bool]:
                y, y_nchw = _run(plan, x, nchw)
                return x + _layout(y, y_nchw, nchw), nchw

            return residual
        if isinstance(layer, L.TiedHead):  # logits from the embedding's table, no parameter of its own
            owner, _, local = layer.weight_name.rpartition(".")
            table = self.get_submodule(owner)  # read at each call: FSDP swaps the parameter object
            return lambda x, nchw: (F.linear(_layout(x, nchw, False), getattr(table, local)), False)
        module = lower_layer(node, self._dropout)
        _attach(self, node.path, module)
        # a parameter-free layer runs its function directly: ``nn.Module.__call__`` (hook checks) costs
        # microseconds per layer per step, which a small model's step notices; the module stays attached
        fn = module.fn if type(module) is Stateless else module
        if isinstance(layer, SPATIAL):
            keeps = not (isinstance(layer, L.Pool) and layer.is_global)
            return lambda x, nchw: (fn(_layout(x, nchw, True)), keeps)
        if isinstance(layer, L.Dropout) or (isinstance(layer, L.Activation) and layer.fn != "softmax"):
            return _with_chain(lambda x, nchw: (fn(x), nchw), None, fn)  # elementwise: either layout
        return _with_chain(lambda x, nchw: (fn(_layout(x, nchw, False)), False), None, fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's outputs for a batch in the canonical layout (NHWC images, int ids)."""
        if self._chain is not None:
            for link in self._chain:
                x = link(x)
            return x
        y, nchw = _run(self._plan, x, False)
        return _layout(y, nchw, False)


def repeated_blocks(module: nn.Module) -> list[Block]:
    """The blocks of a lowered graph's outermost repeated ``sequential`` s (a GPT's ``h.0``, ``h.1``, ...), in
    order; none for another module. A function, not a method: a graph may name a layer ``blocks``."""
    return list(getattr(module, "_blocks", []))


def _layout(x: torch.Tensor, nchw: bool, want_nchw: bool) -> torch.Tensor:
    """``x`` (NCHW when ``nchw``) in the wanted layout; only rank-4 tensors are ever NCHW."""
    if nchw == want_nchw or x.dim() != 4:
        return x
    return x.permute(0, 3, 1, 2) if want_nchw else x.permute(0, 2, 3, 1)


def _with_chain(step: Step, plan: list[Step] | None, fn: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> Step:
    """``step``, marked with the layer calls it makes when no layout is tracked (``step.chain``): ``[fn]`` for a
    leaf, its children's calls in order for a ``sequential`` whose children all have them."""
    if plan is None:
        step.chain = [fn]  # type: ignore[attr-defined]
    elif all(hasattr(child, "chain") for child in plan):
        step.chain = [link for child in plan for link in child.chain]  # type: ignore[attr-defined]
    return step


def _run(plan: list[Step], x: torch.Tensor, nchw: bool) -> tuple[torch.Tensor, bool]:
    for step in plan:
        x, nchw = step(x, nchw)
    return x, nchw


def _run_blocks(blocks: list[Block], x: torch.Tensor, nchw: bool) -> tuple[torch.Tensor, bool]:
    for block in blocks:
        x, nchw = block(x, nchw)
    return x, nchw


def build_module(graph: Graph, activation_checkpointing: bool = False) -> GraphModule:
    """The native module of ``graph`` (weights still to be loaded with ``load_canonical``); with
    ``activation_checkpointing`` the blocks of repeated ``sequential`` s are recomputed in the backward pass."""
    module = GraphModule(graph, activation_checkpointing)
    if any(n.lora for n in graph.nodes()):  # LoRA adapters (crossframe_torch.adapters)
        from crossframe_torch.adapters import attach_adapters

        attach_adapters(module, graph)
    return module

