"""Adapter-only LoRA checkpoints: a LoRA run stores its adapters, their optimizer state and a reference to
its base weights (where they come from, and their sha256), never the base itself.

The reference (``state.json``'s ``lora_base``) holds what rebuilt the base when the run started: the seed,
the ``hf`` model's directory (``model.path``) and ``model.init_from`` (absolute paths; a run is pinned to the
checkpoint it resolved to), plus ``sha256``, the fingerprint of the base weights. :func:`restore_base` is
the one way back: :func:`crossframe.checkpoint.load_checkpoint` calls it, so eval, export, serve, generate,
compress and resume all see the whole model. A base that is missing or differs from the fingerprint is one
:class:`~crossframe.errors.CheckpointError` line naming it and both fingerprints.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.errors import CheckpointError, CrossframeError
from crossframe.models.spec import ModelSpec

#: the key of ``state.json`` that marks an adapter-only checkpoint
STATE_KEY = "lora_base"
ADAPTER_SUFFIXES = (".lora_a", ".lora_b")


def is_adapter(name: str) -> bool:
    """Whether the canonical (or ``<slot>/<param>`` optimizer) name is a LoRA adapter's."""
    return name.endswith(ADAPTER_SUFFIXES)


def fingerprint(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 (hex) of the base weights in ``weights`` (adapters left out): names in sorted order, each with
    its dtype, shape and bytes, so any changed value, shape or dtype changes it."""
    digest = hashlib.sha256()
    for name in sorted(n for n in weights if not is_adapter(n)):
        value = np.ascontiguousarray(weights[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(memoryview(value).cast("B"))
    return digest.hexdigest()


def base_reference(spec: ModelSpec, seed: int, init_from: str | None, weights: Mapping[str, np.ndarray]
                   ) -> dict[str, Any]:
    """The reference an adapter-only checkpoint of ``spec`` stores: what rebuilds its base and the fingerprint
    of ``weights`` (the run's initial weights; their base part never changes while training)."""
    from crossframe.nn.lora import base_spec

    ref: dict[str, Any] = {"seed": int(seed), "path": None, "init_from": None}
    base = base_spec(spec)
    if base.params.get("path"):  # an imported model reads its weights from its directory
        ref["path"] = str(Path(base.params["path"]).resolve())
    if init_from:
        source = Path(init_from)
        if not (source / "config.json").is_file():  # a run or checkpoint: pinned to the step it resolved to
            from crossframe.checkpoint import find_checkpoint

            source = find_checkpoint(source)
        ref["init_from"] = str(source.resolve())
    ref["sha256"] = fingerprint(weights)
    return ref


def describe(ref: Mapping[str, Any]) -> str:
    """The base's source in words: its ``init_from`` or model directory, else the seeded initialisation."""
    return str(ref.get("init_from") or ref.get("path") or f"the seeded initialisation (seed {ref.get('seed')})")


def rebuild_base(spec: ModelSpec, ref: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The base weights ``ref`` describes, for ``spec`` (a LoRA spec): the same steps the runner takes for
    its initial weights (the model's own initialisation, then ``init_from``), adapters left out."""
    from crossframe.models.init_from import initial_weights
    from crossframe.nn.lora import base_spec

    base = copy.copy(base_spec(spec))
    if ref.get("path"):
        base.params = {**base.params, "path": ref["path"]}
    weights = base.init(int(ref.get("seed", 0)))
    if ref.get("init_from"):
        weights = initial_weights(ref["init_from"], base, weights)
    return {k: np.asarray(v, np.float32) for k, v in weights.items() if not is_adapter(k)}


def adapters_only(weights: Mapping[str, np.ndarray], optimizer_state: Mapping[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The adapters and their optimizer slots (plus the scalar ``step``): what a LoRA checkpoint writes."""
    return ({k: v for k, v in weights.items() if is_adapter(k)},
            {k: v for k, v in optimizer_state.items() if "/" not in k or is_adapter(k)})


def restore_base(where: Path, state: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Whole weights of the adapter-only checkpoint at ``where``: the base rebuilt from ``state["lora_base"]``
    and checked against its fingerprint, the adapters on top."""
    from crossframe.models import spec_from_json

    ref = state[STATE_KEY]
    if not isinstance(ref, Mapping) or not isinstance(ref.get("sha256"), str):
        raise CheckpointError(f"'{where / 'state.json'}': '{STATE_KEY}' must hold the base's reference and sha256")
    expected = ref["sha256"]
    source = describe(ref)
    for key in ("init_from", "path"):
        if ref.get(key) and not Path(ref[key]).exists():
            raise CheckpointError(f"checkpoint '{where}' holds LoRA adapters only, and its base '{ref[key]}' is "
                                  f"missing (expected sha256 {expected})")
    spec = spec_from_json(state["model"])
    try:
        base = rebuild_base(spec, ref)
    except CrossframeError as exc:
        raise CheckpointError(f"checkpoint '{where}': its LoRA base '{source}' cannot be rebuilt "
                              f"(expected sha256 {expected}): {exc}") from None
    actual = fingerprint(base)
    if actual != expected:
        raise CheckpointError(f"checkpoint '{where}': its LoRA base '{source}' has changed (sha256 {actual}, "
                              f"the adapters were trained on {expected})")
    return {**base, **weights}


class FrozenSlots(Mapping[str, np.ndarray]):
    """An adapter-only checkpoint's optimizer state, with zeros for every frozen weight's slots (what every
    backend holds for weights that never move), made one at a time when read, never all at once."""

    def __init__(self, stored: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> None:
        self.stored = dict(stored)
        slots = sorted({k.split("/", 1)[0] for k in stored if "/" in k})
        self.zeros = {f"{slot}/{name}": (tuple(value.shape), value.dtype) for slot in slots
                      for name, value in weights.items() if not is_adapter(name) and f"{slot}/{name}" not in stored}

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.stored:
            return self.stored[key]
        shape, dtype = self.zeros[key]
        return np.zeros(shape, dtype)

    def __iter__(self) -> Iterator[str]:
        yield from self.stored
        yield from self.zeros

    def __len__(self) -> int:
        return len(self.stored) + len(self.zeros)

    def __contains__(self, key: object) -> bool:
        return key in self.stored or key in self.zeros
