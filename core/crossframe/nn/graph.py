"""A model as a tree of neutral layers: parsed from config, named, shaped, and run as numpy.

Config items (``model.layers``) are written as::

    - relu                                   # a bare name: an activation or a layer with no params
    - {dense: 10}                            # a scalar or a list fills the layer's shorthand field
    - {conv2d: {filters: 32, kernel: 3, padding: same}}
    - {residual: [{norm: layer}, {attention: {heads: 4}}]}
    - {sequential: {name: h, repeat: 4, layers: [...]}}

Names: the children of a container are named by position (``0``, ``1``, ...) or by their ``name``;
``name: ""`` puts a container's children straight into its parent's namespace. A parameter's
canonical name is the path of its layer and its local name: ``h.0.attn.qkv.weight``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from crossframe.errors import ConfigError
from crossframe.models.spec import ParamSpec, check_low_rank, dense_kernel_specs
from crossframe.nn.layers import (
    ACTIVATION_FUNCTIONS,
    Activation,
    Attention,
    Dropout,
    Layer,
    Residual,
    Sequential,
    Shape,
    TiedHead,
)
from crossframe.validation import describe

#: looks up a layer class by kind (``dense`` -> Dense); the graph model passes the plugin registry's
LayerLookup = Callable[[str, str], type[Layer]]


@dataclass
class Node:
    """One layer placed in the graph: its path, shapes and parameters (full canonical names)."""

    path: str
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    where: str  # the config location, for messages (``model.layers.2.residual.0``)
    params: list[ParamSpec] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    #: LoRA: adapted linears of this layer (canonical prefix -> alpha / rank); see :mod:`crossframe.nn.lora`
    lora: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The layer's kind (``dense``, ``residual``, ...)."""
        return self.layer.kind

    def param_name(self, local: str) -> str:
        """The canonical name of local parameter ``local`` of this node."""
        return f"{self.path}.{local}" if self.path else local

    def walk(self) -> Iterator[Node]:
        """This node and every node below it, depth first, in order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def local_weights(self, weights: Mapping[str, Any]) -> dict[str, Any]:
        """This node's own parameters from a full weight dict, under their local names."""
        prefix = f"{self.path}." if self.path else ""
        return {p.name[len(prefix):]: weights[p.name] for p in self.params}

    def reference(self, weights: Mapping[str, np.ndarray], x: np.ndarray, train: bool = False,
                  attention: list[np.ndarray] | None = None) -> np.ndarray:
        """The float64 numpy forward of this node on a batch ``x``; each attention layer's weights
        ``[B, heads, T, T]`` are appended to ``attention`` when it is a list."""
        if isinstance(self.layer, Sequential):
            for child in self.children:
                x = child.reference(weights, x, train, attention)
            return x
        if isinstance(self.layer, Residual):
            h = x
            for child in self.children:
                h = child.reference(weights, h, train, attention)
            return x + h
        if isinstance(self.layer, TiedHead):  # reads another layer's table
            return self.layer.reference({"weight": np.asarray(weights[self.layer.weight_name], np.float64)}, x, train)
        local = {k: np.asarray(v, np.float64) for k, v in self.local_weights(weights).items()}
        if self.lora:  # adapters folded into the kernels: W + scale * A @ B
            prefix = f"{self.path}." if self.path else ""
            for name, scale in self.lora.items():
                own = name[len(prefix):] + "." if name != self.path else ""
                local[f"{own}weight"] = local[f"{own}weight"] + scale * local.pop(f"{own}lora_a") @ local.pop(
                    f"{own}lora_b")
        for factor in [k for k in local if k == "weight_u" or k.endswith(".weight_u")]:  # low rank: U @ V
            own = factor[: -len("weight_u")]
            local[f"{own}weight"] = local.pop(factor) @ local.pop(f"{own}weight_v")
        if attention is not None and isinstance(self.layer, Attention):
            y, weights_ = self.layer.reference_with_weights(local, x)
            attention.append(weights_)
            return y
        return self.layer.reference(local, x, train)

    @property
    def flops(self) -> int:
        """Forward FLOPs per example of this node (containers: their children's, plus the residual add)."""
        if self.children or isinstance(self.layer, Sequential | Residual):
            extra = math.prod(self.out_shape) if isinstance(self.layer, Residual) else 0
            return extra + sum(c.flops for c in self.children)
        if isinstance(self.layer, TiedHead):
            return 2 * math.prod(self.in_shape) * self.out_shape[-1]
        return self.layer.flops(self.in_shape)


