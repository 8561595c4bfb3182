"""``Backend.fetch`` of the loop's pending step outputs (a list of dicts) gives host values at every depth.

jax and tensorflow take a fast path for that shape (one comprehension instead of a tree walk, since it
runs inside the timed loop at every log step); these tests hold it to the general path's results.
"""

from __future__ import annotations

import numpy as np
import pytest

from crossframe.train.runner import make_backend


def _pending(array: object, scalar: object) -> list[dict[str, object]]:
    return [{"loss": scalar(float(i)), "extra": {"v": array(np.arange(3.0) + i)}, "count": 64 + i}
            for i in range(4)]


def _check(host: list[dict[str, object]]) -> None:
    assert [h["count"] for h in host] == [64, 65, 66, 67]
    for i, h in enumerate(host):
        assert isinstance(h["loss"], np.ndarray | np.generic) and float(h["loss"]) == float(i)
        assert isinstance(h["extra"]["v"], np.ndarray)
        np.testing.assert_array_equal(h["extra"]["v"], np.arange(3.0) + i)


def test_jax_fetch_of_pending_outputs_is_host_numpy() -> None:
    jnp = pytest.importorskip("jax.numpy")
    backend = make_backend("jax")
    _check(backend.fetch(_pending(jnp.asarray, lambda v: jnp.asarray(v, jnp.float32))))


def test_tensorflow_fetch_of_pending_outputs_is_host_numpy() -> None:
    tf = pytest.importorskip("tensorflow")
    backend = make_backend("tensorflow")
    _check(backend.fetch(_pending(tf.constant, lambda v: tf.constant(v, tf.float32))))
