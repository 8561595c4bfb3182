"""Interrupts that never tear a step: SIGINT and SIGTERM wait for the running step to finish.

While :class:`DeferredSignals` is active, the first SIGINT or SIGTERM only records itself; the loop
checks :attr:`DeferredSignals.received` between steps (and after an evaluation or a save), writes a
checkpoint whose step counter, weights and optimizer state agree, and raises :class:`RunInterrupted`.
A second signal raises ``KeyboardInterrupt`` at once (no checkpoint of that step; the previous
checkpoint is intact, since checkpoints are written atomically).

Why: a ``KeyboardInterrupt`` raised inside a step can land after the backend updated its
variables but before the loop counted the step (tensorflow: a checkpoint labelled ``k`` holding
``k+1`` updates), or after a jax step donated its buffers (nothing left to save).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

#: the signals a run defers; SIGTERM is what schedulers and ``kill`` send
DEFERRED = (signal.SIGINT, signal.SIGTERM)
#: the exit status of an interrupted run (128 + SIGINT, as shells report a Ctrl-C)
EXIT_INTERRUPTED = 130


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal after finishing its step; ``checkpoint`` is what was written (or None)."""

    def __init__(self, run_dir: Path, step: int, checkpoint: Path | None, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.run_dir, self.step, self.checkpoint, self.signum = run_dir, step, checkpoint, signum


class DeferredSignals:
    """Context manager that turns SIGINT/SIGTERM into a flag for the duration of a run.

    Outside the main thread (where Python cannot install handlers) it does nothing, and a signal
    behaves as usual.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # asked twice: stop now, without a checkpoint of this step
            self.restore()
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.received = signum

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in DEFERRED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()


def describe_interrupt(exc: BaseException) -> str:
    """One line for the user: where the run stopped and whether (and where) a checkpoint was written."""
    if isinstance(exc, RunInterrupted):
        what = "interrupted" if exc.signum == signal.SIGINT else f"stopped by {signal.Signals(exc.signum).name}"
        if exc.checkpoint is not None:
            return (f"{what} after step {exc.step}: checkpoint written to '{exc.checkpoint}'; "
                    f"continue with --resume {exc.run_dir}")
        return f"{what} after step {exc.step}: no checkpoint was written (run directory '{exc.run_dir}')"
    return "interrupted: no checkpoint was written (any earlier checkpoint is intact)"
