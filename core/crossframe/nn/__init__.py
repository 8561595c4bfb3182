"""Neutral layers: each defined once (parameter table, seeded init, shape inference, FLOPs, numpy
reference), composed into graphs that every backend lowers to one native model.

- :mod:`~crossframe.nn.layers`: the built-in layers
- :mod:`~crossframe.nn.graph`: config items -> a named, shaped tree (:class:`Graph`)
- :mod:`~crossframe.nn.model`: the ``graph`` model (``model: {name: graph, layers: [...]}``)
"""

from crossframe.nn.graph import Graph, Node, build_graph
from crossframe.nn.layers import BUILTIN_LAYERS, Layer

__all__ = ["BUILTIN_LAYERS", "Graph", "Layer", "Node", "build_graph"]
