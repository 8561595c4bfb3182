"""DP-SGD on JAX: per-example gradients with ``jax.vmap`` over ``jax.value_and_grad``, each clipped to
``max_grad_norm``, summed, plus the core's seeded noise, over the expected batch size; one jit step.

The noise arrives with the batch (``dp_noise/<name>``, drawn by :mod:`crossframe.privacy` in numpy)
and goes into the compiled step as an argument, so JAX adds exactly the numbers torch and TensorFlow
add. ``grad_accum`` micro-batches run under ``lax.scan`` (their clipped sums add up; the noise is
added once per optimizer step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from crossframe.backend import TrainSetup
from crossframe.privacy import batch_noise, batch_weights
from crossframe.privacy.setup import CLIP_EPS


def clipped_sum(grads: Mapping[str, jax.Array], weights: jax.Array, max_grad_norm: float
                ) -> tuple[dict[str, jax.Array], jax.Array]:
    """``sum_i w_i * min(1, C / (||g_i|| + eps)) * g_i`` per parameter, and each example's norm ``[B]``."""
    leaves = jax.tree.leaves(grads)
    squares = sum(jnp.sum(jnp.square(g.astype(jnp.float32).reshape(g.shape[0], -1)), axis=1) for g in leaves)
    norms = jnp.sqrt(squares)
    factor = jnp.minimum(1.0, max_grad_norm / (norms + CLIP_EPS)) * weights
    return {n: jnp.tensordot(factor, g.astype(jnp.float32), axes=1) for n, g in grads.items()}, norms


def make_train_fn(setup: TrainSetup, forward: Any, tx: optax.GradientTransformation,
                  traces: dict[str, int], uses_rng: bool = False) -> Callable[..., Any]:
    """The jit-compiled DP step ``train(params, opt, x, y, weights, noise, lr[, extra])`` (params and
    optimizer state donated)."""
    from crossframe_jax.backend import _count_trace, apply_masks, per_example_loss
    from crossframe_jax.optim import OptState

    priv = setup.privacy
    k, loss_name, seed = setup.grad_accum, setup.loss, int(setup.seed)
    c, expected = float(priv.max_grad_norm), float(priv.expected_batch)

    def one(params: Mapping[str, jax.Array], x: jax.Array, y: jax.Array, key: jax.Array | None) -> jax.Array:
        out = forward(params, x[None], train=True) if key is None else forward(params, x[None], train=True, rng=key)
        return per_example_loss(loss_name, out, y[None])[0]

    per_example = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0, 0 if uses_rng else None))

    def chunk(params: Mapping[str, jax.Array], x: jax.Array, y: jax.Array, w: jax.Array, key: jax.Array | None
              ) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
        keys = None if key is None else jax.random.split(key, x.shape[0])
        losses, grads = per_example(params, x, y, keys)
        sums, norms = clipped_sum(grads, w, c)
        return sums, jnp.sum(losses * w), jnp.sum((norms > c).astype(jnp.float32) * w)

    def train(params: dict[str, jax.Array], opt: Any, x: jax.Array, y: jax.Array, w: jax.Array,
              noise: Mapping[str, jax.Array], lr: jax.Array, extra: Mapping[str, Any] | None = None
              ) -> tuple[dict[str, jax.Array], Any, dict[str, jax.Array]]:
        _count_trace(traces, "train")
        key = jax.random.fold_in(jax.random.key(seed), opt.step) if uses_rng else None
        if k == 1:
            sums, loss_sum, clipped = chunk(params, x, y, w, key)
        else:
            def micro(carry: Any, part: tuple[jax.Array, ...]) -> tuple[Any, None]:
                xi, yi, wi, i = part
                key_i = None if key is None else jax.random.fold_in(key, i)
                got = chunk(params, xi, yi, wi, key_i)
                return jax.tree.map(jnp.add, carry, got), None

            def split(a: jax.Array) -> jax.Array:
                return a.reshape(k, a.shape[0] // k, *a.shape[1:])  # contiguous chunks, as torch.chunk

            init = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (sums, loss_sum, clipped), _ = jax.lax.scan(micro, init, (split(x), split(y), split(w), jnp.arange(k)))
        grads = {n: (sums[n] + noise[n]) / expected for n in sums}
        direction, inner = tx.update(grads, opt.inner, params)
        params = {n: p - lr * direction[n] if n in direction else p for n, p in params.items()}  # frozen: none
        if extra and extra.get("masks"):
            params = apply_masks(params, extra["masks"])
        count = jnp.maximum(jnp.sum(w), 1.0)
        return params, OptState(inner, opt.step + 1), {"loss": loss_sum / count, "dp_clipped_fraction": clipped / count}

    return jax.jit(train, donate_argnums=(0, 1))


def train_step(state: Any, batch: dict[str, np.ndarray], lr: float) -> tuple[Any, dict[str, Any]]:
    """One dispatch of the compiled DP step (the batch carries its noise)."""
    from crossframe_jax.backend import JaxState

    program = state.program
    if program.train is None:
        raise TypeError("train_step: this state was built by inference_state and cannot train")
    params, opt, out = program.train(state.params, state.opt_state, batch["x"], batch["y"], batch_weights(batch),
                                     batch_noise(batch), np.float32(lr), *program.extra)
    return JaxState(program, params, opt), out
