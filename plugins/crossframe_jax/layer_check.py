"""A lowered graph's forward and gradients as canonical numpy: what ``crossframe.testing.layers`` checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from crossframe.models.spec import ModelSpec


def forward_and_grads(spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray, cotangent: np.ndarray
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """``(outputs, d<out, cot>/d weights in canonical layouts, d<out, cot>/dx or None for ids)``, float32,
    in evaluation mode (dropout off), each under ``jax.jit``."""
    import jax
    import jax.numpy as jnp

    from crossframe_jax.models import make_forward

    fn = make_forward(spec)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}
    ids = spec.graph.takes_ids
    xj = jnp.asarray(x, jnp.int32 if ids else jnp.float32)
    c = jnp.asarray(cotangent, jnp.float32)

    def objective(p: Any, xi: Any) -> Any:
        return jnp.sum(fn(p, xi) * c)

    out = jax.jit(fn)(params, xj)
    if ids:
        gp = jax.jit(jax.grad(objective))(params, xj)
        return np.asarray(out), {k: np.asarray(v) for k, v in gp.items()}, None
    gp, gx = jax.jit(jax.grad(objective, argnums=(0, 1)))(params, xj)
    return np.asarray(out), {k: np.asarray(v) for k, v in gp.items()}, np.asarray(gx)
