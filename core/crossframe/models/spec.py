"""Model specs: the canonical parameter table, a seeded initialiser and a numpy reference forward.

Canonical layouts (every backend converts to and from these exactly):

- ``dense``: ``[in, out]`` (``y = x @ W + b``)
- ``conv2d``: ``[kh, kw, in, out]`` (HWIO) on NHWC inputs
- ``bias``, ``norm_scale``, ``norm_bias``: ``[n]``
- ``embedding``: ``[vocab, dim]``
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossframe.data.dataset import DataInfo
from crossframe.errors import CheckpointError

Params = dict[str, np.ndarray]
LAYOUTS = ("dense", "conv2d", "bias", "norm_scale", "norm_bias", "embedding")


@dataclass(frozen=True)
class ParamSpec:
    """One canonical parameter: its name, shape, layout, initial distribution and decay."""

    name: str
    shape: tuple[int, ...]
    layout: str
    init: str = "zeros"  # zeros | ones | normal | uniform
    scale: float = 0.0  # std for normal, bound for uniform
    decay: bool = True  # whether weight decay applies
    dtype: str = "float32"

    def initial_value(self, seed: int) -> np.ndarray:
        """The seeded initial value; each parameter draws from its own stream keyed by its name."""
        rng = np.random.default_rng([seed, zlib.crc32(self.name.encode())])
        if self.init == "zeros":
            value = np.zeros(self.shape)
        elif self.init == "ones":
            value = np.ones(self.shape)
        elif self.init == "normal":
            value = rng.normal(0.0, self.scale, self.shape)
        elif self.init == "uniform":
            value = rng.uniform(-self.scale, self.scale, self.shape)
        else:  # pragma: no cover - guarded by the model definitions
            raise ValueError(f"unknown init '{self.init}'")
        return value.astype(self.dtype)


@dataclass
class ModelSpec:
    """Everything a backend needs to build a model, and the numpy truth it must match."""

    name: str
    params: dict[str, Any]
    data_info: DataInfo
    table: list[ParamSpec]
    reference_forward: Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray] = field(repr=False)

    def init(self, seed: int) -> Params:
        """Canonical initial weights for ``seed``: identical on every backend."""
        return {p.name: p.initial_value(seed) for p in self.table}

    def forward(self, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        """The numpy reference forward pass (float64 inside, float32 out)."""
        return self.reference_forward(weights, x).astype(np.float32)

    @property
    def param_count(self) -> int:
        """Number of scalar parameters."""
        return int(sum(np.prod(p.shape) for p in self.table))

    def check_weights(self, weights: Mapping[str, np.ndarray], source: str = "weights") -> None:
        """Raise :class:`CheckpointError` unless ``weights`` has exactly the table's names and shapes."""
        expected = {p.name: p.shape for p in self.table}
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        if missing or extra:
            raise CheckpointError(
                f"{source}: parameters do not match model '{self.name}' "
                f"(missing: {missing[:3] or 'none'}, unexpected: {extra[:3] or 'none'})")
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                raise CheckpointError(
                    f"{source}: '{name}' has shape {tuple(weights[name].shape)}, model expects {shape}")

    def to_json(self) -> dict:
        """What rebuilds this spec: architecture name, params and data info."""
        return {"name": self.name, "params": self.params, "data_info": self.data_info.to_json()}
