"""DP-SGD on TensorFlow: per-example gradients with ``tf.vectorized_map`` over a ``GradientTape``, each
clipped to ``max_grad_norm``, summed, plus the core's seeded noise, over the expected batch size.

One ``tf.function`` with a fixed signature ``(x, y, weights, *noise, lr)``: the noise arrives with the
batch (``dp_noise/<name>``, drawn by :mod:`crossframe.privacy` in numpy), so TensorFlow adds exactly the
numbers torch and JAX add. ``grad_accum`` micro-batches run in order (their clipped sums add up; the
noise is added once per optimizer step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crossframe.errors import CapabilityError
from crossframe.privacy import batch_noise, batch_weights
from crossframe.privacy.setup import CLIP_EPS
from crossframe_tensorflow.devices import tf


def clipped_sum(grads: list[tf.Tensor], weights: tf.Tensor, max_grad_norm: float) -> tuple[list[tf.Tensor], tf.Tensor]:
    """``sum_i w_i * min(1, C / (||g_i|| + eps)) * g_i`` per variable, and each example's norm ``[B]``."""
    squares = tf.add_n([tf.reduce_sum(tf.square(tf.reshape(tf.cast(g, tf.float32), [tf.shape(g)[0], -1])), axis=1)
                        for g in grads])
    norms = tf.sqrt(squares)
    factor = tf.minimum(1.0, max_grad_norm / (norms + CLIP_EPS)) * weights
    return [tf.tensordot(factor, tf.cast(g, tf.float32), axes=1) for g in grads], norms


def train_function(state: Any) -> Any:
    """The compiled DP step of ``state`` (a :class:`crossframe_tensorflow.backend.TFState`)."""
    from crossframe_tensorflow.backend import Compiled, _loss_fn, _specs

    setup, model, optimizer = state.setup, state.model, state.optimizer
    priv = setup.privacy
    assert optimizer is not None and priv is not None
    if model.uses_rng:
        raise CapabilityError("train.privacy: dropout inside per-example gradients is not supported on tensorflow; "
                              "remove the dropout layers or use the torch or jax backend")
    per_example = _loss_fn(state)
    names = [p.name for p in setup.spec.table]
    variables = model.ordered
    k, c, expected = setup.grad_accum, float(priv.max_grad_norm), float(priv.expected_batch)

    def chunk(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
        def one(args: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
            xi, yi = args
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(variables)
                loss = per_example(model(xi[None], state.dtype, training=True), yi[None])[0]
            return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

        losses, grads = tf.vectorized_map(one, (x, y))
        sums, norms = clipped_sum(grads, w, c)
        return sums, tf.reduce_sum(losses * w), tf.reduce_sum(tf.cast(norms > c, tf.float32) * w)

    def train(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor, *rest: tf.Tensor) -> dict[str, tf.Tensor]:
        *noise, lr = rest
        with tf.device(state.device):
            parts = zip(tf.split(x, k), tf.split(y, k), tf.split(w, k), strict=True) if k > 1 else [(x, y, w)]
            sums: list[tf.Tensor] | None = None
            loss_sum = clipped = tf.constant(0.0)
            for xi, yi, wi in parts:
                s, ls, cl = chunk(xi, yi, wi)
                sums = s if sums is None else [a + b for a, b in zip(sums, s, strict=True)]
                loss_sum, clipped = loss_sum + ls, clipped + cl
            assert sums is not None
            grads = [(s + n) / expected for s, n in zip(sums, noise, strict=True)]
            optimizer.apply(dict(zip(names, grads, strict=True)), lr)
            if state.masked:
                state.apply_masks()
            count = tf.maximum(tf.reduce_sum(w), 1.0)
            return {"loss": loss_sum / count, "dp_clipped_fraction": clipped / count}

    noise_specs = [tf.TensorSpec(p.shape, tf.float32, name=f"noise_{i}") for i, p in enumerate(setup.spec.table)]
    signature = [*_specs(state), tf.TensorSpec([None], tf.float32, name="weights"), *noise_specs,
                 tf.TensorSpec([], tf.float32, name="lr")]
    return Compiled(tf.function(train, input_signature=signature, jit_compile=setup.compile))


def train_step(state: Any, batch: dict[str, np.ndarray], lr: float) -> dict[str, Any]:
    """One call of the compiled DP step (the batch carries its noise)."""
    noise = batch_noise(batch)
    args = [tf.convert_to_tensor(batch["x"], dtype=tf.float32),
            tf.convert_to_tensor(batch["y"], dtype=state.label_dtype), tf.convert_to_tensor(batch_weights(batch))]
    args += [tf.convert_to_tensor(noise[p.name]) for p in state.setup.spec.table]
    return state.train_fn(*args, tf.constant(lr, tf.float32))