@dataclass
class Graph:
    """A whole model: the root node, its input (shape, ids or features) and its parameter table."""

    root: Node
    input_shape: Shape
    takes_ids: bool
    #: LoRA: the adapters' input dropout while training (see :mod:`crossframe.nn.lora_dropout`)
    lora_dropout: float = 0.0

    @property
    def table(self) -> list[ParamSpec]:
        """Every parameter, in graph order."""
        return [p for node in self.root.walk() for p in node.params]

    @property
    def output_shape(self) -> Shape:
        """Per-example output shape."""
        return self.root.out_shape

    def nodes(self) -> list[Node]:
        """Every leaf layer (no containers), in order."""
        return [n for n in self.root.walk() if not isinstance(n.layer, Sequential | Residual)]

    @property
    def has_dropout(self) -> bool:
        """Whether training draws random numbers: a dropout layer, or attention dropout, with a positive rate."""
        return any((isinstance(n.layer, Dropout) and n.layer.rate > 0)
                   or (isinstance(n.layer, Attention) and n.layer.dropout > 0) for n in self.root.walk())

    def kinds(self) -> set[str]:
        """Every layer kind used (containers included)."""
        return {n.kind for n in self.root.walk()}

    def reference(self, weights: Mapping[str, np.ndarray], x: np.ndarray, train: bool = False,
                  attention: list[np.ndarray] | None = None) -> np.ndarray:
        """The float64 numpy forward on a batch (ids stay integers); ``attention``, a list, collects each
        attention layer's weights ``[B, heads, T, T]`` in graph order."""
        x = np.asarray(x) if self.takes_ids else np.asarray(x, np.float64)
        return self.root.reference(weights, x, train, attention)

    @property
    def flops(self) -> int:
        """Forward FLOPs per example."""
        return self.root.flops

    def summary_rows(self) -> list[tuple[str, str, str, int, int]]:
        """``(name, kind, output shape, params, FLOPs per example)`` per node, containers included."""
        rows = []
        for node in self.root.walk():
            if node is self.root:
                continue
            count = sum(math.prod(p.shape) for n in node.walk() for p in n.params)
            kind = node.layer.fn if isinstance(node.layer, Activation) else node.kind
            rows.append((node.path or "(root)", kind, str(tuple(node.out_shape)), count, node.flops))
        return rows


# --------------------------------------------------------------------------- parsing


def _item(raw: Any, where: str, lookup: LayerLookup) -> Layer:
    """One config item as a validated layer."""
    if isinstance(raw, str):
        if raw in ACTIVATION_FUNCTIONS:
            return Activation(fn=raw)
        kind, value = raw, None
    elif isinstance(raw, Mapping) and len(raw) == 1:
        kind, value = next(iter(raw.items()))
    else:
        raise ConfigError(f"{where}: a layer is a name ('relu') or one {{kind: params}} mapping, got {raw!r}")
    cls = lookup(str(kind), where)
    if value is None:
        params: dict[str, Any] = {}
    elif isinstance(value, Mapping):
        params = dict(value)
    elif cls.shorthand is not None:
        params = {cls.shorthand: value}
    else:
        raise ConfigError(f"{where}.{kind}: takes a mapping of params, got {value!r}")
    try:
        return cls.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(describe(exc, cls, prefix=f"{where}.{kind}")) from None


def _resolve_outputs(layer: Layer, num_outputs: int) -> Layer:
    updates = {f: num_outputs for f in ("units", "vocab") if getattr(layer, f, None) == "outputs"}
    return layer.model_copy(update=updates) if updates else layer


