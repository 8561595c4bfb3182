"""What a finished run returns (its own module so the launcher and the runner both use it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    """What a finished run returns."""

    run_dir: Path
    status: str
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
