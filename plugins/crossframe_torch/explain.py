"""Input gradients for explanations and attacks (:meth:`crossframe.backend.Backend.input_gradients`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def input_gradients(state: Any, x: np.ndarray, targets: np.ndarray, objective: str) -> np.ndarray:
    """``d/dx`` of the summed target outputs (or cross-entropy losses), float32, in eval mode."""
    state.set_training(False)
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(state.device).requires_grad_(True)
    index = torch.from_numpy(np.asarray(targets, dtype=np.int64)).to(state.device)
    out = state.module(inputs).float()
    picked = out.gather(1, index[:, None]).sum()
    value = F.cross_entropy(out, index, reduction="sum") if objective == "loss" else picked
    (grad,) = torch.autograd.grad(value, inputs)
    return grad.detach().cpu().numpy().astype(np.float32)
