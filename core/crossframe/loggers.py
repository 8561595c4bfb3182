"""Built-in metric loggers: ``jsonl`` (always on: ``metrics.jsonl``) and ``csv``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict


class FileParams(BaseModel):
    """Params of the file loggers."""

    model_config = ConfigDict(extra="forbid")
    filename: str | None = None


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlLogger:
    """One JSON object per line, flushed per record, appended across resumes."""

    def __init__(self, params: FileParams, run_dir: Path) -> None:
        self.path = run_dir / (params.filename or "metrics.jsonl")
        self._handle = self.path.open("a", buffering=1)

    def log_config(self, config: dict) -> None:
        """Nothing to do: the resolved config is saved beside the metrics."""

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Append ``{"step": step, **metrics}``."""
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._handle.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


class CsvLogger:
    """Scalar metrics as CSV columns (a column set per file: train and eval rows share it)."""

    def __init__(self, params: FileParams, run_dir: Path) -> None:
        self.path = run_dir / (params.filename or "metrics.csv")
        self._rows: list[dict[str, Any]] = []
        if self.path.is_file():  # a resumed run keeps the rows written before
            with self.path.open(newline="") as handle:
                self._rows = list(csv.DictReader(handle))

    def log_config(self, config: dict) -> None:
        """Nothing to do."""

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Keep scalar metrics for the row of ``step``."""
        scalars = {k: _plain(v) for k, v in metrics.items() if np.ndim(v) == 0}
        self._rows.append({"step": step, **scalars})

    def close(self) -> None:
        """Write the file once (atomically), with the union of all columns."""
        import io

        from crossframe.files import atomic_write_text

        columns: list[str] = []
        for row in self._rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_text(self.path, buffer.getvalue())
