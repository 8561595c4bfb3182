"""The classification training loss of :mod:`crossframe.losses` in jax (per example, float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crossframe.losses import LossSetup


def per_example(logits: jax.Array, y: jax.Array, setup: LossSetup) -> jax.Array:
    """``w[y] * -sum_c q_c (1 - p_c)^gamma log p_c`` per example ``[B]``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=1)
    k = logits.shape[1]
    eps = setup.label_smoothing
    q = jax.nn.one_hot(y.astype(jnp.int32), k, dtype=jnp.float32) * (1.0 - eps) + eps / k
    terms = q * logp
    if setup.gamma:
        terms = terms * jnp.power(1.0 - jnp.exp(logp), setup.gamma)
    per = -jnp.sum(terms, axis=1)
    if setup.class_weights is not None:
        per = per * jnp.asarray(setup.class_weights, jnp.float32)[y.astype(jnp.int32)]
    return per
