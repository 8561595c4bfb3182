"""DP-SGD on torch: per-example gradients with ``torch.func`` (``vmap`` over ``grad``), each clipped
to ``max_grad_norm``, summed, plus the core's seeded noise, over the expected batch size.

The backend's ``train_step`` hands a step here when ``TrainSetup.privacy`` is set. Micro-batches of
``grad_accum`` are processed one after another (their clipped sums add up; the noise is added once
per optimizer step), then the configured optimizer steps on the private gradient as usual.

Data parallel (DDP, ``strategy: data_parallel``): each worker clips and sums its own examples; the
sums (with the loss and counts) are all-reduced, summed, in one flat buffer; then every worker adds
the same noise (drawn from ``(seed, step)`` by its loader) once, and divides by the *global*
expected batch, so all workers take the identical step one process would take on the global batch.
DDP's own gradient hooks never fire: the per-example gradients come from ``torch.func``, not backward.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crossframe.privacy import batch_noise, batch_weights
from crossframe.privacy.setup import CLIP_EPS
from crossframe_torch import distributed
from crossframe_torch.models import to_native


def _names(state: Any) -> list[tuple[str, str, str]]:
    """``(canonical name, module parameter name, layout)`` for every parameter, in table order."""
    cached = getattr(state, "_dp_names", None)
    if cached is None:
        by_id = {id(p): n for n, p in state.module.named_parameters()}
        layouts = {p.name: p.layout for p in state.setup.spec.table}
        cached = [(c, by_id[id(p)], layouts[c]) for c, p in state.params.items()]
        state._dp_names = cached
    return cached


def per_example_grads(state: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example losses ``[B]`` and gradients ``{module parameter name: [B, *shape]}`` (torch.func)."""
    from torch.func import functional_call, grad_and_value, vmap

    module, loss_kind = state.module, state.setup.loss
    params = {n: p.detach() for n, p in module.named_parameters()}

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, p, (xi.unsqueeze(0),)).float()
        if loss_kind == "cross_entropy":
            return F.cross_entropy(out, yi.unsqueeze(0))
        return F.mse_loss(out, yi.unsqueeze(0))

    fn = vmap(grad_and_value(one), in_dims=(None, 0, 0), randomness="different")
    remat = getattr(module, "activation_checkpointing", False)
    module.activation_checkpointing = False  # torch.func runs no saved-tensor hooks (what checkpointing uses)
    try:
        if state.autocast_dtype is None:
            grads, losses = fn(params, x, y)
        else:
            with torch.autocast(state.device.type, dtype=state.autocast_dtype):
                grads, losses = fn(params, x, y)
    finally:
        module.activation_checkpointing = remat
    return losses, grads


def clipped_sum(grads: dict[str, torch.Tensor], weights: torch.Tensor, max_grad_norm: float
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``sum_i w_i * min(1, C / (||g_i|| + eps)) * g_i`` per parameter, and each example's norm ``[B]``."""
    per_param = [torch.linalg.vector_norm(g.flatten(1), dim=1, dtype=torch.float32) for g in grads.values()]
    norms = torch.linalg.vector_norm(torch.stack(per_param, dim=1), dim=1)
    factor = torch.clamp(max_grad_norm / (norms + CLIP_EPS), max=1.0) * weights
    return {n: torch.tensordot(factor, g.float(), dims=1) for n, g in grads.items()}, norms


def all_reduce_sums(sums: dict[str, torch.Tensor], scalars: list[torch.Tensor]
                    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """``sums`` and ``scalars`` summed over every worker: one all-reduce of one flat float32 buffer."""
    import torch.distributed as dist

    names = list(sums)
    flat = torch.cat([sums[n].reshape(-1) for n in names] + [s.reshape(1).float() for s in scalars])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, at = {}, 0
    for n in names:
        size = sums[n].numel()
        out[n] = flat[at:at + size].view_as(sums[n])
        at += size
    return out, list(flat[at:].unbind())


def train_step(state: Any, batch: dict[str, np.ndarray], lr: float) -> tuple[Any, dict[str, Any]]:
    """One DP-SGD optimizer step on ``batch`` (which carries its noise) at rate ``lr``."""
    setup, opt = state.setup, state.optimizer
    priv = setup.privacy
    assert opt is not None and priv is not None
    for group in opt.param_groups:
        group["lr"] = lr
    state.set_training(True)
    dev = state.device

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    x, y, w = put(batch["x"]), put(batch["y"]), put(batch_weights(batch))
    k = setup.grad_accum
    sums: dict[str, torch.Tensor] | None = None
    loss_sum = clipped = torch.zeros((), device=dev)
    for xi, yi, wi in zip(x.chunk(k), y.chunk(k), w.chunk(k), strict=True):
        losses, grads = per_example_grads(state, xi, yi)
        part, norms = clipped_sum(grads, wi, priv.max_grad_norm)
        sums = part if sums is None else {n: sums[n] + part[n] for n in sums}
        loss_sum = loss_sum + (losses.float() * wi).sum()
        clipped = clipped + ((norms > priv.max_grad_norm).float() * wi).sum()
    assert sums is not None
    count = w.sum()
    if distributed.active(setup):  # the workers' clipped sums add up before the one noise draw
        sums, (loss_sum, clipped, count) = all_reduce_sums(sums, [loss_sum, clipped, count])
    noise = batch_noise(batch)
    with torch.no_grad():
        for canonical, name, layout in _names(state):
            param = state.params[canonical]
            total = sums[name] + to_native(layout, put(noise[canonical])).to(sums[name].dtype)
            param.grad = (total / priv.expected_batch).to(param.dtype).reshape(param.shape)
    opt.step()
    if state.masked is not None:
        state.apply_masks()
    opt.zero_grad(set_to_none=True)
    state.step += 1
    count = torch.clamp(count, min=1.0)
    return state, {"loss": loss_sum / count, "dp_clipped_fraction": clipped / count}
