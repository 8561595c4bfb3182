"""``mlp``: a multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from crossframe.data.dataset import DataInfo
from crossframe.models import reference as ref
from crossframe.models.spec import ModelSpec, ParamSpec


class MLPParams(BaseModel):
    """Params of ``model: {name: mlp}``."""

    model_config = ConfigDict(extra="forbid")
    hidden: list[PositiveInt] = Field(default_factory=lambda: [128, 64], description="hidden layer widths")
    activation: Literal["relu", "gelu", "tanh"] = "relu"


def dense_layer(prefix: str, fan_in: int, fan_out: int, gain: float = 2.0) -> list[ParamSpec]:
    """Weight (normal, std ``sqrt(gain / fan_in)``) and zero bias of one dense layer."""
    return [
        ParamSpec(f"{prefix}.weight", (fan_in, fan_out), "dense", "normal", math.sqrt(gain / fan_in)),
        ParamSpec(f"{prefix}.bias", (fan_out,), "bias", decay=False),
    ]


def build_mlp(params: MLPParams, info: DataInfo) -> ModelSpec:
    """The spec of an MLP from ``info.input_shape`` (flattened) to ``info.num_outputs``."""
    widths = [math.prod(info.input_shape), *params.hidden, info.num_outputs]
    table: list[ParamSpec] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        last = i == len(widths) - 2
        table += dense_layer(f"layers.{i}", fan_in, fan_out, gain=1.0 if last else 2.0)
    n_layers = len(widths) - 1

    def forward(w: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        h = x.reshape(len(x), -1)
        for i in range(n_layers):
            h = ref.dense(h, w[f"layers.{i}.weight"], w[f"layers.{i}.bias"])
            if i < n_layers - 1:
                h = ref.activation(params.activation, h)
        return h

    return ModelSpec("mlp", params.model_dump(), info, table, forward)
