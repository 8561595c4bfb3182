"""``model: {name: graph, layers: [...]}``: a model written as neutral layers in the config file."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ConfigDict, Field

from crossframe.data.dataset import DataInfo
from crossframe.errors import ConfigError
from crossframe.models.spec import LowRank, LowRankModelParams, ModelSpec
from crossframe.nn.graph import Graph, LayerLookup, build_graph
from crossframe.nn.layers import Layer


class GraphParams(LowRankModelParams):
    """Params of ``model: {name: graph}``; ``low_rank`` keys are dense layer paths (``h.0.mlp.up``)."""

    model_config = ConfigDict(extra="forbid")
    layers: list[Any] = Field(min_length=1, description="the layers, first to last (see docs/layers.md)")
    low_rank: LowRank


def registry_lookup(kind: str, where: str) -> type[Layer]:
    """The layer class registered as ``kind`` (built-in or a plugin's), or a one-line ConfigError."""
    from crossframe.plugins import component

    return component("layer", kind, where).obj


def expected_output(info: DataInfo) -> tuple[int, ...]:
    """The per-example output shape the dataset's task needs."""
    if info.task == "language_modeling":
        return (*info.input_shape, info.num_outputs)
    return (info.num_outputs,)


def spec_from_graph(name: str, params: dict[str, Any], info: DataInfo, graph: Graph) -> ModelSpec:
    """A :class:`ModelSpec` for ``graph``: its table, its reference forward, and the graph for the lowerings."""
    wanted = expected_output(info)
    if tuple(graph.output_shape) != wanted:
        raise ConfigError(f"model.layers: the last layer gives {tuple(graph.output_shape)} per example; "
                          f"the {info.task} data needs {wanted} (end with {{dense: outputs}})")
    if graph.takes_ids != (info.task == "language_modeling"):
        what = "token ids (start with an embedding)" if info.task == "language_modeling" else "features"
        raise ConfigError(f"model.layers: the {info.task} data gives {what}; the first layer does not fit them")

    def forward(weights: Any, x: np.ndarray) -> np.ndarray:
        return graph.reference(weights, x)

    return ModelSpec(name, params, info, graph.table, forward, graph=graph)


def unsupported_layers(graph: Graph, backend: str) -> list[str]:
    """The graph's plugin layer kinds with no implementation registered for ``backend`` (built-ins run on
    every first-party backend)."""
    from crossframe.nn.layers import BUILTIN_LAYERS
    from crossframe.plugins import get_plugin_manager

    builtin = {cls.kind for cls in BUILTIN_LAYERS}
    registered = get_plugin_manager().components("layer")
    return sorted(k for k in graph.kinds() if k not in builtin and backend not in registered[k].extra)


def check_backend_layers(graph: Graph, backend: str) -> None:
    """Raise a one-line :class:`CapabilityError` naming the layers ``backend`` cannot run, and where they run."""
    from crossframe.errors import CapabilityError
    from crossframe.plugins import get_plugin_manager

    missing = unsupported_layers(graph, backend)
    if missing:
        registered = get_plugin_manager().components("layer")
        where = "; ".join(f"'{k}' runs on {', '.join(sorted(registered[k].extra)) or 'no backend'}" for k in missing)
        raise CapabilityError(f"model.layers: backend '{backend}' has no implementation of layer "
                              f"{', '.join(repr(k) for k in missing)} ({where})")


def build_graph_model(params: GraphParams, info: DataInfo, lookup: LayerLookup = registry_lookup) -> ModelSpec:
    """The spec of the graph ``params.layers`` on ``info``'s inputs."""
    graph = build_graph(params.layers, info.input_shape, info.num_outputs, lookup, low_rank=params.low_rank)
    return spec_from_graph("graph", params.model_dump(), info, graph)
