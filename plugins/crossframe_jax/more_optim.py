"""RMSprop, Adagrad and Lion as optax transforms giving the update *direction* (no learning rate).

Each keeps its slots in one :class:`Slots` state (``values``: slot name -> parameter tree), so the
canonical export in :mod:`crossframe_jax.optim` reads them by name. The rules are those of
:mod:`crossframe.optimizers`; the compiled step applies ``params - lr * direction``:

- ``rmsprop``: ``v = alpha v + (1 - alpha) g^2``, direction ``g / (sqrt(v) + eps)``;
- ``adagrad``: ``s = s + g^2``, direction ``g / (sqrt(s) + eps)``;
- ``lion``: direction ``sign(b1 m + (1 - b1) g)``, then ``m = b2 m + (1 - b2) g`` (decoupled decay is
  chained after it, as for adamw).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Slots(NamedTuple):
    """Named optimizer slots: ``{"square_avg": {param: array}}`` and the like."""

    values: dict[str, Any]


def _zeros(slot: str) -> Any:
    def init(params: Any) -> Slots:
        return Slots({slot: jax.tree.map(jnp.zeros_like, params)})
    return init


def scale_by_rmsprop(alpha: float, eps: float) -> optax.GradientTransformation:
    """torch's RMSprop direction (``eps`` outside the square root, no momentum)."""
    def update(g: Any, state: Slots, params: Any = None) -> tuple[Any, Slots]:
        v = jax.tree.map(lambda v, g: alpha * v + (1.0 - alpha) * g * g, state.values["square_avg"], g)
        return jax.tree.map(lambda g, v: g / (jnp.sqrt(v) + eps), g, v), Slots({"square_avg": v})
    return optax.GradientTransformation(_zeros("square_avg"), update)


def scale_by_adagrad(eps: float) -> optax.GradientTransformation:
    """Adagrad's direction from the running sum of squared gradients."""
    def update(g: Any, state: Slots, params: Any = None) -> tuple[Any, Slots]:
        s = jax.tree.map(lambda s, g: s + g * g, state.values["sum"], g)
        return jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), g, s), Slots({"sum": s})
    return optax.GradientTransformation(_zeros("sum"), update)


def scale_by_lion(b1: float, b2: float) -> optax.GradientTransformation:
    """Lion's direction: the sign of the interpolated momentum."""
    def update(g: Any, state: Slots, params: Any = None) -> tuple[Any, Slots]:
        m = state.values["exp_avg"]
        direction = jax.tree.map(lambda m, g: jnp.sign(b1 * m + (1.0 - b1) * g), m, g)
        return direction, Slots({"exp_avg": jax.tree.map(lambda m, g: b2 * m + (1.0 - b2) * g, m, g)})
    return optax.GradientTransformation(_zeros("exp_avg"), update)


def build(name: str, o: dict, decay: optax.GradientTransformation) -> optax.GradientTransformation | None:
    """The two-link chain for ``name`` (stateful link at :data:`STATEFUL_LINK`), or None for another name."""
    if name == "rmsprop":
        return optax.chain(decay, scale_by_rmsprop(float(o.get("alpha", 0.99)), float(o.get("eps", 1e-8))))
    if name == "adagrad":
        return optax.chain(decay, scale_by_adagrad(float(o.get("eps", 1e-10))))
    if name == "lion":
        b1, b2 = (float(b) for b in o.get("betas", (0.9, 0.99)))
        return optax.chain(scale_by_lion(b1, b2), decay)
    return None


STATEFUL_LINK = {"rmsprop": 1, "adagrad": 1, "lion": 0}
