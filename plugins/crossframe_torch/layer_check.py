"""A lowered graph's forward and gradients as canonical numpy: what ``crossframe.testing.layers`` checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from crossframe.models.spec import ModelSpec


def forward_and_grads(spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray, cotangent: np.ndarray
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """``(outputs, d<out, cot>/d weights in canonical layouts, d<out, cot>/dx or None for ids)``, float32,
    in evaluation mode (dropout off)."""
    import torch

    from crossframe_torch.models import build_module, load_canonical, native_parameters, to_canonical

    module = build_module(spec)
    load_canonical(module, spec, dict(weights))
    module.eval()
    ids = spec.graph.takes_ids
    xt = torch.from_numpy(np.asarray(x).astype(np.int64 if ids else np.float32))
    if not ids:
        xt.requires_grad_(True)
    out = module(xt)
    (out * torch.from_numpy(np.asarray(cotangent, np.float32))).sum().backward()
    native = native_parameters(module, spec)
    grads: dict[str, Any] = {p.name: to_canonical(p.layout, native[p.name].grad).numpy() for p in spec.table}
    return out.detach().numpy(), grads, None if ids else xt.grad.numpy()
