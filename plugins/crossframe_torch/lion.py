"""Lion for torch (torch.optim has none): the rule of :mod:`crossframe.optimizers`, foreach kernels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Lion(torch.optim.Optimizer):
    """``c = b1 m + (1 - b1) g``; ``p -= lr (sign(c) + wd p)``; ``m = b2 m + (1 - b2) g`` (state ``exp_avg``)."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            moms = []
            for p in params:
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                moms.append(state["exp_avg"])
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            update = torch._foreach_lerp(moms, grads, 1.0 - b1)  # b1 * m + (1 - b1) * g
            signs = torch._foreach_sign(update)
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_add_(params, signs, alpha=-lr)
            torch._foreach_lerp_(moms, grads, 1.0 - b2)
        return loss
