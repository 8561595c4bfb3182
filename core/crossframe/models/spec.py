"""Model specs: the canonical parameter table, a seeded initialiser and a numpy reference forward.

Canonical layouts (every backend converts to and from these exactly):

- ``dense``: ``[in, out]`` (``y = x @ W + b``)
- ``conv2d``: ``[kh, kw, in, out]`` (HWIO) on NHWC inputs
- ``bias``, ``norm_scale``, ``norm_bias``: ``[n]``
- ``embedding``: ``[vocab, dim]``

Low rank (model param ``low_rank: {"<layer prefix>": r}``): the dense layer ``<prefix>`` keeps two
factors instead of its kernel, ``<prefix>.weight_u`` ``[in, r]`` and ``<prefix>.weight_v``
``[r, out]`` (both layout ``dense``), so ``y = (x @ U) @ V + b``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, PositiveInt, SerializerFunctionWrapHandler, model_serializer

from crossframe.data.dataset import DataInfo
from crossframe.errors import CheckpointError, ConfigError, did_you_mean

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
    #: the :class:`crossframe.nn.graph.Graph` of a model built from neutral layers (``None``: a hand-written one)
    graph: Any = field(default=None, repr=False)

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

    def check_checkpoint(self, weights: Mapping[str, np.ndarray], optimizer_state: Mapping[str, np.ndarray],
                         source: str) -> None:
        """Raise :class:`CheckpointError` unless a loaded checkpoint fits this model exactly.

        Beyond :meth:`check_weights`: every weight has the table's dtype (a float64 checkpoint is
        refused, never cast silently), and each optimizer slot ``<slot>/<param>`` names a parameter
        of the table and has its shape and dtype; ``step`` is one non-negative whole number.
        """
        self.check_weights(weights, source)
        table = {p.name: p for p in self.table}
        for name, param in table.items():
            if np.asarray(weights[name]).dtype != np.dtype(param.dtype):
                raise CheckpointError(f"{source}: '{name}' is {np.asarray(weights[name]).dtype}, model expects "
                                      f"{param.dtype} (convert the checkpoint explicitly; it is not cast)")
        for key, value in optimizer_state.items():
            value = np.asarray(value)
            if key == "step":
                if value.size != 1 or not np.isfinite(value).all() or value.reshape(-1)[0] < 0 \
                        or value.reshape(-1)[0] != np.floor(value.reshape(-1)[0]):
                    raise CheckpointError(f"{source}: optimizer 'step' must be one whole number >= 0")
                continue
            slot, _, pname = key.partition("/")
            param = table.get(pname)
            if not slot or param is None:
                raise CheckpointError(f"{source}: optimizer state '{key}' names no parameter of model '{self.name}'")
            if tuple(value.shape) != param.shape:
                raise CheckpointError(f"{source}: optimizer state '{key}' has shape {tuple(value.shape)}, "
                                      f"model expects {param.shape}")
            if value.dtype != np.dtype(param.dtype):
                raise CheckpointError(f"{source}: optimizer state '{key}' is {value.dtype}, model expects "
                                      f"{param.dtype} (it is not cast)")

    @property
    def low_rank(self) -> dict[str, int]:
        """Factorised dense layers: ``{layer prefix: rank}`` (empty for a full-rank model)."""
        return dict(self.params.get("low_rank") or {})

    def dense_dims(self, prefix: str) -> tuple[int, int]:
        """``(in, out)`` of the dense layer ``prefix``, full kernel or factorised."""
        shapes = {p.name: p.shape for p in self.table}
        if f"{prefix}.weight" in shapes:
            fan_in, fan_out = shapes[f"{prefix}.weight"]
            return int(fan_in), int(fan_out)
        u, v = low_rank_names(prefix)
        if u in shapes and v in shapes:
            return int(shapes[u][0]), int(shapes[v][1])
        raise KeyError(f"model '{self.name}' has no dense layer '{prefix}'")

    def to_json(self) -> dict:
        """What rebuilds this spec: architecture name, params and data info."""
        return {"name": self.name, "params": self.params, "data_info": self.data_info.to_json()}


# --------------------------------------------------------------------------- low rank


def low_rank_names(prefix: str) -> tuple[str, str]:
    """Canonical names of the two factors of the dense layer ``prefix``: ``U`` ``[in, r]``, ``V`` ``[r, out]``."""
    return f"{prefix}.weight_u", f"{prefix}.weight_v"


def dense_kernel_specs(prefix: str, fan_in: int, fan_out: int, std: float, rank: int | None = None
                       ) -> list[ParamSpec]:
    """The kernel of a dense layer (normal, std ``std``): ``<prefix>.weight``, or with ``rank`` its two factors.

    Each factor is drawn with std ``sqrt(std) / r**0.25``, so their product has std ``std`` as the full kernel.
    """
    if rank is None:
        return [ParamSpec(f"{prefix}.weight", (fan_in, fan_out), "dense", "normal", std)]
    u, v = low_rank_names(prefix)
    factor_std = math.sqrt(std) / rank ** 0.25
    return [ParamSpec(u, (fan_in, rank), "dense", "normal", factor_std),
            ParamSpec(v, (rank, fan_out), "dense", "normal", factor_std)]


def dense_kernel(weights: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    """The ``[in, out]`` kernel of layer ``prefix`` (``U @ V`` for a factorised layer), float64."""
    if f"{prefix}.weight" in weights:
        return np.asarray(weights[f"{prefix}.weight"], np.float64)
    u, v = low_rank_names(prefix)
    return np.asarray(weights[u], np.float64) @ np.asarray(weights[v], np.float64)


def dense_apply(weights: Mapping[str, np.ndarray], prefix: str, x: np.ndarray, bias: bool = True) -> np.ndarray:
    """Reference ``x @ W (+ b)`` of layer ``prefix`` in float64; ``(x @ U) @ V`` when it is factorised."""
    h = np.asarray(x, np.float64)
    if f"{prefix}.weight" in weights:
        y = h @ np.asarray(weights[f"{prefix}.weight"], np.float64)
    else:
        u, v = low_rank_names(prefix)
        y = (h @ np.asarray(weights[u], np.float64)) @ np.asarray(weights[v], np.float64)
    return y + np.asarray(weights[f"{prefix}.bias"], np.float64) if bias else y


def check_low_rank_layers(low_rank: Mapping[str, int],
                          layers: list[str] | Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """``low_rank`` if every key is one of ``layers`` and, where ``layers`` maps names to ``(in, out)``,
    every rank is within ``1..min(in, out)``; else a one-line :class:`ValueError` (for schema validators)."""
    names = list(layers)
    for name, rank in low_rank.items():
        if name not in names:
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            hint = did_you_mean(name, names)
            raise ValueError(f"unknown layer '{name}'{hint or f'; factorisable layers: {shown}'}")
        if isinstance(layers, Mapping):
            fan_in, fan_out = layers[name]
            if not 1 <= int(rank) <= min(fan_in, fan_out):
                raise ValueError(f"rank {rank} for '{name}' is outside 1..min(in, out) = "
                                 f"{min(fan_in, fan_out)} (the layer is [{fan_in}, {fan_out}])")
    return dict(low_rank)


def check_low_rank(low_rank: Mapping[str, int], dims: Mapping[str, tuple[int, int]],
                   where: str = "model.low_rank") -> None:
    """Raise :class:`ConfigError` (one line) unless each key is a layer of ``dims`` of rank 1..min(in, out)."""
    try:
        check_low_rank_layers(low_rank, dims)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


LOW_RANK_DESCRIPTION = ("factorise dense layers: {layer prefix: rank}; kernel [in, out] -> "
                        "weight_u [in, r] @ weight_v [r, out]")


#: the type of the ``low_rank`` model param; declare it as the last field (its validator sees the others)
LowRank = Annotated[dict[str, PositiveInt], Field(default_factory=dict, description=LOW_RANK_DESCRIPTION)]


class LowRankModelParams(BaseModel):
    """Base of model params with a ``low_rank: LowRank`` field: the field is left out of the dump while empty,
    so full-rank specs (and their checkpoints) read as before."""

    @model_serializer(mode="wrap")
    def _drop_empty_low_rank(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not data.get("low_rank"):
            data.pop("low_rank", None)
        return data
