"""A run's latest checkpoint as an inference state, with its validation data (for explain and attacks)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.backend import Backend
from crossframe.config.schema import RunConfig
from crossframe.errors import ConfigError
from crossframe.models.spec import ModelSpec
from crossframe.train.evaluate import load_run as load_for_inference


@dataclass
class LoadedRun:
    """What an explanation needs: the backend, an inference state, the spec, the data and where to write."""

    run_dir: Path
    step: int
    config: RunConfig
    backend: Backend
    state: Any
    spec: ModelSpec
    dataset: Any  # a Dataset (x, y)


def load_run(run: str | os.PathLike, overrides: Iterable[str] = (), backend: str | None = None,
             split: str = "val") -> LoadedRun:
    """The run's latest checkpoint (or the ``checkpoints/step_N`` given) on ``backend`` (default: its own),
    with its ``split`` (inputs through the run's saved tabular transform, as ``crossframe eval`` sees them)."""
    loaded = load_for_inference(run, overrides, backend, command="explain")
    if loaded.spec.data_info.task == "language_modeling":
        raise ConfigError("explain: language models are not supported (array inputs only)")
    return LoadedRun(loaded.run_dir, loaded.step, loaded.config, loaded.backend, loaded.state, loaded.spec,
                     loaded.dataset(split))
