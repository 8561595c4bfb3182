"""Run a lowered graph on one backend: forward and gradients, as canonical numpy (test helpers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from crossframe.data.dataset import DataInfo
from crossframe.models.spec import ModelSpec
from crossframe.nn.graph import build_graph
from crossframe.nn.model import registry_lookup
from crossframe.testing.layers import directional_derivative  # noqa: F401 (re-exported for the tests)

BACKENDS = ("torch", "jax", "tensorflow")
U32 = 2.0**-24  # unit roundoff of float32


def graph_spec(layers: list[Any], input_shape: tuple[int, ...]) -> ModelSpec:
    """A spec around the graph of ``layers`` (no dataset check: any output shape)."""
    graph = build_graph(layers, input_shape, 3, registry_lookup)
    info = DataInfo("regression", tuple(input_shape), 3)
    return ModelSpec("graph", {"layers": layers}, info, graph.table, graph.reference, graph=graph)


def forward_and_grads(backend: str, spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray,
                      cotangent: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """``(outputs, d<out, cot>/d weights (canonical layouts), d<out, cot>/dx or None for ids)`` in float32."""
    import importlib

    return importlib.import_module(f"crossframe_{backend}.layer_check").forward_and_grads(spec, weights, x, cotangent)


