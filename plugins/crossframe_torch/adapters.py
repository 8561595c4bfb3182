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
    canonical ``[in, r]`` and ``[r, out]``)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.empty(base.out_features, rank))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ (W + scale * A B)^T + b``: one matmul over the batch, the adapters' product is ``[out, in]``."""
        return F.linear(x, self.weight + self.scale * (self.lora_b @ self.lora_a), self.bias)


def attach_adapters(module: nn.Module, graph: Graph) -> nn.Module:
    """Swap every adapted linear of ``graph`` for a :class:`LoraLinear` (weights loaded afterwards)."""
    ranks = {p.name[: -len(".lora_a")]: p.shape[1] for p in graph.table if p.name.endswith(".lora_a")}
    for name, scale in lora_scales(graph).items():
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        base = getattr(parent, attr)
        if not isinstance(base, nn.Linear):
            continue  # a low-rank factorised dense layer: not adapted (refused in the core)
        setattr(parent, attr, LoraLinear(base, ranks[name], scale))
    return module
