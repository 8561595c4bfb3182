"""The compressor contract shared by the built-in compressors, plugins and the compress pipeline.

A compressor is registered through ``register_compressors`` as ``register(name, factory,
schema=..., description=...)``; ``factory(params)`` (params validated by ``schema``) returns an
object with a ``name`` and :meth:`Compressor.apply`. It sees canonical weights only, never a
framework, so it works for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from crossframe.models.spec import ModelSpec, Params


@dataclass
class CompressContext:
    """What a compressor works on: the model as it stands after the previous steps."""

    spec: ModelSpec
    model_name: str
    model_params: dict[str, Any]
    weights: Params
    #: masks kept by earlier steps (1 keeps, 0 pruned), canonical names and layouts
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    seed: int = 0


@dataclass
class CompressResult:
    """What a compressor produced.

    ``weights`` are float canonical weights every backend can load (for a quantiser: the
    dequantised values, so evaluation measures the real error). ``model_params`` is set when the
    architecture changed (low-rank), so every backend builds the new model from the new spec.
    ``masks`` are kept through fine-tuning. ``stored`` is what goes to disk when it differs from
    ``weights`` (int8/int4 values and scales), keyed by file-safe names.
    """

    weights: Params
    model_params: dict[str, Any] | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    stored: dict[str, np.ndarray] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


class Compressor(Protocol):
    """A compression step on canonical weights."""

    name: str

    def apply(self, context: CompressContext) -> CompressResult:
        """Compress ``context.weights``; must not modify the arrays it was given."""
        ...
