"""``quantize``: symmetric round-to-nearest weight quantisation to int8 or int4.

For each selected tensor the scale is ``max|w| / qmax`` (``qmax`` 127 for int8, 7 for int4),
per output channel (the last axis: a dense kernel's columns, a conv kernel's filters) or per
tensor, and ``q = clip(rint(w / scale), -qmax, qmax)`` (numpy's round half to even). Every
element then satisfies ``|w - q * scale| <= scale / 2`` (up to float32 rounding of the product),
pruned zeros stay exactly zero, and an all-zero channel gets scale 1.

The result's ``weights`` are the dequantised float32 values (so evaluation measures the real
error); ``stored`` is the compact form, keyed by file-safe names:

- ``<name>.int8``: int8 values in the tensor's shape (``bits: 8``), or ``<name>.int4``: uint8
  bytes holding two values each (``bits: 4``, see :func:`pack_int4`) with ``<name>.shape``
  (int64) giving the shape back;
- ``<name>.scale``: float32 scales, ``[out]`` per channel or ``[1]`` per tensor.

:func:`read_stored` turns such a mapping back into float32 weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from crossframe.compress.base import CompressContext, CompressResult
from crossframe.compress.pruning import select_names
from crossframe.errors import CheckpointError

QMAX = {8: 127, 4: 7}


class QuantizeParams(BaseModel):
    """Params of ``compress: [{name: quantize, ...}]``."""

    model_config = ConfigDict(extra="forbid")
    bits: Literal[8, 4] = Field(8, description="8 (int8) or 4 (int4, two values per stored byte)")
    granularity: Literal["per_channel", "per_tensor"] = Field(
        "per_channel", description="one scale per output channel (last axis) or one for the whole tensor")
    include: list[str] = Field(default_factory=list,
                               description="glob patterns over canonical names; default every dense and conv kernel")
    exclude: list[str] = Field(default_factory=list, description="glob patterns over canonical names to leave alone")


def quantize_array(w: np.ndarray, bits: int = 8, granularity: str = "per_channel") -> tuple[np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest: int8 values ``q`` (in ``-qmax..qmax``) and float32 ``scale``.

    ``scale`` has shape ``[w.shape[-1]]`` per channel (``[1]`` for a 0-d or per-tensor input), so
    ``q * scale`` broadcasts back to ``w``. It is at least float32's smallest normal number, so a channel
    whose largest value is below ``qmax`` times that uses only part of the integer range.
    """
    if bits not in QMAX:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    qmax = QMAX[bits]
    x = np.asarray(w, np.float64)
    if granularity == "per_channel" and x.ndim >= 1:
        peak = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0) if x.size else np.zeros(x.shape[-1])
    elif granularity in ("per_channel", "per_tensor"):
        peak = np.array([np.abs(x).max() if x.size else 0.0])
    else:
        raise ValueError(f"granularity must be 'per_channel' or 'per_tensor', got '{granularity}'")
    # a scale never goes below float32's smallest normal number: a channel of subnormal weights would
    # otherwise get a scale that rounds to 0 (or a subnormal one, flushed to 0 on some CPUs)
    scale = np.where(peak > 0, np.maximum(peak / qmax, np.finfo(np.float32).tiny), 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale.astype(np.float64)), -qmax, qmax).astype(np.int8)
    return q, scale


def dequantize_array(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q * scale`` as float32 (``scale`` broadcast over the last axis, or a single value)."""
    return (np.asarray(q, np.float32) * np.asarray(scale, np.float32)).astype(np.float32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Int4 values (``-8..7``, any shape) as flat uint8 bytes, two per byte in C order.

    Element ``2i`` goes in the low nibble of byte ``i`` and ``2i + 1`` in the high nibble, each
    as 4-bit two's complement; an odd count leaves the last high nibble zero.
    """
    flat = np.asarray(q).reshape(-1).astype(np.int16)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError("pack_int4: values must lie in -8..7")
    nibbles = (flat & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...] | list[int] | np.ndarray) -> np.ndarray:
    """The int8 values of ``shape`` packed by :func:`pack_int4`."""
    shape = tuple(int(s) for s in np.asarray(shape, np.int64).reshape(-1))
    count = int(np.prod(shape, dtype=np.int64))
    data = np.asarray(packed, np.uint8).reshape(-1)
    if data.size != (count + 1) // 2:
        raise ValueError(f"unpack_int4: {data.size} bytes cannot hold {count} values (needs {(count + 1) // 2})")
    nibbles = np.empty(data.size * 2, np.uint8)
    nibbles[0::2], nibbles[1::2] = data & 0xF, data >> 4
    values = nibbles[:count].astype(np.int8)
    values = np.where(values > 7, values - 16, values).astype(np.int8)
    return values.reshape(shape)


def store(name: str, q: np.ndarray, scale: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """The stored form of one quantised tensor (see the module docstring for the keys)."""
    if bits == 8:
        return {f"{name}.int8": np.asarray(q, np.int8), f"{name}.scale": np.asarray(scale, np.float32)}
    return {f"{name}.int4": pack_int4(q), f"{name}.shape": np.asarray(np.shape(q), np.int64),
            f"{name}.scale": np.asarray(scale, np.float32)}


def read_stored(stored: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dequantised float32 tensors from a ``stored`` mapping, by canonical name."""
    out = {}
    for key in stored:
        for suffix in (".int8", ".int4"):
            if not key.endswith(suffix):
                continue
            name = key[: -len(suffix)]
            if f"{name}.scale" not in stored or (suffix == ".int4" and f"{name}.shape" not in stored):
                raise CheckpointError(f"quantised '{name}': its scale or shape is missing from the stored arrays")
            q = stored[key] if suffix == ".int8" else unpack_int4(stored[key], stored[f"{name}.shape"])
            out[name] = dequantize_array(q, stored[f"{name}.scale"])
    return out


@dataclass
class Quantizer:
    """The ``quantize`` compressor (see the module docstring)."""

    params: QuantizeParams
    name: str = "quantize"

    def apply(self, context: CompressContext) -> CompressResult:
        """Dequantised weights, the stored int form, and the error per tensor; inputs are not modified."""
        p = self.params
        chosen = select_names(context.spec, p.include, p.exclude, self.name)
        weights = {k: np.array(v, copy=True) for k, v in context.weights.items()}
        stored: dict[str, np.ndarray] = {}
        tensors: dict[str, Any] = {}
        float_bytes = stored_bytes = 0
        for key in chosen:
            w = weights[key]
            q, scale = quantize_array(w, p.bits, p.granularity)
            deq = dequantize_array(q, scale)
            part = store(key, q, scale, p.bits)
            stored.update(part)
            weights[key] = deq
            size = sum(int(a.nbytes) for a in part.values())
            float_bytes += int(w.size) * 4
            stored_bytes += size
            tensors[key] = {"max_abs_error": float(np.abs(deq.astype(np.float64) - w).max()) if w.size else 0.0,
                            "max_scale": float(scale.max()), "bytes": size}
        masks = {k: m for k, m in context.masks.items() if k in weights}
        summary = {"bits": p.bits, "granularity": p.granularity, "tensors": tensors, "float32_bytes": float_bytes,
                   "stored_bytes": stored_bytes, "ratio": float_bytes / stored_bytes if stored_bytes else 1.0}
        return CompressResult(weights=weights, masks=masks, stored=stored, summary=summary)


def make_quantizer(params: QuantizeParams) -> Quantizer:
    """The factory registered as ``quantize``."""
    return Quantizer(params)
