"""The classification training loss of :mod:`crossframe.losses` in TensorFlow (per example, float32)."""

from __future__ import annotations

from collections.abc import Callable

from crossframe.losses import LossSetup
from crossframe_tensorflow.devices import tf


def per_example(logits: tf.Tensor, y: tf.Tensor, setup: LossSetup) -> tf.Tensor:
    """``w[y] * -sum_c q_c (1 - p_c)^gamma log p_c`` per example ``[B]``."""
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=1)
    k = int(logits.shape[1])
    eps = setup.label_smoothing
    q = tf.one_hot(tf.cast(y, tf.int32), k, dtype=tf.float32) * (1.0 - eps) + eps / k
    terms = q * logp
    if setup.gamma:
        terms = terms * tf.pow(1.0 - tf.exp(logp), setup.gamma)
    per = -tf.reduce_sum(terms, axis=1)
    if setup.class_weights is not None:
        per = per * tf.gather(tf.constant(setup.class_weights, tf.float32), tf.cast(y, tf.int32))
    return per


def bound(setup: LossSetup) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """:func:`per_example` with ``setup`` fixed: ``(logits, y) -> [B]``."""
    return lambda logits, y: per_example(logits, y, setup)
