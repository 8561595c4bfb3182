"""Native ``nn.Module`` s of model specs (every built-in model is a graph of neutral layers, lowered by
:mod:`crossframe_torch.lowering`) and exact native <-> canonical conversion.

Native parameter names equal the canonical ones; only layouts differ (torch keeps dense weights
as ``[out, in]`` and conv kernels as OIHW on NCHW data; embeddings and norms are unchanged). A
factorised (``low_rank``) layer is a :class:`LowRankLinear` whose ``weight_u`` ``[r, in]`` and
``weight_v`` ``[out, r]`` are the canonical factors in torch's dense layout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec, Params


class LowRankLinear(nn.Module):
    """A dense layer factorised as ``x @ U @ V + b``: two matmuls through rank ``r``.

    Parameters ``weight_u`` ``[r, in]`` and ``weight_v`` ``[out, r]`` (torch's ``[out, in]``
    convention for each factor) and ``bias`` ``[out]``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.weight_u = nn.Parameter(torch.empty(rank, in_features))
        self.weight_v = nn.Parameter(torch.empty(out_features, rank))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x @ U) @ V + b``."""
        return F.linear(F.linear(x, self.weight_u), self.weight_v, self.bias)


def build_module(spec: ModelSpec, activation_checkpointing: bool = False) -> nn.Module:
    """The native module for ``spec``, a graph of neutral layers lowered by :mod:`crossframe_torch.lowering`
    (weights still to be loaded with :func:`load_canonical`); ``activation_checkpointing`` recomputes each
    block of a repeated ``sequential`` in the backward pass."""
    if spec.graph is None:
        raise CapabilityError(f"model.name: backend 'torch' has no native '{spec.name}'")
    from crossframe_torch.lowering import build_module as lower

    if spec.graph.takes_ids:  # a decoder: no throwaway random init of its (large) tables, load_canonical fills it
        with torch.device("meta"):
            module = lower(spec.graph, activation_checkpointing)
        return module.to_empty(device="cpu")
    return lower(spec.graph, activation_checkpointing)


def to_native(layout: str, value: torch.Tensor) -> torch.Tensor:
    """Canonical layout -> torch layout (``bias``, ``embedding`` and the norms are identical)."""
    if layout == "dense":
        return value.t()
    if layout == "conv2d":
        return value.permute(3, 2, 0, 1)  # HWIO -> OIHW
    return value


def to_canonical(layout: str, value: torch.Tensor) -> torch.Tensor:
    """Torch layout -> canonical layout."""
    if layout == "dense":
        return value.t()
    if layout == "conv2d":
        return value.permute(2, 3, 1, 0)  # OIHW -> HWIO
    return value


def native_parameters(module: nn.Module, spec: ModelSpec) -> dict[str, nn.Parameter]:
    """The module's parameters by canonical name, checked against the table."""
    params = dict(module.named_parameters())
    missing = [p.name for p in spec.table if p.name not in params]
    if missing or len(params) != len(spec.table):
        raise CapabilityError(f"model '{spec.name}': torch module does not match the canonical table ({missing})")
    return {p.name: params[p.name] for p in spec.table}


@torch.no_grad()
def load_canonical(module: nn.Module, spec: ModelSpec, weights: Params) -> None:
    """Copy canonical numpy weights into the module, exactly."""
    spec.check_weights(weights)
    native = native_parameters(module, spec)
    for p in spec.table:
        value = host_tensor(weights[p.name])
        native[p.name].copy_(to_native(p.layout, value))


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory (no copy, strides kept: a transposed view stays a view): bf16
    (``ml_dtypes``) through its 16-bit pattern, and a read-only array (a memory-mapped safetensors file) as is,
    since it is only read from."""
    import warnings

    array = np.asarray(array)
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if array.dtype.name == "bfloat16":
            return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(array)


@torch.no_grad()
def export_canonical(module: nn.Module, spec: ModelSpec) -> Params:
    """The module's weights as canonical float32 numpy arrays."""
    native = native_parameters(module, spec)
    return {p.name: to_canonical(p.layout, native[p.name].detach()).float().cpu().contiguous().numpy().copy()
            for p in spec.table}
