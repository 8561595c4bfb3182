"""crossframe's JAX backend (jax + optax), registered through the ``crossframe`` entry point.

This module is what the entry point imports: it must not import jax. The backend class lives
in :mod:`crossframe_jax.backend` and is imported only when a run asks for it.
"""

from __future__ import annotations

from typing import Any

from crossframe import hookimpl


def _create_backend() -> Any:
    from crossframe_jax.backend import JaxBackend

    return JaxBackend()


@hookimpl
def register_backends(register: Any) -> None:
    """Register the ``jax`` backend (lazily: jax loads when a run starts)."""
    register("jax", _create_backend, description="JAX: jit-compiled functional steps with optax")
