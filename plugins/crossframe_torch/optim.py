"""torch.optim optimizers for crossframe's optimizer names, and their state in canonical form."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crossframe.backend import TrainSetup
from crossframe.errors import CapabilityError
from crossframe.models.spec import Params
from crossframe.optimizers import STATE_SLOTS, state_step
from crossframe_torch.models import to_canonical, to_native

SUPPORTED = tuple(STATE_SLOTS)
_NATIVE_SLOT = {"momentum": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
                "square_avg": "square_avg", "sum": "sum"}


def build_optimizer(setup: TrainSetup, params: dict[str, torch.nn.Parameter], device: torch.device
                    ) -> torch.optim.Optimizer:
    """The native optimizer; weight decay only on parameters whose spec says ``decay``."""
    o = dict(setup.optimizer_params)
    decay = setup.decay_mask
    groups = [
        {"params": [p for n, p in params.items() if decay[n]], "weight_decay": o.get("weight_decay", 0.0)},
        {"params": [p for n, p in params.items() if not decay[n]], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    fused = device.type == "cuda"
    if setup.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o["lr"], momentum=o.get("momentum", 0.0),
                               nesterov=o.get("nesterov", False), foreach=not fused, fused=fused or None)
    if setup.optimizer in ("adam", "adamw"):
        cls = torch.optim.AdamW if setup.optimizer == "adamw" else torch.optim.Adam
        # the fused kernel on the CPU too (one op per parameter group instead of ten foreach ops: on the
        # quickstart MLP 57 us a step against 155 us); not under fp16's GradScaler
        fused_adam = fused or (device.type == "cpu" and setup.precision != "fp16")
        return cls(groups, lr=o["lr"], betas=tuple(o.get("betas", (0.9, 0.999))), eps=o.get("eps", 1e-8),
                   foreach=not fused_adam, fused=fused_adam or None)
    if setup.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=o["lr"], alpha=o.get("alpha", 0.99), eps=o.get("eps", 1e-8),
                                   foreach=True)
    if setup.optimizer == "adagrad":
        return torch.optim.Adagrad(groups, lr=o["lr"], eps=o.get("eps", 1e-10), foreach=True)
    if setup.optimizer == "lion":
        from crossframe_torch.lion import Lion

        return Lion(groups, lr=o["lr"], betas=tuple(o.get("betas", (0.9, 0.99))))
    raise CapabilityError(f"train.optimizer.name: backend 'torch' does not support '{setup.optimizer}'")


def export_optimizer_state(opt: torch.optim.Optimizer, name: str, params: dict[str, torch.nn.Parameter],
                           layouts: dict[str, str], step: int) -> Params:
    """Canonical optimizer state: ``<slot>/<param>`` arrays and the scalar ``step`` (updates applied)."""
    out: Params = {}
    for pname, param in params.items():
        state = opt.state.get(param, {})
        for slot in STATE_SLOTS[name]:
            value = state.get(_NATIVE_SLOT[slot])
            if value is None:
                canonical = np.zeros(to_canonical(layouts[pname], param.detach()).shape, np.float32)
            else:
                canonical = to_canonical(layouts[pname], value.detach()).float().cpu().contiguous().numpy().copy()
            out[f"{slot}/{pname}"] = canonical
    out["step"] = np.asarray(float(step), np.float32)
    return out


def load_optimizer_state(opt: torch.optim.Optimizer, name: str, params: dict[str, torch.nn.Parameter],
                         layouts: dict[str, str], state: Params) -> int:
    """Install canonical optimizer state into the native optimizer; returns its step count."""
    step = state_step(state)
    opt.state.clear()
    if step == 0:
        if name == "adagrad":  # torch.optim.Adagrad makes its state at construction and expects it
            for param in params.values():
                opt.state[param] = {"step": torch.tensor(0.0), "sum": torch.zeros_like(param)}
        return 0
    for pname, param in params.items():
        native: dict[str, Any] = {}
        for slot in STATE_SLOTS[name]:
            key = f"{slot}/{pname}"
            if key not in state:
                raise CapabilityError(f"checkpoint: optimizer state has no '{key}' for '{name}'")
            value = torch.from_numpy(np.ascontiguousarray(state[key])).to(param.device, param.dtype)
            native[_NATIVE_SLOT[slot]] = to_native(layouts[pname], value).contiguous()
        if name != "sgd":
            native["step"] = torch.tensor(float(step), dtype=torch.float32)
        opt.state[param] = native
    return step
