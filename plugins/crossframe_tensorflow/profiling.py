"""``--profile N`` on TensorFlow: ``tf.profiler.experimental`` writes an XPlane trace for TensorBoard."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def profile(directory: Path, device: str) -> Iterator[None]:
    """Trace the window into ``directory/plugins/profile/<time>/<host>.xplane.pb``."""
    import tensorflow as tf

    tf.profiler.experimental.start(str(directory))
    try:
        yield
    finally:
        tf.profiler.experimental.stop()
