"""``--profile N``: the backend's own profiler over N steps after a short warm-up.

The loop asks :class:`ProfileWindow` before and after each step; outside the window that is one
integer comparison. The trace goes to ``RUN_DIR/profile/`` in the backend's native format
(torch: a Chrome/Perfetto ``trace.json``; JAX and TensorFlow: XPlane under
``plugins/profile/<time>/``, which TensorBoard's profile plugin opens, and a Perfetto trace on JAX).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossframe.errors import CapabilityError
from crossframe.log import get_logger

log = get_logger(__name__)

PROFILE_DIR = "profile"


class ProfileWindow:
    """Opens the backend's profiler before step ``start`` and closes it after step ``stop``."""

    def __init__(self, backend: Any, backend_name: str, device: str, run_dir: Path, first_step: int,
                 total: int, steps: int, warmup: int) -> None:
        self.directory = Path(run_dir) / PROFILE_DIR
        remaining = total - first_step
        skip = warmup if remaining > warmup else 0
        self.start = first_step + skip
        self.stop = min(self.start + steps, total)
        self._backend, self._device, self._name = backend, device, backend_name
        self._context: Any = None
        if backend.profiler(self.directory, device) is None:
            raise CapabilityError(f"train.profile_steps: backend '{backend_name}' has no profiler")

    def before(self, step: int) -> None:
        """Open the profiler when ``step`` (0-based, about to run) is the window's first."""
        if step == self.start and self._context is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._context = self._backend.profiler(self.directory, self._device)
            log.info("profiling steps %d-%d on %s into %s", self.start + 1, self.stop, self._name, self.directory)
            self._context.__enter__()

    def after(self, done: int) -> None:
        """Close the profiler (writing the trace) once ``done`` steps reach the window's end."""
        if done >= self.stop and self._context is not None:
            self.close()

    def close(self) -> None:
        """Close the profiler if it is open (also on an interrupted run)."""
        context, self._context = self._context, None
        if context is not None:
            context.__exit__(None, None, None)
