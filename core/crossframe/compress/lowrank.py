"""``lowrank``: factorise dense layers by truncated SVD, ``W [in, out] ~= U [in, r] @ V [r, out]``.

The architecture changes: the result carries new ``model_params`` with ``low_rank: {prefix: r}``,
from which every backend builds the factorised model (``<prefix>.weight_u`` and
``<prefix>.weight_v`` replace ``<prefix>.weight``). The singular values are split evenly
between the factors (``U = U_r sqrt(S_r)``, ``V = sqrt(S_r) V_r^T``), so neither factor is much
larger than the other. At full rank the product equals the kernel up to float32 rounding.

The factorisable layers are the dense layers with a bias (``layers.<i>`` of an ``mlp``,
``fc.0``/``fc.1`` of a ``cnn``, ``h.<i>.attn.qkv``, ``h.<i>.attn.proj``, ``h.<i>.mlp.fc``,
``h.<i>.mlp.proj`` of a ``gpt``), and every ``dense`` layer of a graph of neutral layers (with or
without a bias); an already factorised layer is factorised again from ``U @ V``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from crossframe.compress.base import CompressContext, CompressResult
from crossframe.errors import ConfigError
from crossframe.models.spec import ModelSpec, dense_kernel, low_rank_names


class LowRankParams(BaseModel):
    """Params of ``compress: [{name: lowrank, ...}]``: exactly one of ``rank`` and ``energy``."""

    model_config = ConfigDict(extra="forbid")
    rank: PositiveInt | None = Field(None, description="rank of every selected layer (at most min(in, out))")
    energy: float | None = Field(None, gt=0.0, le=1.0,
                                 description="keep the smallest rank whose singular values hold this share of "
                                             "the squared energy")
    include: list[str] = Field(default_factory=list,
                               description="glob patterns over layer prefixes (e.g. 'h.*.mlp.fc'); default: all")
    exclude: list[str] = Field(default_factory=list, description="glob patterns over layer prefixes to leave alone")

    @model_validator(mode="after")
    def _one_of(self) -> LowRankParams:
        if (self.rank is None) == (self.energy is None):
            raise ValueError("give exactly one of 'rank' (an int) and 'energy' (a share in (0, 1])")
        return self


def factorisable_layers(spec: ModelSpec) -> list[str]:
    """Prefixes of the linears, full or already factorised, in table order: a graph's every dense kernel (a
    ``dense`` layer, an attention's ``qkv`` and ``proj``, a gated MLP's ``gate``, ``up`` and ``down``); another
    model's dense layers with a bias."""
    names = {p.name: p for p in spec.table}
    out = []
    for p in spec.table:
        if p.layout != "dense":
            continue
        if p.name.endswith(".weight"):
            prefix = p.name[: -len(".weight")]
        elif p.name.endswith(".weight_u"):
            prefix = p.name[: -len(".weight_u")]
        else:
            continue
        if spec.graph is not None or f"{prefix}.bias" in names:
            out.append(prefix)
    return out


def _matches(prefix: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(prefix, pat) or fnmatch.fnmatchcase(f"{prefix}.weight", pat) for pat in patterns)


def select_layers(spec: ModelSpec, include: list[str], exclude: list[str], where: str) -> list[str]:
    """The factorisable layers chosen by ``include`` (empty: all) minus ``exclude``."""
    layers = factorisable_layers(spec)
    if not layers:
        raise ConfigError(f"{where}: model '{spec.name}' has no dense layer that can be factorised")
    for key, patterns in (("include", include), ("exclude", exclude)):
        for pat in patterns:
            if not _matches_any(pat, layers):
                raise ConfigError(f"{where}.{key}: '{pat}' matches no factorisable layer of model '{spec.name}' "
                                  f"(they are {', '.join(layers[:4])}{', ...' if len(layers) > 4 else ''})")
    chosen = [p for p in layers if (not include or _matches(p, include)) and not _matches(p, exclude)]
    if not chosen:
        raise ConfigError(f"{where}: include/exclude leave no layer to factorise")
    return chosen


