"""Evaluating a finished (or running) run's checkpoint, on any backend: ``crossframe eval``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.checkpoint import load_checkpoint
from crossframe.config.loading import load_config
from crossframe.data.loader import BatchLoader
from crossframe.data.tabular import load_transform
from crossframe.errors import ConfigError
from crossframe.models import spec_from_json
from crossframe.train.data import TrainingData, load_training_data
from crossframe.train.loop import evaluate_dataset
from crossframe.train.runner import CONFIG_FILE, metric_functions, prepare_backend


@dataclass
class LoadedRun:
    """A run's checkpoint ready for inference: its config, backend, state, spec and data (the saved
    tabular transform applied)."""

    run_dir: Path
    step: int
    config: Any  # the run's RunConfig, with the overrides
    backend: Any
    state: Any
    spec: Any
    data: TrainingData

    def dataset(self, split: str) -> Any:
        """The run's ``val``, ``train`` (array datasets) or ``test`` (with ``data.split.test``) split."""
        if split == "train":
            if not isinstance(self.data.loader, BatchLoader):
                raise ConfigError("--split: 'train' is available for array datasets only")
            return self.data.loader.dataset
        if split == "test":
            if self.data.test is None:
                raise ConfigError(f"--split: '{self.run_dir}' has no test split; train with data.split.test")
            return self.data.test
        return self.data.val


def load_run(run: str | os.PathLike, overrides: Iterable[str] = (), backend: str | None = None,
             command: str = "eval") -> LoadedRun:
    """The run's latest checkpoint (or the ``checkpoints/step_N`` given) as an inference state on
    ``backend`` (default: its own), with the run's data; ``command`` names the caller in errors."""
    checkpoint = load_checkpoint(Path(run))
    run_dir = checkpoint.path.parent.parent
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(f"{command}: '{run_dir}' has no {CONFIG_FILE}")
    cfg = load_config(saved, overrides, backend=backend)
    spec = spec_from_json(checkpoint.state["model"])
    impl, device = prepare_backend(cfg, training=False)
    spec.check_checkpoint(checkpoint.weights, {}, f"checkpoint '{checkpoint.path}'")
    state = impl.inference_state(spec, checkpoint.weights, device, cfg.precision)
    data = load_training_data(cfg, transform=load_transform(run_dir))
    return LoadedRun(run_dir, checkpoint.step, cfg, impl, state, spec, data)


def evaluate(run: str | os.PathLike, overrides: Iterable[str] = (), *, backend: str | None = None,
             split: str = "val") -> dict[str, Any]:
    """Metrics of a run's latest checkpoint (or the ``checkpoints/step_N`` given) on ``split``.

    The run's saved config gives the data and metrics; ``backend`` evaluates on another backend
    (an inference-only one too). ``split`` is ``val``, ``train`` or ``test`` (with ``data.split.test``).
    A tabular run's inputs go through its saved ``preprocess.json``.
    """
    if split not in ("val", "train", "test"):
        raise ConfigError(f"--split: '{split}' is not a split; use 'val', 'train' or 'test'")
    loaded = load_run(run, overrides, backend)
    cfg = loaded.config
    metrics = evaluate_dataset(loaded.backend, loaded.state, loaded.dataset(split), cfg.train.eval_batch_size,
                               metric_functions(cfg, loaded.data.info.task), prefix=f"{split}/")
    return {"step": loaded.step, "backend": cfg.backend, **metrics}
