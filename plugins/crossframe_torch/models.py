"""Native ``nn.Module`` s for the core's architectures and exact native <-> canonical conversion.

Native parameter names equal the canonical ones; only layouts differ (torch keeps dense weights
as ``[out, in]`` and conv kernels as OIHW on NCHW data).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec, Params

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
}


class MLP(nn.Module):
    """``mlp``: flatten, then dense layers with an activation between them."""

    def __init__(self, widths: list[int], activation: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or regression outputs) for a batch."""
        h = x.flatten(1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = self.act(h)
        return h


class CNN(nn.Module):
    """``cnn``: conv + activation + 2x2 max-pool blocks on NHWC input, then two dense layers."""

    def __init__(self, in_channels: int, channels: list[int], kernel_size: int, flat: int,
                 hidden: int, outputs: int, activation: str) -> None:
        super().__init__()
        sizes = [in_channels, *channels]
        self.conv = nn.ModuleList(nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2)
                                  for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.fc = nn.ModuleList([nn.Linear(flat, hidden), nn.Linear(hidden, outputs)])
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of NHWC images."""
        h = x.permute(0, 3, 1, 2)
        for conv in self.conv:
            h = F.max_pool2d(self.act(conv(h)), 2)
        h = h.permute(0, 2, 3, 1).flatten(1)  # flatten in the canonical NHWC order
        return self.fc[1](self.act(self.fc[0](h)))


def build_module(spec: ModelSpec) -> nn.Module:
    """The native module for ``spec`` (weights still to be loaded with :func:`load_canonical`)."""
    info, p = spec.data_info, spec.params
    if spec.name == "mlp":
        return MLP([math.prod(info.input_shape), *p["hidden"], info.num_outputs], p["activation"])
    if spec.name == "cnn":
        flat = next(t.shape[0] for t in spec.table if t.name == "fc.0.weight")
        return CNN(info.input_shape[-1], p["channels"], p["kernel_size"], flat, p["hidden"],
                   info.num_outputs, p["activation"])
    raise CapabilityError(f"model.name: backend 'torch' has no native '{spec.name}'")


def to_native(layout: str, value: torch.Tensor) -> torch.Tensor:
    """Canonical layout -> torch layout."""
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
        value = torch.from_numpy(np.ascontiguousarray(weights[p.name]))
        native[p.name].copy_(to_native(p.layout, value))


@torch.no_grad()
def export_canonical(module: nn.Module, spec: ModelSpec) -> Params:
    """The module's weights as canonical float32 numpy arrays."""
    native = native_parameters(module, spec)
    return {p.name: to_canonical(p.layout, native[p.name].detach()).float().cpu().contiguous().numpy().copy()
            for p in spec.table}
