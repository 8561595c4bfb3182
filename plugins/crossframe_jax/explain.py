"""Input gradients for explanations and attacks (:meth:`crossframe.backend.Backend.input_gradients`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: one compiled gradient function per (program, objective); the program is kept so its id stays unique
_COMPILED: dict[tuple[int, str], tuple[Any, Any]] = {}


def _gradient_fn(program: Any, objective: str) -> Any:
    key = (id(program), objective)
    if key not in _COMPILED:
        forward = program.forward

        def value(params: Any, x: jax.Array, targets: jax.Array) -> jax.Array:
            out = forward(params, x).astype(jnp.float32)
            picked = jnp.take_along_axis(out, targets[:, None], axis=1)[:, 0]
            if objective == "loss":
                return jnp.sum(jax.nn.logsumexp(out, axis=1) - picked)
            return jnp.sum(picked)

        _COMPILED[key] = (program, jax.jit(jax.grad(value, argnums=1)))
    return _COMPILED[key][1]


def input_gradients(state: Any, x: np.ndarray, targets: np.ndarray, objective: str) -> np.ndarray:
    """``d/dx`` of the summed target outputs (or cross-entropy losses), float32, in eval mode."""
    fn = _gradient_fn(state.program, objective)
    device = state.program.device
    grad = fn(state.params, jax.device_put(np.asarray(x, np.float32), device),
              jax.device_put(np.asarray(targets, np.int32), device))
    return np.asarray(jax.device_get(grad), dtype=np.float32)
