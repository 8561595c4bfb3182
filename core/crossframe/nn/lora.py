"""LoRA on any graph: low-rank adapters beside chosen linears, found by layer type, never by model name.

A targeted linear with kernel ``W`` ``[in, out]`` gains ``lora_a`` ``[in, r]`` (normal, std ``1 / sqrt(in)``)
and ``lora_b`` ``[r, out]`` (zeros, so training starts from the base model), and computes with
``W + (alpha / r) * lora_a @ lora_b``. Every base weight is frozen; only the adapters train.
:func:`merge` folds them into the base kernels (what ``export --format hf`` writes).

Linears are named by canonical prefix: a ``dense`` layer by its path (``lm_head``), the projections of
an ``attention`` as ``<path>.qkv`` / ``<path>.proj``, those of a ``gated_mlp`` as ``<path>.gate`` / ``.up`` /
``.down``. ``targets`` are fnmatch patterns over these names.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from crossframe.errors import ConfigError
from crossframe.models.spec import ModelSpec, Params, ParamSpec
from crossframe.nn import layers as L
from crossframe.nn.graph import Graph, Node
from crossframe.validation import describe

#: the default targets: every attention's projections
DEFAULT_TARGETS = ["*qkv", "*attn.proj", "*self_attn.proj"]


class LoraConfig(BaseModel):
    """``train.lora: {rank, alpha, dropout, targets}``."""

    model_config = ConfigDict(extra="forbid")
    rank: PositiveInt = 8
    alpha: PositiveFloat = Field(16.0, description="the adapters' output is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapters' input while training "
                           "(the same entries on every backend: crossframe.nn.lora_dropout)")
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS),
                               description="fnmatch patterns over linear names (layers.*.self_attn.qkv, *mlp.up)")
    checkpoint: Literal["adapters", "full"] = Field(
        "adapters", description="what checkpoints hold: the adapters (and a reference to the base, with its sha256) "
                                "or the whole model")

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank


def linears(node: Node) -> dict[str, tuple[int, int]]:
    """The linears of a leaf node: canonical prefix (``h.0.attn.qkv``) -> ``(in, out)``."""
    layer = node.layer
    if isinstance(layer, L.Dense) and any(p.name == node.param_name("weight") for p in node.params):
        return {node.path: tuple(next(p.shape for p in node.params if p.name == node.param_name("weight")))}
    out = {}
    if isinstance(layer, L.Attention | L.GatedMLP):
        for p in node.params:
            if p.name.endswith(".weight"):
                out[p.name[: -len(".weight")]] = tuple(p.shape)
    return out


def all_linears(graph: Graph) -> dict[str, tuple[int, int]]:
    """Every adaptable linear of ``graph``."""
    return {name: dims for node in graph.nodes() for name, dims in linears(node).items()}


def adapter_names(spec: ModelSpec) -> set[str]:
    """The canonical names of ``spec``'s adapters."""
    return {p.name for p in spec.table if p.name.endswith((".lora_a", ".lora_b"))}


class LoraSpec(ModelSpec):
    """A spec with adapters: its initial weights are the base model's (pretrained or seeded) plus fresh adapters."""

    base: ModelSpec

    def init(self, seed: int) -> Params:
        """The base model's weights with zero-effect adapters."""
        weights = dict(self.base.init(seed))
        for p in self.table:
            if p.name not in weights:
                weights[p.name] = p.initial_value(seed)
        return weights


def apply_lora(spec: ModelSpec, config: LoraConfig | Mapping[str, Any], where: str = "train.lora") -> ModelSpec:
    """``spec`` with adapters on the linears ``config.targets`` names (a graph model; one-line errors)."""
    try:
        cfg = config if isinstance(config, LoraConfig) else LoraConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(describe(exc, LoraConfig, prefix=where)) from None
    if spec.graph is None:
        raise ConfigError(f"{where}: LoRA needs a model built from neutral layers (graph, hf), not '{spec.name}'")
    graph: Graph = copy.deepcopy(spec.graph)
    found = all_linears(graph)
    chosen = {n for n in found if any(fnmatch.fnmatchcase(n, t) for t in cfg.targets)}
    if not chosen:
        raise ConfigError(f"{where}.targets: {cfg.targets} match no linear of model '{spec.name}' "
                          f"(linears look like {', '.join(list(found)[:4])})")
    for node in graph.nodes():
        for name, (fan_in, fan_out) in linears(node).items():
            if name in chosen:
                node.params += [ParamSpec(f"{name}.lora_a", (fan_in, cfg.rank), "dense", "normal",
                                          1.0 / math.sqrt(fan_in), decay=False),
                                ParamSpec(f"{name}.lora_b", (cfg.rank, fan_out), "dense", decay=False)]
                node.lora[name] = cfg.scale
    graph.lora_dropout = cfg.dropout
    params = {**spec.params, "lora": cfg.model_dump()}
    out = LoraSpec(spec.name, params, spec.data_info, graph.table, graph.reference, graph=graph)
    out.base = spec
    return out


def lora_scales(graph: Graph) -> dict[str, float]:
    """``{linear prefix: alpha / rank}`` of every adapted linear of ``graph``."""
    return {name: scale for node in graph.nodes() for name, scale in node.lora.items()}


def merge(weights: Mapping[str, np.ndarray], scales: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Base weights with every adapter folded in (``W + scale * A @ B``, in float64 then the base's dtype);
    the adapters themselves are dropped."""
    out = {k: v for k, v in weights.items() if not k.endswith((".lora_a", ".lora_b"))}
    for name, scale in scales.items():
        w = np.asarray(out[f"{name}.weight"])
        delta = np.asarray(weights[f"{name}.lora_a"], np.float64) @ np.asarray(weights[f"{name}.lora_b"], np.float64)
        out[f"{name}.weight"] = (w.astype(np.float64) + scale * delta).astype(w.dtype)
    return out


def base_spec(spec: ModelSpec) -> ModelSpec:
    """The spec without adapters (itself when it has none)."""
    return getattr(spec, "base", spec)



