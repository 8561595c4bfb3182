"""Safetensors files (one, or shards listed in ``model.safetensors.index.json``) <-> canonical weights.

Tensors are read with ``safetensors``' numpy reader in their stored dtype (bf16 through ``ml_dtypes``):
a tensor kept as stored is passed through without a copy or cast, a torch ``[out, in]`` kernel becomes a
transposed view, and only the attention projections are concatenated. A pickle checkpoint
(``pytorch_model.bin``) is refused without being opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from crossframe.errors import CheckpointError, ConfigError
from crossframe.hf.architectures import Architecture, TensorMap

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of ``directory`` (a pickle checkpoint is one line saying how to convert it)."""
    directory = Path(directory)
    if (directory / SINGLE).is_file():
        return [directory / SINGLE]
    if (directory / INDEX).is_file():
        try:
            shards = sorted(set(json.loads((directory / INDEX).read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{directory / INDEX}: not a safetensors index ({exc})") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{directory / INDEX}: shard '{missing[0]}' is missing")
        return [directory / s for s in shards]
    for name in PICKLES:
        if (directory / name).exists():
            raise CheckpointError(
                f"{directory / name}: only safetensors weights are read (a pickle is never opened); convert it "
                f"with transformers: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, "
                f"safe_serialization=True)")
    raise CheckpointError(f"model.path: '{directory}' has no {SINGLE} or {INDEX}")


def read_tensors(files: Iterable[Path]) -> dict[str, np.ndarray]:
    """Every tensor of ``files`` by name, in its stored dtype (bf16 as ``ml_dtypes.bfloat16``): read-only views
    of the memory-mapped files (see :mod:`crossframe.hf.safetensors_io`)."""
    from crossframe.hf.safetensors_io import read_safetensors

    out: dict[str, np.ndarray] = {}
    for path in files:
        out.update(read_safetensors(path))
    return out


def _assemble(entry: TensorMap, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    parts = [tensors[s] for s in entry.sources]
    if entry.transform == "same":
        return parts[0]
    if entry.transform == "linear":
        return parts[0].T
    if entry.transform == "qkv":
        return np.concatenate([p.T for p in parts], axis=1)
    return np.concatenate(parts, axis=0)


def to_canonical(arch: Architecture, tensors: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """The canonical weights of ``arch`` from the Hugging Face ``tensors`` (a missing tensor: one line)."""
    for entry in arch.tensors:
        for name in entry.sources:
            if name not in tensors:
                raise CheckpointError(f"{source}: tensor '{name}' is missing (needed for '{entry.canonical}')")
    return {e.canonical: _assemble(e, tensors) for e in arch.tensors}


def to_hf(arch: Architecture, weights: Mapping[str, np.ndarray], qkv_sizes: Mapping[str, tuple[int, int, int]]
          ) -> dict[str, np.ndarray]:
    """The Hugging Face tensors of ``arch`` from canonical ``weights``; ``qkv_sizes`` gives each fused
    attention tensor's ``(q, k, v)`` widths (contiguous arrays, as safetensors writes them)."""
    out: dict[str, np.ndarray] = {}
    for entry in arch.tensors:
        w = np.asarray(weights[entry.canonical])
        if entry.transform == "same":
            out[entry.sources[0]] = np.ascontiguousarray(w)
        elif entry.transform == "linear":
            out[entry.sources[0]] = np.ascontiguousarray(w.T)
        else:
            q, k, _ = qkv_sizes[entry.canonical]
            axis = 1 if entry.transform == "qkv" else 0
            for name, part in zip(entry.sources, np.split(w, [q, q + k], axis=axis), strict=True):
                out[name] = np.ascontiguousarray(part.T if axis == 1 else part)
    return out


def check_shapes(expected: Mapping[str, tuple[int, ...]], weights: Mapping[str, np.ndarray], source: str) -> None:
    """One line for the first canonical tensor whose shape does not match the graph's table."""
    for name, shape in expected.items():
        if tuple(weights[name].shape) != tuple(shape):
            raise ConfigError(f"{source}: '{name}' has shape {tuple(weights[name].shape)}, config.json implies {shape}")
