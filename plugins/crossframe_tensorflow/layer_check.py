"""A lowered graph's forward and gradients as canonical numpy: what ``crossframe.testing.layers`` checks."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from crossframe.models.spec import ModelSpec


def forward_and_grads(spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray, cotangent: np.ndarray
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """``(outputs, d<out, cot>/d weights in canonical layouts, d<out, cot>/dx or None for ids)``, float32,
    in evaluation mode (dropout off), eagerly."""
    from crossframe_tensorflow.devices import tf
    from crossframe_tensorflow.models import build_model

    model = build_model(spec, dict(weights))
    ids = spec.graph.takes_ids
    xt = tf.constant(np.asarray(x).astype(np.int32 if ids else np.float32))
    variables = [model.params[p.name] for p in spec.table]
    with tf.GradientTape() as tape:
        if not ids:
            tape.watch(xt)
        out = model(xt)
        objective = tf.reduce_sum(out * tf.constant(np.asarray(cotangent, np.float32)))
    grads = tape.gradient(objective, variables + ([] if ids else [xt]))
    # embedding gradients arrive as IndexedSlices; a parameter the output does not use gets None
    by_name = {p.name: (np.zeros(p.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy())
               for p, g in zip(spec.table, grads, strict=False)}
    return out.numpy(), by_name, None if ids else grads[-1].numpy()
