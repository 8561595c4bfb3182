"""Terminal progress for a run: a rich progress bar on stderr, or nothing when quiet."""

from __future__ import annotations

import time
from typing import Any

MIN_REDRAW_S = 0.1


class Progress:
    """A progress bar showing step, loss, learning rate, speed and time left."""

    def __init__(self, total: int, start: int, description: str, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.console = Console(stderr=True)
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, completed=start, info="")
        self._last_draw = 0.0

    def update(self, step: int, logs: dict[str, Any] | None = None) -> None:
        """Move to ``step``; ``logs`` (host values) refresh the info column."""
        if not self.enabled:
            return
        now = time.monotonic()
        if logs is None and now - self._last_draw < MIN_REDRAW_S:
            return  # the bar redraws a few times a second anyway: skip the per-step bookkeeping
        self._last_draw = now
        info = None
        if logs:
            parts = [f"loss {logs['train/loss']:.4f}", f"lr {logs['train/lr']:.2e}"]
            if "train/tokens_per_sec" in logs:
                parts.append(f"{logs['train/tokens_per_sec']:,.0f} tok/s")
            elif "train/steps_per_sec" in logs:
                parts.append(f"{logs['train/steps_per_sec']:.0f} it/s")
            if "train/mfu" in logs:
                parts.append(f"MFU {100 * logs['train/mfu']:.1f}%")
            info = "  ".join(parts)
        if info is None:
            self._bar.update(self._task, completed=step)
        else:
            self._bar.update(self._task, completed=step, info=info)

    def print(self, text: str) -> None:
        """A line above the bar (evaluations, checkpoints)."""
        if self.enabled:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        """Stop redrawing."""
        if self.enabled:
            self._bar.stop()