def _matches_any(pattern: str, layers: list[str]) -> bool:
    return any(_matches(p, [pattern]) for p in layers)


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """The smallest ``r`` with ``sum(s[:r]**2) >= energy * sum(s**2)`` (1 for an all-zero matrix)."""
    sq = np.asarray(singular_values, np.float64) ** 2
    total = sq.sum()
    if total <= 0.0:
        return 1
    share = np.cumsum(sq) / total
    return int(min(len(sq), np.searchsorted(share, energy * (1.0 - 1e-12)) + 1))


def factorise(kernel: np.ndarray, rank: int | None = None, energy: float | None = None
              ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``U [in, r]``, ``V [r, out]`` (float32) with ``U @ V`` the best rank-``r`` approximation of ``kernel``.

    ``rank`` is clipped to ``min(in, out)``; with ``energy`` the rank is :func:`energy_rank`.
    The third value reports the rank, the energy kept and the relative Frobenius error.
    """
    w = np.asarray(kernel, np.float64)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    r = min(len(s), rank) if rank is not None else energy_rank(s, float(energy or 1.0))
    root = np.sqrt(s[:r])
    left, right = u[:, :r] * root, root[:, None] * vt[:r]
    total = float((s**2).sum())
    kept = float((s[:r] ** 2).sum() / total) if total > 0 else 1.0
    norm = float(np.linalg.norm(w))
    error = float(np.linalg.norm(w - left @ right) / norm) if norm > 0 else 0.0
    return left.astype(np.float32), right.astype(np.float32), {"rank": r, "energy": kept, "rel_error": error}


@dataclass
class LowRankCompressor:
    """The ``lowrank`` compressor (see the module docstring)."""

    params: LowRankParams
    name: str = "lowrank"

    def apply(self, context: CompressContext) -> CompressResult:
        """Factorised weights and the ``model_params`` of the factorised model; inputs are not modified."""
        from crossframe.models import build_model

        spec, p = context.spec, self.params
        chosen = select_layers(spec, p.include, p.exclude, self.name)
        weights = {k: np.array(v, copy=True) for k, v in context.weights.items()}
        low_rank = dict(spec.low_rank)
        layers: dict[str, Any] = {}
        dropped: list[str] = []
        for prefix in chosen:
            kernel = dense_kernel(context.weights, prefix)
            u, v, info = factorise(kernel, p.rank, p.energy)
            fan_in, fan_out = kernel.shape
            old = [n for n in (f"{prefix}.weight", *low_rank_names(prefix)) if n in weights]
            before = sum(int(weights[n].size) for n in old)
            for n in old:
                del weights[n]
            dropped += [n for n in old if n in context.masks]
            un, vn = low_rank_names(prefix)
            weights[un], weights[vn] = u, v
            low_rank[prefix] = info["rank"]
            layers[prefix] = {"in": fan_in, "out": fan_out, **info, "params_before": before,
                              "params_after": int(u.size + v.size)}
        model_params = {**context.model_params, "low_rank": low_rank}
        new_spec = build_model(context.model_name, model_params, spec.data_info)
        new_spec.check_weights(weights, f"{self.name}: factorised weights")
        weights = {q.name: weights[q.name] for q in new_spec.table}
        masks = {k: m for k, m in context.masks.items() if k in weights and np.shape(m) == weights[k].shape}
        summary = {"layers": layers, "param_count_before": spec.param_count, "param_count_after": new_spec.param_count,
                   "low_rank": low_rank, **({"masks_dropped": dropped} if dropped else {})}
        return CompressResult(weights=weights, model_params=model_params, masks=masks, summary=summary)


def make_lowrank(params: LowRankParams) -> LowRankCompressor:
    """The factory registered as ``lowrank``."""
    return LowRankCompressor(params)
