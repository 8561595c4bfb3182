"""``cnn``: a small convolutional classifier (conv + ReLU + 2x2 max-pool blocks, then dense)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, PositiveInt, field_validator

from crossframe.data.dataset import DataInfo
from crossframe.errors import ConfigError
from crossframe.models import reference as ref
from crossframe.models.mlp import dense_layer
from crossframe.models.spec import (
    LowRank,
    LowRankModelParams,
    ModelSpec,
    ParamSpec,
    check_low_rank,
    check_low_rank_layers,
    dense_apply,
)

#: the dense layers ``low_rank`` can factorise
FC_LAYERS = ["fc.0", "fc.1"]


class CNNParams(LowRankModelParams):
    """Params of ``model: {name: cnn}``."""

    model_config = ConfigDict(extra="forbid")
    channels: list[PositiveInt] = Field(default_factory=lambda: [16, 32], description="channels per conv block")
    kernel_size: PositiveInt = 3
    hidden: PositiveInt = 64
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="before the last dense layer, in training only")
    low_rank: LowRank

    @field_validator("low_rank")
    @classmethod
    def _known_layers(cls, value: dict[str, int]) -> dict[str, int]:
        return check_low_rank_layers(value, FC_LAYERS)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd (padding is 'same')")
        return value


def build_cnn(params: CNNParams, info: DataInfo) -> ModelSpec:
    """The spec of a CNN on NHWC images ``info.input_shape == (H, W, C)``."""
    if len(info.input_shape) != 3:
        raise ConfigError(f"model.name: 'cnn' needs image inputs (H, W, C); the dataset gives {info.input_shape}")
    h, w, c = info.input_shape
    k = params.kernel_size
    table: list[ParamSpec] = []
    for i, out in enumerate(params.channels):
        fan_in = k * k * c
        table += [
            ParamSpec(f"conv.{i}.weight", (k, k, c, out), "conv2d", "normal", math.sqrt(2.0 / fan_in)),
            ParamSpec(f"conv.{i}.bias", (out,), "bias", decay=False),
        ]
        c, h, w = out, h // 2, w // 2
        if h == 0 or w == 0:
            raise ConfigError(f"model.channels: {len(params.channels)} pooling blocks shrink "
                              f"{info.input_shape[:2]} images to nothing; use fewer")
    flat = h * w * c
    check_low_rank(params.low_rank, {"fc.0": (flat, params.hidden), "fc.1": (params.hidden, info.num_outputs)})
    rank = params.low_rank.get
    table += dense_layer("fc.0", flat, params.hidden, rank=rank("fc.0"))
    table += dense_layer("fc.1", params.hidden, info.num_outputs, 1.0, rank=rank("fc.1"))
    n_conv = len(params.channels)

    def forward(wts: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        y = x
        for i in range(n_conv):
            y = ref.conv2d_same(y, wts[f"conv.{i}.weight"], wts[f"conv.{i}.bias"])
            y = ref.max_pool2(ref.activation(params.activation, y))
        y = y.reshape(len(y), -1)  # NHWC flatten order
        y = ref.activation(params.activation, dense_apply(wts, "fc.0", y))
        return dense_apply(wts, "fc.1", y)

    return ModelSpec("cnn", params.model_dump(), info, table, forward)
