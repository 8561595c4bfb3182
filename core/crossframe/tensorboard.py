"""The ``tensorboard`` logger: real TensorBoard event files written with tensorboardX (no framework).

``loggers: [{name: tensorboard}]`` writes into the run directory itself, so ``tensorboard --logdir
runs`` shows one TensorBoard run per crossframe run. It records every scalar metric, the resolved
config as text, the hyperparameters (flattened scalar config values) with the final eval metrics
for the HPARAMS tab, and with ``histograms: true`` a histogram of each weight tensor whenever a
new checkpoint is written (read back from the checkpoint, so the loop needs no change).

Note: tensorboardX tries ``import torch`` when it is imported (to accept tensors); in a JAX or
TensorFlow run with torch installed that costs one import at start-up, nothing per step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class TensorBoardParams(BaseModel):
    """Params of the ``tensorboard`` logger."""

    model_config = ConfigDict(extra="forbid")
    subdir: str | None = Field(None, description="write under RUN_DIR/<subdir> instead of the run directory")
    histograms: bool = Field(False, description="a histogram of every weight at each checkpoint")
    hparams: bool = Field(True, description="record the config's scalar values and final metrics as hparams")
    flush_secs: float = Field(10.0, gt=0, description="how often buffered events reach the file")


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The config's leaf values as ``{"train.optimizer.lr": 0.01, ...}`` (lists as their string form)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is not None:
            out[name] = str(value)
    return out


class TensorBoardLogger:
    """Scalars, config text, hparams and optional weight histograms as TensorBoard events."""

    def __init__(self, params: TensorBoardParams, run_dir: Path) -> None:
        from tensorboardX import SummaryWriter

        self.params = params
        self.run_dir = Path(run_dir)
        self.logdir = self.run_dir / params.subdir if params.subdir else self.run_dir
        # the file name has whole seconds; the nanoseconds keep a quick resume from reusing (and
        # truncating) the file of the same second, and keep the names in time order for readers
        suffix = f".{time.time_ns() % 1_000_000_000:09d}"
        self.writer = SummaryWriter(logdir=str(self.logdir), flush_secs=params.flush_secs, filename_suffix=suffix)
        self._config: dict[str, Any] = {}
        self._final: dict[str, float] = {}
        self._histogram_of: str | None = None

    def log_config(self, config: dict) -> None:
        """The resolved config as YAML text (tag ``config``)."""
        import yaml

        self._config = config
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "```yaml\n" + text + "```", 0)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Each finite-or-not scalar as ``add_scalar(tag, value, step)``; arrays are skipped."""
        for tag, value in metrics.items():
            if isinstance(value, (bool, str)) or np.ndim(value) != 0:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            self.writer.add_scalar(tag, number, step)
            if tag.startswith("val/") and math.isfinite(number):
                self._final[tag] = number
        if self.params.histograms:
            self._histograms()

    def _histograms(self) -> None:
        """A histogram of every weight of the newest checkpoint, once per checkpoint."""
        pointer = self.run_dir / "checkpoints" / "latest"
        try:
            name = pointer.read_text().strip()
        except OSError:
            return
        if not name or name == self._histogram_of:
            return
        from safetensors.numpy import load_file

        where = self.run_dir / "checkpoints" / name
        try:
            weights = load_file(str(where / "model.safetensors"))
            step = int(name.split("_", 1)[1])
        except (OSError, ValueError):
            return
        for tag, array in sorted(weights.items()):
            self.writer.add_histogram(f"weights/{tag}", np.asarray(array, dtype=np.float64), step)
        self._histogram_of = name

    def close(self) -> None:
        """Write the hparams session (config values and final eval metrics), then flush and close."""
        if self.params.histograms:
            self._histograms()
        if self.params.hparams and self._config:
            from tensorboardX.summary import hparams

            metrics = self._final or {"val/loss": math.nan}
            experiment, start, end = hparams(flat_hparams(self._config), metrics)
            for summary in (experiment, start, end):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()
