"""LoRA adapters on a lowered graph (torch): each adapted ``nn.Linear`` becomes a :class:`LoraLinear`
(same canonical names, plus ``lora_a`` / ``lora_b``), computing with ``W + scale * B A`` in torch's layouts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossframe.nn.graph import Graph
from crossframe.nn.lora import lora_scales


class LoraLinear(nn.Linear):
    """``nn.Linear`` plus adapters ``lora_a`` ``[r, in]`` and ``lora_b`` ``[out, r]`` (torch layouts of the
    canonical ``[in, r]`` and ``[r, out]``). Made from an existing linear in place (:meth:`adapt`), so the
    lowered graph's forward plan, which holds the module itself, runs the adapters."""

    lora_a: nn.Parameter
    lora_b: nn.Parameter
    scale: float

    @classmethod
    def adapt(cls, base: nn.Linear, rank: int, scale: float) -> LoraLinear:
        """``base`` turned into a :class:`LoraLinear` (same object, same parameters, adapters added)."""
        device = base.weight.device
        base.__class__ = cls
        base.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device))
        base.lora_b = nn.Parameter(torch.empty(base.out_features, rank, device=device))
        base.scale = scale
        return base  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ (W + scale * A B)^T + b``: one matmul over the batch, the adapters' product is ``[out, in]``."""
        return F.linear(x, self.weight + self.scale * (self.lora_b @ self.lora_a), self.bias)


def attach_adapters(module: nn.Module, graph: Graph) -> nn.Module:
    """Turn every adapted linear of ``graph`` into a :class:`LoraLinear` (weights loaded afterwards)."""
    ranks = {p.name[: -len(".lora_a")]: p.shape[1] for p in graph.table if p.name.endswith(".lora_a")}
    for name, scale in lora_scales(graph).items():
        base = module.get_submodule(name)
        if type(base) is nn.Linear:  # a low-rank factorised dense layer is not adapted
            LoraLinear.adapt(base, ranks[name], scale)
    return module
