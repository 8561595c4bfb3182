"""A run's latest checkpoint as an inference state, with its validation data (for explain and attacks)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.backend import Backend
from crossframe.checkpoint import load_checkpoint
from crossframe.config.loading import load_config
from crossframe.config.schema import RunConfig
from crossframe.errors import ConfigError
from crossframe.models import spec_from_json
from crossframe.models.spec import ModelSpec
from crossframe.train.data import load_training_data
from crossframe.train.runner import CONFIG_FILE, prepare_backend


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
    """The run's latest checkpoint (or the ``checkpoints/step_N`` given) on ``backend`` (default: its own)."""
    checkpoint = load_checkpoint(Path(run))
    run_dir = checkpoint.path.parent.parent
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(f"explain: '{run_dir}' has no {CONFIG_FILE}")
    cfg = load_config(saved, overrides, backend=backend)
    spec = spec_from_json(checkpoint.state["model"])
    if spec.data_info.task == "language_modeling":
        raise ConfigError("explain: language models are not supported (array inputs only)")
    impl, device = prepare_backend(cfg, training=False)
    spec.check_checkpoint(checkpoint.weights, {}, f"checkpoint '{checkpoint.path}'")
    state = impl.inference_state(spec, checkpoint.weights, device, cfg.precision)
    data = load_training_data(cfg)
    dataset = data.loader.dataset if split == "train" else data.val
    return LoadedRun(run_dir, checkpoint.step, cfg, impl, state, spec, dataset)
