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


def test_torch_fetch_of_a_window_of_scalars_is_host_numpy_and_anything_else_takes_the_general_path() -> None:
    torch = pytest.importorskip("torch")
    backend = make_backend("torch")
    window = backend.fetch([{"loss": torch.tensor(float(i)), "grad_norm": torch.tensor(2.0 * i)} for i in range(5)])
    assert [float(h["loss"]) for h in window] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [float(h["grad_norm"]) for h in window] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert all(isinstance(v, np.generic) for h in window for v in h.values())
    _check(backend.fetch(_pending(torch.tensor, lambda v: torch.tensor(v, dtype=torch.float32))))
    uneven = backend.fetch([{"a": torch.ones(())}, {"b": torch.ones(())}])  # keys differ: each dict on its own
    assert list(uneven[0]) == ["a"] and list(uneven[1]) == ["b"]
    tracked = backend.fetch([{"loss": torch.ones((), requires_grad=True) * 2} for _ in range(3)])  # not detached
    assert [float(h["loss"]) for h in tracked] == [2.0, 2.0, 2.0]
    vectors = backend.fetch([{"a": torch.ones(2)}, {"a": torch.zeros(2)}])  # not scalars
    np.testing.assert_array_equal(vectors[1]["a"], np.zeros(2, np.float32))
