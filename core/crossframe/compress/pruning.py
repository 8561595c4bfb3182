"""``prune``: magnitude pruning of canonical weights, unstructured, N:M, whole rows or whole heads.

Every pattern is count-based: the number of zeros is computed from the sparsity (half rounds
up) and the smallest scores are cut, ties broken by position (the earlier index goes first),
so the result is exact and repeatable. Masks from earlier steps are kept: weights they pruned
count as already cut (they rank below every live weight), and the returned mask is the product
of the old and the new one, so pruning twice never revives a weight.

Patterns (``pattern``):

- ``unstructured``: single weights by ``|w|``; ``scope: layer`` gives each tensor exactly
  ``round(sparsity * size)`` zeros, ``scope: global`` ranks every selected weight together.
- ``N:M`` (e.g. ``2:4``): in each group of ``M`` consecutive weights along the input axis
  (axis 0 of a dense ``[in, out]`` kernel, the input-channel axis of an HWIO conv kernel) the
  ``N`` largest survive; a trailing partial group of ``g < M`` keeps ``min(N, g)``. The
  sparsity follows from the pattern (``1 - N/M``), so ``sparsity`` is not given.
- ``rows``: whole output units (a column of a dense kernel, a filter of a conv kernel) by L2
  norm; ``round(sparsity * units)`` per tensor, or over all selected units ranked by RMS (the
  norm over the square root of the unit's size, so layers of different fan-in compare). The
  unit's bias entry is masked too (for ``<prefix>.weight`` and a low-rank ``<prefix>.weight_v``),
  so the unit outputs exactly zero before its activation. Without ``include``, the output
  layer's kernel is left alone: its units are the model's outputs.
- ``heads``: whole attention heads of every ``attention`` layer of a graph (a ``gpt``, an imported
  decoder, a config graph: ``<path>.qkv.weight``, ``<path>.proj.weight``), by the L2 norm of their query,
  key and value columns and their projection rows: a query head's score also counts its key/value
  head's columns divided by the heads sharing them (grouped-query), its query columns and projection
  rows are masked, and a key/value head's columns once every query head
  reading it is pruned.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from crossframe.compress.base import CompressContext, CompressResult
from crossframe.errors import ConfigError
from crossframe.models.spec import ModelSpec, Params

#: the layouts selected when ``include`` is empty: dense and conv kernels (never biases, norms, embeddings)
DEFAULT_LAYOUTS = ("dense", "conv2d")
N_M = re.compile(r"^(\d+):(\d+)$")


# --------------------------------------------------------------------------- shared helpers


def select_names(spec: ModelSpec, include: Iterable[str], exclude: Iterable[str], where: str,
                 layouts: tuple[str, ...] = DEFAULT_LAYOUTS) -> list[str]:
    """Canonical names (table order) chosen by glob patterns: ``include`` (empty: every parameter of
    ``layouts``) minus ``exclude``. A pattern that matches nothing is a one-line :class:`ConfigError`."""
    include, exclude = list(include), list(exclude)
    names = [p.name for p in spec.table]
    for key, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                raise ConfigError(f"{where}.{key}: '{pattern}' matches no parameter of model '{spec.name}' "
                                  f"(names look like {', '.join(repr(n) for n in names[:3])})")
    if include:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)]
    else:
        chosen = [p.name for p in spec.table if p.layout in layouts]
    chosen = [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not chosen:
        raise ConfigError(f"{where}: include/exclude leave no parameter of model '{spec.name}' to compress")
    return chosen


def count_for(fraction: float, total: int) -> int:
    """``round(fraction * total)`` with halves rounded up: the exact number of items a fraction asks for."""
    return min(total, math.floor(fraction * total + 0.5))


def keep_masks(masks: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Earlier masks that still fit ``weights`` (same name and shape), as boolean arrays (True keeps)."""
    return {k: np.asarray(m) != 0 for k, m in masks.items()
            if k in weights and np.shape(m) == np.shape(weights[k])}


