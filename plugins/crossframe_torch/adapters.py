"""LoRA adapters on a lowered graph (torch): each adapted ``nn.Linear`` becomes a :class:`LoraLinear`
(same canonical names, plus ``lora_a`` / ``lora_b``), computing with ``W + scale * B A`` in torch's layouts; with
``train.lora.dropout`` the adapters' input is dropped while training, by the core's hash
(:mod:`crossframe.nn.lora_dropout`) keyed by the call :func:`set_dropout_call` sets before each forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossframe.nn import lora_dropout as hashing
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

    def enable_dropout(self, rate: float, site: int) -> None:
        """Drop ``rate`` of the adapters' input while training (``site``: the hash's constant for this linear)."""
        self.dropout, self.site_constant = rate, site
        self.register_buffer("lora_base", torch.zeros((), dtype=torch.int64, device=self.weight.device),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ (W + scale * A B)^T + b``: one matmul over the batch, the adapters' product is ``[out, in]``;
        with dropout while training, ``x W^T + b + scale * (drop(x) A^T) B^T``."""
        if self.training and getattr(self, "dropout", 0.0) > 0:
            kept = torch.where(self._keep(x), x / (1.0 - self.dropout), torch.zeros_like(x))
            return F.linear(x, self.weight, self.bias) + self.scale * F.linear(F.linear(kept, self.lora_a),
                                                                               self.lora_b)
        return F.linear(x, self.weight + self.scale * (self.lora_b @ self.lora_a), self.bias)

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        """The core's keep mask for ``x`` in this call, in int64 ops (values stay below 2**32 before masking)."""
        j = torch.arange(x.numel(), device=x.device, dtype=torch.int64)
        return (_mix((j + self.lora_base) & hashing.MASK) >= hashing.threshold(self.dropout)).reshape(x.shape)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """:func:`crossframe.nn.lora_dropout.mix` on int64 tensors."""
    x = x ^ (x >> 16)
    x = (x * hashing.MULTIPLIER) & hashing.MASK
    x = x ^ (x >> 16)
    x = (x * hashing.MULTIPLIER) & hashing.MASK
    return x ^ (x >> 16)


def set_dropout_call(module: nn.Module, seed: int, call: int) -> None:
    """Key the adapters' dropout masks of the next forward by the run's ``seed`` and ``call``
    (``step * grad_accum + micro_batch``); nothing to do without adapter dropout."""
    run = None
    for sub in module.modules():
        if isinstance(sub, LoraLinear) and getattr(sub, "dropout", 0.0) > 0:
            run = hashing.run_constant(seed) if run is None else run
            sub.lora_base.fill_(hashing.call_base(run, call, sub.site_constant))


def attach_adapters(module: nn.Module, graph: Graph) -> nn.Module:
    """Turn every adapted linear of ``graph`` into a :class:`LoraLinear` (weights loaded afterwards)."""
    ranks = {p.name[: -len(".lora_a")]: p.shape[1] for p in graph.table if p.name.endswith(".lora_a")}
    sites = hashing.site_constants(lora_scales(graph))
    for name, scale in lora_scales(graph).items():
        base = module.get_submodule(name)
        if type(base) is nn.Linear:  # a low-rank factorised dense layer is not adapted
            adapted = LoraLinear.adapt(base, ranks[name], scale)
            if graph.lora_dropout > 0:
                adapted.enable_dropout(graph.lora_dropout, sites[name])
    return module
