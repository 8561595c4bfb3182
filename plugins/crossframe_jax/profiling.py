"""``--profile N`` on JAX: ``jax.profiler.trace`` (XPlane for TensorBoard, plus a Perfetto trace)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def profile(directory: Path, device: str) -> Iterator[None]:
    """Trace the window into ``directory/plugins/profile/<time>/`` (``*.xplane.pb`` and
    ``*.trace.json.gz``); the device is drained before the trace stops."""
    import jax

    with jax.profiler.trace(str(directory), create_perfetto_trace=True):
        yield
        jax.effects_barrier()