class _Builder:
    def __init__(self, lookup: LayerLookup, num_outputs: int, low_rank: Mapping[str, int] | None = None) -> None:
        self.lookup = lookup
        self.num_outputs = num_outputs
        self.seen: dict[str, str] = {}
        self.low_rank = dict(low_rank or {})
        self.dense: dict[str, tuple[int, int]] = {}  # factorisable layers: path -> (in, out)
        self.shapes: dict[str, tuple[int, ...]] = {}  # every parameter so far: canonical name -> shape

    def children(self, items: Any, path: str, shape: Shape, where: str) -> tuple[list[Node], Shape]:
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{where}: needs a non-empty list of layers")
        nodes = []
        for i, raw in enumerate(items):
            node = self.node(_item(raw, f"{where}.{i}", self.lookup), str(i), path, shape, f"{where}.{i}")
            nodes.append(node)
            shape = node.out_shape
        return nodes, shape

    def node(self, layer: Layer, index: str, parent: str, shape: Shape, where: str) -> Node:
        layer = _resolve_outputs(layer, self.num_outputs)
        own = index if layer.name is None else layer.name
        path = ".".join(p for p in (parent, own) if p)
        if own and path in self.seen:
            raise ConfigError(f"{where}.name: '{own}' repeats the name of {self.seen[path]}")
        self.seen[path] = where
        if isinstance(layer, Sequential):
            if not layer.repeated:
                children, out = self.children(layer.layers, path, shape, f"{where}.layers")
            else:
                children, out = [], shape
                for r in range(layer.repeat):
                    block = Sequential(layers=layer.layers)
                    child = self.node(block, str(r), path, out, f"{where}.layers")
                    children.append(child)
                    out = child.out_shape
            return Node(path, layer, shape, out, where, children=children)
        if isinstance(layer, Residual):
            children, out = self.children(layer.layers, path, shape, f"{where}.layers")
            if tuple(out) != tuple(shape):
                raise ConfigError(f"{where}: a residual body must keep the shape {shape}, it gives {out}")
            return Node(path, layer, shape, shape, where, children=children)
        if not own:
            raise ConfigError(f"{where}.name: only a container (sequential, residual) may have an empty name")
        if isinstance(layer, TiedHead):
            return self.tied(layer, path, shape, where)
        try:
            out = tuple(int(d) for d in layer.output_shape(tuple(shape)))
            local = layer.param_specs(tuple(shape))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        node = Node(path, layer, tuple(shape), out, where)
        node.params = [factor for p in local for factor in self.factorised(node, p)]
        self.shapes.update((p.name, tuple(p.shape)) for p in node.params)
        return node

    def factorised(self, node: Node, local: ParamSpec) -> list[ParamSpec]:
        """``local`` under its canonical name; a dense kernel (``weight``, ``qkv.weight``, ...) whose linear is in
        ``low_rank`` becomes its two factors ``weight_u`` ``[in, r]`` and ``weight_v`` ``[r, out]``, drawn so that
        their product has the kernel's std."""
        name = node.param_name(local.name)
        if local.layout != "dense" or not (local.name == "weight" or local.name.endswith(".weight")):
            return [ParamSpec(name, local.shape, local.layout, local.init, local.scale, local.decay, local.dtype)]
        prefix = name[: -len(".weight")]
        fan_in, fan_out = local.shape
        self.dense[prefix] = (fan_in, fan_out)
        if prefix not in self.low_rank:
            return [ParamSpec(name, local.shape, local.layout, local.init, local.scale, local.decay, local.dtype)]
        return dense_kernel_specs(prefix, fan_in, fan_out, local.scale, self.low_rank[prefix])

    def tied(self, layer: TiedHead, path: str, shape: Shape, where: str) -> Node:
        """A ``tied_head``: logits over the rows of an embedding table placed earlier in the graph."""
        table = self.shapes.get(layer.weight_name)
        if table is None or len(table) != 2:
            raise ConfigError(f"{where}.embedding: no embedding '{layer.embedding}' before this layer")
        if not shape or shape[-1] != table[1]:
            raise ConfigError(f"{where}: inputs of width {shape[-1] if shape else 0} do not fit "
                              f"'{layer.embedding}' ({table[1]} wide)")
        return Node(path, layer, tuple(shape), (*shape[:-1], table[0]), where)


def build_graph(layers: list[Any], input_shape: Shape, num_outputs: int, lookup: LayerLookup,
                where: str = "model.layers", low_rank: Mapping[str, int] | None = None) -> Graph:
    """Parse ``layers`` (config items) for inputs of per-example ``input_shape``; ``units: outputs`` and
    ``vocab: outputs`` become ``num_outputs``; ``low_rank`` (``{dense layer path: rank}``) factorises those
    dense layers. Bad items, shapes or names are one-line ConfigErrors."""
    builder = _Builder(lookup, num_outputs, low_rank)
    children, out = builder.children(layers, "", tuple(input_shape), where)
    if builder.low_rank:
        check_low_rank(builder.low_rank, builder.dense)
    root = Node("", Sequential(layers=list(layers)), tuple(input_shape), out, where, children=children)
    leaves = [n for n in root.walk() if not isinstance(n.layer, Sequential | Residual)]
    return Graph(root, tuple(input_shape), bool(leaves and leaves[0].layer.takes_ids))
