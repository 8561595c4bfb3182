"""Input gradients for explanations and attacks (:meth:`crossframe.backend.Backend.input_gradients`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from crossframe_tensorflow.devices import tf

#: one traced gradient function per (model, objective); the model is kept so its id stays unique
_TRACED: dict[tuple[int, str], tuple[Any, Any]] = {}


def _gradient_fn(state: Any, objective: str) -> Any:
    key = (id(state.model), objective)
    if key not in _TRACED:
        model, dtype, device = state.model, state.dtype, state.device
        shape = [None, *state.setup.spec.data_info.input_shape]

        def gradient(inputs: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
            with tf.device(device), tf.GradientTape() as tape:
                tape.watch(inputs)
                out = tf.cast(model(inputs, dtype), tf.float32)
                if objective == "loss":
                    value = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=index, logits=out))
                else:
                    value = tf.reduce_sum(tf.gather(out, index, axis=1, batch_dims=1))
            return tape.gradient(value, inputs)

        signature = [tf.TensorSpec(shape, tf.float32), tf.TensorSpec([None], tf.int32)]
        _TRACED[key] = (model, tf.function(gradient, input_signature=signature))
    return _TRACED[key][1]


def input_gradients(state: Any, x: np.ndarray, targets: np.ndarray, objective: str) -> np.ndarray:
    """``d/dx`` of the summed target outputs (or cross-entropy losses), float32, in eval mode."""
    fn = _gradient_fn(state, objective)
    grad = fn(tf.convert_to_tensor(np.asarray(x, dtype=np.float32)),
              tf.convert_to_tensor(np.asarray(targets, dtype=np.int32)))
    return np.array(grad.numpy(), dtype=np.float32, copy=True)