def _smallest(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` smallest scores; equal scores go in index order."""
    return np.argsort(scores, kind="stable")[:count]


# --------------------------------------------------------------------------- params


class PruneParams(BaseModel):
    """Params of ``compress: [{name: prune, ...}]``."""

    model_config = ConfigDict(extra="forbid")
    pattern: str = Field("unstructured", description="unstructured | N:M (e.g. 2:4) | rows | heads")
    sparsity: float | None = Field(None, ge=0.0, le=1.0, validate_default=True,
                                   description="fraction of the selected weights (rows, heads) set to zero")
    scope: Literal["layer", "global"] = Field(
        "layer", description="layer: each tensor gets exactly that sparsity; global: rank all selected together")
    include: list[str] = Field(default_factory=list,
                               description="glob patterns over canonical names; default every dense and conv kernel")
    exclude: list[str] = Field(default_factory=list, description="glob patterns over canonical names to leave alone")

    @field_validator("pattern")
    @classmethod
    def _known_pattern(cls, value: str) -> str:
        if value in ("unstructured", "rows", "heads"):
            return value
        match = N_M.match(value)
        if not match:
            raise ValueError("must be 'unstructured', 'rows', 'heads' or 'N:M' such as '2:4'")
        n, m = int(match[1]), int(match[2])
        if not 1 <= n < m:
            raise ValueError(f"'{value}': N:M needs 1 <= N < M")
        return value

    @field_validator("sparsity")
    @classmethod
    def _sparsity_for_pattern(cls, value: float | None, info: ValidationInfo) -> float | None:
        pattern = info.data.get("pattern")
        if pattern is None:
            return value  # the pattern's own error is the one reported
        if N_M.match(pattern):
            if value is not None:
                raise ValueError(f"pattern '{pattern}' fixes the sparsity; leave sparsity out")
            return None
        if value is None:
            raise ValueError(f"required for pattern '{pattern}' (a fraction in 0..1)")
        return value

    @property
    def n_m(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, else None."""
        match = N_M.match(self.pattern)
        return (int(match[1]), int(match[2])) if match else None


# --------------------------------------------------------------------------- the compressor


@dataclass
class Pruner:
    """The ``prune`` compressor (see the module docstring for the patterns)."""

    params: PruneParams
    name: str = "prune"

    def apply(self, context: CompressContext) -> CompressResult:
        """Masks and masked weights for ``context``; the input arrays are not modified."""
        p, spec = self.params, context.spec
        where = self.name
        chosen = select_names(spec, p.include, p.exclude, where)
        old = keep_masks(context.masks, context.weights)
        weights = {k: np.asarray(v) for k, v in context.weights.items()}
        if p.pattern == "heads":
            new, units = _prune_heads(spec, weights, old, chosen, p, where)
        else:
            layouts = {q.name: q.layout for q in spec.table}
            new, units = {}, {}
            if p.pattern == "unstructured":
                new = _prune_unstructured(weights, old, chosen, p)
            elif p.pattern == "rows":
                if not p.include:  # by default the model's outputs (logits) are never removed
                    output = _output_kernel(spec)
                    chosen = [k for k in chosen if k != output]
                    if not chosen:
                        raise ConfigError(f"{where}.pattern: 'rows' would only remove the model's outputs "
                                          f"('{output}'); name it in include to do that")
                _need_layouts(chosen, layouts, where, "rows")
                new, units = _prune_rows(weights, old, chosen, p)
            else:
                _need_layouts(chosen, layouts, where, p.pattern)
                n, m = p.n_m or (0, 0)
                new = {k: _n_m_mask(weights[k], old.get(k), layouts[k], n, m) for k in chosen}
        masks = dict(old)
        for key, mask in new.items():
            masks[key] = mask & old[key] if key in old else mask
        out = {k: (np.where(masks[k], v, 0).astype(v.dtype) if k in masks else v.copy()) for k, v in weights.items()}
        summary = _summary(p, chosen, masks, units)
        return CompressResult(weights=out, masks={k: m.astype(np.float32) for k, m in masks.items()},
                              summary=summary)


def _output_kernel(spec: ModelSpec) -> str | None:
    """The kernel producing the model's outputs: the last dense parameter, if it is ``num_outputs`` wide."""
    dense = [q for q in spec.table if q.layout == "dense"]
    if dense and dense[-1].shape[-1] == spec.data_info.num_outputs:
        return dense[-1].name
    return None


def _need_layouts(chosen: list[str], layouts: Mapping[str, str], where: str, pattern: str) -> None:
    bad = [k for k in chosen if layouts[k] not in DEFAULT_LAYOUTS]
    if bad:
        raise ConfigError(f"{where}.include: pattern '{pattern}' applies to dense and conv2d kernels only; "
                          f"'{bad[0]}' is {layouts[bad[0]]}")


def _prune_unstructured(weights: Params, old: Mapping[str, np.ndarray], chosen: list[str],
                        p: PruneParams) -> dict[str, np.ndarray]:
    """Masks cutting the smallest ``|w|`` (earlier-pruned weights first), per tensor or over all of them."""
    assert p.sparsity is not None
    scores = {}
    for key in chosen:
        s = np.abs(weights[key].astype(np.float64)).reshape(-1)
        if key in old:
            s = np.where(old[key].reshape(-1), s, -1.0)
        scores[key] = s
    masks = {}
    if p.scope == "layer":
        for key in chosen:
            keep = np.ones(scores[key].size, dtype=bool)
            keep[_smallest(scores[key], count_for(p.sparsity, keep.size))] = False
            masks[key] = keep.reshape(weights[key].shape)
        return masks
    flat = np.concatenate([scores[k] for k in chosen])
    keep = np.ones(flat.size, dtype=bool)
    keep[_smallest(flat, count_for(p.sparsity, flat.size))] = False
    start = 0
    for key in chosen:
        size = scores[key].size
        masks[key] = keep[start:start + size].reshape(weights[key].shape)
        start += size
    return masks


def _n_m_mask(w: np.ndarray, old: np.ndarray | None, layout: str, n: int, m: int) -> np.ndarray:
    """Keep the ``n`` largest ``|w|`` of each ``m`` consecutive weights along the input axis."""
    axis = 0 if layout == "dense" else 2  # dense [in, out]; conv2d [kh, kw, in, out]
    scores = np.abs(w.astype(np.float64))
    if old is not None:
        scores = np.where(old, scores, -1.0)
    moved = np.moveaxis(scores, axis, -1)
    length = moved.shape[-1]
    groups = -(-length // m)
    padded = np.full((*moved.shape[:-1], groups * m), -np.inf)
    padded[..., :length] = moved
    grouped = padded.reshape(*moved.shape[:-1], groups, m)
    order = np.argsort(-grouped, axis=-1, kind="stable")  # largest first, earlier index on ties
    keep = np.zeros(grouped.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    keep = keep.reshape(*moved.shape[:-1], groups * m)[..., :length]
    return np.moveaxis(keep, -1, axis)


def _prune_rows(weights: Params, old: Mapping[str, np.ndarray], chosen: list[str], p: PruneParams
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Masks removing whole output units (the last axis) by L2 norm; the units' bias entries too."""
    assert p.sparsity is not None
    norms = {}
    for key in chosen:
        w = weights[key].astype(np.float64)
        if key in old:
            w = np.where(old[key], w, 0.0)
        flat = w.reshape(-1, w.shape[-1])
        norms[key] = np.sqrt((flat**2).sum(axis=0)) / math.sqrt(flat.shape[0])  # RMS per unit
    cut: dict[str, np.ndarray] = {}
    if p.scope == "layer":
        for key in chosen:
            cut[key] = _smallest(norms[key], count_for(p.sparsity, norms[key].size))
    else:
        flat_norms = np.concatenate([norms[k] for k in chosen])
        picked = _smallest(flat_norms, count_for(p.sparsity, flat_norms.size))
        offsets = np.cumsum([0] + [norms[k].size for k in chosen])
        for i, key in enumerate(chosen):
            cut[key] = picked[(picked >= offsets[i]) & (picked < offsets[i + 1])] - offsets[i]
    masks: dict[str, np.ndarray] = {}
    units: dict[str, Any] = {}
    for key in chosen:
        keep_units = np.ones(norms[key].size, dtype=bool)
        keep_units[cut[key]] = False
        masks[key] = np.broadcast_to(keep_units, weights[key].shape).copy()
        units[key] = {"units": int(keep_units.size), "pruned_units": int((~keep_units).sum())}
        prefix, kind = key.rsplit(".", 1) if "." in key else ("", key)
        bias = f"{prefix}.bias"  # a full kernel's or a second low-rank factor's units are the layer's outputs
        if kind in ("weight", "weight_v") and bias in weights and weights[bias].shape == keep_units.shape:
            masks[bias] = masks.get(bias, np.ones_like(keep_units)) & keep_units
    return masks, units


def _prune_heads(spec: ModelSpec, weights: Params, old: Mapping[str, np.ndarray], chosen: list[str],
                 p: PruneParams, where: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Masks removing whole attention heads of a graph's ``attention`` layers (a ``gpt`` is such a graph)."""
    if spec.graph is None:
        raise ConfigError(f"{where}.pattern: 'heads' prunes the attention layers of a graph (gpt, hf, graph), "
                          f"not '{spec.name}'")
    return _prune_graph_heads(spec, weights, old, chosen, p, where)


@dataclass(frozen=True)
class _HeadLayer:
    """One attention layer of a graph: its path, query heads, key/value heads, head size and width."""

    path: str
    heads: int
    kv: int
    hd: int
    d: int

    @property
    def qkv(self) -> str:
        return f"{self.path}.qkv.weight"

    @property
    def proj(self) -> str:
        return f"{self.path}.proj.weight"


def _prune_graph_heads(spec: ModelSpec, weights: Params, old: Mapping[str, np.ndarray], chosen: list[str],
                       p: PruneParams, where: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Masks removing whole query heads of a graph's ``attention`` layers (see the module docstring)."""
    assert p.sparsity is not None
    layers = []
    for node in spec.graph.nodes():
        if node.kind != "attention":
            continue
        heads, kv, hd = node.layer.dims(int(node.in_shape[-1]))
        layer = _HeadLayer(node.path, heads, kv, hd, int(node.in_shape[-1]))
        if layer.qkv in chosen or layer.proj in chosen:
            layers.append(layer)
    if not layers:
        raise ConfigError(f"{where}.pattern: 'heads' prunes attention heads (of a 'gpt', or a graph's attention "
                          f"layers: <path>.qkv.weight, <path>.proj.weight); model '{spec.name}' has none selected")

    def masked(key: str) -> np.ndarray:
        w = weights[key].astype(np.float64)
        return np.where(old[key], w, 0.0) if key in old else w

    norms = {}
    for a in layers:
        qkv, proj = masked(a.qkv), masked(a.proj)
        group = a.heads // a.kv
        q = (qkv[:, : a.heads * a.hd] ** 2).reshape(a.d, a.heads, a.hd).sum(axis=(0, 2))
        k = (qkv[:, a.heads * a.hd: (a.heads + a.kv) * a.hd] ** 2).reshape(a.d, a.kv, a.hd).sum(axis=(0, 2))
        v = (qkv[:, (a.heads + a.kv) * a.hd:] ** 2).reshape(a.d, a.kv, a.hd).sum(axis=(0, 2))
        o = (proj ** 2).reshape(a.heads, a.hd, -1).sum(axis=(1, 2))
        norms[a.path] = np.sqrt(q + o + np.repeat((k + v) / group, group))
    if p.scope == "layer":
        cut = {a.path: _smallest(norms[a.path], count_for(p.sparsity, a.heads)) for a in layers}
    else:
        offsets = np.cumsum([0] + [a.heads for a in layers])
        picked = _smallest(np.concatenate([norms[a.path] for a in layers]), count_for(p.sparsity, int(offsets[-1])))
        cut = {a.path: picked[(picked >= offsets[j]) & (picked < offsets[j + 1])] - offsets[j]
               for j, a in enumerate(layers)}
    masks: dict[str, np.ndarray] = {}
    units: dict[str, Any] = {}
    for a in layers:
        keep = np.ones(a.heads, dtype=bool)
        keep[cut[a.path]] = False
        keep_kv = keep.reshape(a.kv, a.heads // a.kv).any(axis=1)  # a kv head lives while one reader does
        cols = np.concatenate([np.repeat(keep, a.hd), np.repeat(keep_kv, a.hd), np.repeat(keep_kv, a.hd)])
        masks[a.qkv] = np.broadcast_to(cols, weights[a.qkv].shape).copy()
        masks[a.proj] = np.broadcast_to(np.repeat(keep, a.hd)[:, None], weights[a.proj].shape).copy()
        if f"{a.path}.qkv.bias" in weights:
            masks[f"{a.path}.qkv.bias"] = cols.copy()
        units[a.path] = {"heads": a.heads, "kv_heads": a.kv, "pruned_heads": sorted(int(h) for h in cut[a.path]),
                         "pruned_kv_heads": sorted(int(g) for g in np.flatnonzero(~keep_kv))}
    return masks, units


def _summary(p: PruneParams, chosen: list[str], masks: Mapping[str, np.ndarray], units: Mapping[str, Any]
             ) -> dict[str, Any]:
    """Achieved sparsity per pruned tensor and over the selected kernels together."""
    tensors: dict[str, Any] = {}
    total = zeros = 0
    for key in sorted(masks, key=lambda k: (k not in chosen, k)):
        size, z = int(masks[key].size), int((~masks[key]).sum())
        tensors[key] = {"size": size, "pruned": z, "sparsity": z / size if size else 0.0}
        if key in chosen:
            total, zeros = total + size, zeros + z
    return {"pattern": p.pattern, "scope": p.scope, "requested": p.sparsity if p.n_m is None else
            1.0 - p.n_m[0] / p.n_m[1], "sparsity": zeros / total if total else 0.0, "pruned": zeros,
            "size": total, "tensors": tensors, **({"units": dict(units)} if units else {})}


def make_pruner(params: PruneParams) -> Pruner:
    """The factory registered as ``prune``."""
    return Pruner(params)
