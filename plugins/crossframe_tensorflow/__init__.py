"""crossframe's TensorFlow backend, registered through the ``crossframe`` entry point.

This module is what the entry point imports: it must not import tensorflow. The backend class
lives in :mod:`crossframe_tensorflow.backend` and is imported only when a run asks for it. It
uses tf.Module / tf.Variable / tf.function directly and never Keras, so Keras' global backend
setting (``KERAS_BACKEND``) cannot change what runs.
"""

from __future__ import annotations

from typing import Any

from crossframe import hookimpl


def _create_backend() -> Any:
    from crossframe_tensorflow.backend import TensorFlowBackend

    return TensorFlowBackend()


@hookimpl
def register_backends(register: Any) -> None:
    """Register the ``tensorflow`` backend (lazily: tensorflow loads when a run starts)."""
    register("tensorflow", _create_backend, description="TensorFlow: tf.function steps on tf.Variables")
