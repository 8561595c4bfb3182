"""``mlp``: a multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, PositiveInt, ValidationInfo, field_validator

from crossframe.data.dataset import DataInfo
from crossframe.models import reference as ref
from crossframe.models.spec import (
    LowRank,
    LowRankModelParams,
    ModelSpec,
    ParamSpec,
    check_low_rank,
    check_low_rank_layers,
    dense_apply,
    dense_kernel_specs,
)


class MLPParams(LowRankModelParams):
    """Params of ``model: {name: mlp}``."""

    model_config = ConfigDict(extra="forbid")
    hidden: list[PositiveInt] = Field(default_factory=lambda: [128, 64], description="hidden layer widths")
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="after each hidden activation, in training only")
    low_rank: LowRank

    @field_validator("low_rank")
    @classmethod
    def _known_layers(cls, value: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        n_layers = len(info.data.get("hidden", [])) + 1
        return check_low_rank_layers(value, [f"layers.{i}" for i in range(n_layers)])


def dense_layer(prefix: str, fan_in: int, fan_out: int, gain: float = 2.0, rank: int | None = None
                ) -> list[ParamSpec]:
    """Weight (normal, std ``sqrt(gain / fan_in)``; two factors with ``rank``) and zero bias of one dense layer."""
    return [
        *dense_kernel_specs(prefix, fan_in, fan_out, math.sqrt(gain / fan_in), rank),
        ParamSpec(f"{prefix}.bias", (fan_out,), "bias", decay=False),
    ]


def build_mlp(params: MLPParams, info: DataInfo) -> ModelSpec:
    """The spec of an MLP from ``info.input_shape`` (flattened) to ``info.num_outputs``."""
    widths = [math.prod(info.input_shape), *params.hidden, info.num_outputs]
    dims = {f"layers.{i}": (a, b) for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))}
    check_low_rank(params.low_rank, dims)
    table: list[ParamSpec] = []
    for i, (fan_in, fan_out) in enumerate(dims.values()):
        last = i == len(widths) - 2
        table += dense_layer(f"layers.{i}", fan_in, fan_out, gain=1.0 if last else 2.0,
                             rank=params.low_rank.get(f"layers.{i}"))
    n_layers = len(widths) - 1

    def forward(w: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        h = x.reshape(len(x), -1)
        for i in range(n_layers):
            h = dense_apply(w, f"layers.{i}", h)
            if i < n_layers - 1:
                h = ref.activation(params.activation, h)
        return h

    return ModelSpec("mlp", params.model_dump(), info, table, forward)
