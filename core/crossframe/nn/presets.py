"""The hand-written ``mlp`` and ``cnn`` as graphs of neutral layers, under the same canonical names.

``mlp_layers(params)`` and ``cnn_layers(params)`` give the ``model.layers`` of a graph whose parameter
table equals the hand-written model's (names, shapes, layouts, initial distributions), so its
checkpoints load into the graph unchanged and the same seed gives the same weights. The registered
``mlp`` and ``cnn`` still build the hand-written specs (see docs/layers.md, "Presets").
"""

from __future__ import annotations

from typing import Any

#: the hand-written models' activation names -> the layer library's (their ``gelu`` is the tanh form)
ACTIVATION = {"relu": "relu", "tanh": "tanh", "gelu": "gelu_tanh"}


def mlp_layers(params: dict[str, Any]) -> list[Any]:
    """``model.layers`` of the ``mlp`` with ``params`` (``hidden``, ``activation``): flatten, then dense
    layers named ``layers.{i}`` with the activation between them."""
    act = ACTIVATION[params.get("activation", "relu")]
    hidden = list(params.get("hidden", [128, 64]))
    out: list[Any] = ["flatten"]
    for i, width in enumerate(hidden):
        out += [{"dense": {"name": f"layers.{i}", "units": width, "gain": 2.0}}, act]
    return [*out, {"dense": {"name": f"layers.{len(hidden)}", "units": "outputs", "gain": 1.0}}]


def cnn_layers(params: dict[str, Any]) -> list[Any]:
    """``model.layers`` of the ``cnn`` with ``params`` (``channels``, ``kernel_size``, ``hidden``,
    ``activation``): 'same' conv + activation + 2x2 max-pool blocks named ``conv.{i}``, then ``fc.0``, ``fc.1``."""
    act = ACTIVATION[params.get("activation", "relu")]
    out: list[Any] = []
    for i, channels in enumerate(params.get("channels", [16, 32])):
        conv = {"name": f"conv.{i}", "filters": channels, "kernel": params.get("kernel_size", 3), "padding": "same"}
        out += [{"conv2d": conv}, act, {"pool": {"kind": "max", "size": 2}}]
    return [*out, "flatten", {"dense": {"name": "fc.0", "units": params.get("hidden", 64), "gain": 2.0}}, act,
            {"dense": {"name": "fc.1", "units": "outputs", "gain": 1.0}}]
