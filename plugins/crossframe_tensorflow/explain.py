"""Input gradients for explanations and attacks (:meth:`crossframe.backend.Backend.input_gradients`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from crossframe_tensorflow.devices import tf


def input_gradients(state: Any, x: np.ndarray, targets: np.ndarray, objective: str) -> np.ndarray:
    """``d/dx`` of the summed target outputs (or cross-entropy losses), float32, in eval mode."""
    with tf.device(state.device):
        inputs = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
        index = tf.convert_to_tensor(np.asarray(targets, dtype=np.int32))
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = tf.cast(state.model(inputs, state.dtype), tf.float32)
            if objective == "loss":
                value = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=index, logits=out))
            else:
                value = tf.reduce_sum(tf.gather(out, index, axis=1, batch_dims=1))
        grad = tape.gradient(value, inputs)
    return np.array(grad.numpy(), dtype=np.float32, copy=True)
