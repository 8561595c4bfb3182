"""crossframe's PyTorch backend, registered through the ``crossframe`` entry point.

This module is what the entry point imports: it must not import torch. The backend class
lives in :mod:`crossframe_torch.backend` and is imported only when a run asks for it.
"""

from __future__ import annotations

from typing import Any

from crossframe import hookimpl


def _create_backend() -> Any:
    from crossframe_torch.backend import TorchBackend

    return TorchBackend()


@hookimpl
def register_backends(register: Any) -> None:
    """Register the ``torch`` backend (lazily: torch loads when a run starts)."""
    register("torch", _create_backend, description="PyTorch: eager modules, torch.optim, optional torch.compile")
