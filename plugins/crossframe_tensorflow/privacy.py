"""DP-SGD on TensorFlow: per-example gradients with ``tf.vectorized_map`` over a ``GradientTape``, each
clipped to ``max_grad_norm``, summed, plus the core's seeded noise, over the expected batch size.

One ``tf.function`` with a fixed signature ``(x, y, weights, *noise, lr)``: the noise arrives with the
batch (``dp_noise/<name>``, drawn by :mod:`crossframe.privacy` in numpy), so TensorFlow adds exactly the
numbers torch and JAX add. ``grad_accum`` micro-batches run in order (their clipped sums add up; the
noise is added once per optimizer step).

Data parallel (``tf.distribute``: MirroredStrategy in one process, MultiWorkerMirroredStrategy across
processes): each replica clips and sums its own rows of every micro-batch; the sums, the loss and the
counts are all-reduced (summed); every replica then adds the same noise (the whole array, the same on
every worker) once and divides by the *global* expected batch, so all copies of the variables take the
step one device would take on the global batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crossframe.errors import CapabilityError
from crossframe.privacy import batch_noise, batch_weights
from crossframe.privacy.setup import CLIP_EPS
from crossframe_tensorflow.devices import tf
from crossframe_tensorflow.distributed import DistributedTrain


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

    replicas = state.replicas

    def step(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor, noise: list[tf.Tensor], lr: tf.Tensor
             ) -> dict[str, tf.Tensor]:
        with tf.device(state.device):
            parts = zip(tf.split(x, k), tf.split(y, k), tf.split(w, k), strict=True) if k > 1 else [(x, y, w)]
            sums: list[tf.Tensor] | None = None
            loss_sum = clipped = tf.constant(0.0)
            for xi, yi, wi in parts:
                s, ls, cl = chunk(xi, yi, wi)
                sums = s if sums is None else [a + b for a, b in zip(sums, s, strict=True)]
                loss_sum, clipped = loss_sum + ls, clipped + cl
            assert sums is not None
            # data parallel: the replicas' clipped sums add up before the one noise draw
            sums, loss_sum, clipped, count = replicas.all_sum((sums, loss_sum, clipped, tf.reduce_sum(w)))
            grads = [(s + n) / expected for s, n in zip(sums, noise, strict=True)]

            def update(by_name: dict[str, tf.Tensor], lr: tf.Tensor) -> None:
                optimizer.apply(by_name, lr)
                if state.masked:
                    state.apply_masks()

            replicas.update(update, dict(zip(names, grads, strict=True)), lr)  # on every copy of the variables
            count = tf.maximum(count, 1.0)
            return {"loss": loss_sum / count, "dp_clipped_fraction": clipped / count}

    if replicas.strategy is not None:
        return PrivateTrain(replicas, step, k)

    def train(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor, *rest: tf.Tensor) -> dict[str, tf.Tensor]:
        *noise, lr = rest
        return step(x, y, w, noise, lr)

    noise_specs = [tf.TensorSpec(p.shape, tf.float32, name=f"noise_{i}") for i, p in enumerate(setup.spec.table)]
    signature = [*_specs(state), tf.TensorSpec([None], tf.float32, name="weights"), *noise_specs,
                 tf.TensorSpec([], tf.float32, name="lr")]
    return Compiled(tf.function(train, input_signature=signature, jit_compile=setup.compile))


class PrivateTrain(DistributedTrain):
    """The DP step on every replica inside one ``tf.function``, called as the one-device step is:
    ``(x, y, weights, *noise, lr)`` with this process's rows; rows and weights are split over the
    local replicas as :class:`~crossframe_tensorflow.distributed.DistributedTrain` splits a batch,
    the noise goes to every replica whole."""

    def __init__(self, replicas: Any, step: Any, grad_accum: int) -> None:
        strategy = replicas.strategy
        self.replicas, self.strategy, self.k, self.lm = replicas, strategy, grad_accum, False

        def train(x: Any, y: Any, w: Any, noise: list[tf.Tensor], lr: tf.Tensor) -> dict[str, tf.Tensor]:
            out = strategy.run(step, args=(x, y, w, noise, lr))
            return {key: strategy.experimental_local_results(value)[0] for key, value in out.items()}

        self.function = tf.function(train, reduce_retracing=True)
        self._concrete: dict[tuple[tuple[int, ...], ...], Any] = {}

    def __call__(self, *args: tf.Tensor) -> dict[str, tf.Tensor]:
        """One DP optimizer step: ``(x, y, weights, *noise, lr)``."""
        x, y, w, *rest = args
        *noise, lr = rest
        inputs = (self._split(x), self._split(y), self._split(w), list(noise), lr)
        return self._call_traced(tuple(tuple(t.shape) for t in (x, y)), inputs)


def train_step(state: Any, batch: dict[str, np.ndarray], lr: float) -> dict[str, Any]:
    """One call of the compiled DP step (the batch carries its noise)."""
    noise = batch_noise(batch)
    args = [tf.convert_to_tensor(batch["x"], dtype=tf.float32),
            tf.convert_to_tensor(batch["y"], dtype=state.label_dtype), tf.convert_to_tensor(batch_weights(batch))]
    args += [tf.convert_to_tensor(noise[p.name]) for p in state.setup.spec.table]
    return state.train_fn(*args, tf.constant(lr, tf.float32))
