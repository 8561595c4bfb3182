"""Fine-tuning a compressed model with the one training loop, pruning masks held inside the step."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.backend import Backend, TrainSetup
from crossframe.config.schema import RunConfig
from crossframe.errors import RunError
from crossframe.models.spec import ModelSpec, Params
from crossframe.train.loop import Run, Trainer
from crossframe.train.progress import Progress


class _NoHooks:
    """Lifecycle hooks that do nothing: a fine-tune is part of a step, not a run plugins should see."""

    class _Hook:
        def __call__(self, **kwargs: Any) -> None:
            return None

        def get_hookimpls(self) -> list[Any]:
            return []

    def __getattr__(self, name: str) -> Any:
        return self._Hook()


def finetune(cfg: RunConfig, backend: Backend, device: str, spec: ModelSpec, weights: Params,
             masks: dict[str, np.ndarray], data: Any, metric_fns: dict[str, Any], steps: int, lr: float,
             work_dir: Path, label: str, quiet: bool = True) -> tuple[Params, dict[str, Any]]:
    """Train ``weights`` for ``steps`` steps at constant rate ``lr`` with the run's optimizer and data.

    ``masks`` go to the backend as :attr:`TrainSetup.masks`, so pruned weights stay exactly zero
    inside the compiled step; that is checked afterwards and a backend that lets them move is an
    error. Returns the new canonical weights and the loop's final evaluation.
    """
    t = cfg.train
    setup = TrainSetup(spec, weights, t.optimizer.name, {**t.optimizer.params, "lr": lr}, device,
                       cfg.precision, t.grad_accum, t.clip_norm, t.compile, cfg.seed,
                       t.activation_checkpointing, masks=dict(masks) or None)
    state = backend.create_state(setup)
    ft_cfg = cfg.model_copy(deep=True)
    ft_cfg.train.steps = steps
    ft_cfg.train.eval_every = 0
    ft_cfg.train.checkpoint_every = 0
    ft_cfg.train.keep_checkpoints = 1
    ft_cfg.train.log_every = max(1, min(t.log_every, steps))
    ft_cfg.train.early_stopping = None
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=work_dir, prefix=".finetune-"))
    try:
        run = Run(ft_cfg, tmp, backend, spec, steps, device)
        progress = Progress(steps, 0, label, enabled=not quiet)
        try:
            trainer = Trainer(run, state, data.loader, data.val, lambda step: lr, metric_fns, [], _NoHooks(),
                              progress, None)
            trainer.fit()
        finally:
            progress.close()
        new_weights, _ = backend.export_state(trainer.state)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, mask in masks.items():
        moved = int(np.count_nonzero(np.asarray(new_weights[name])[np.asarray(mask) == 0]))
        if moved:
            raise RunError(f"compress: backend '{cfg.backend}' let {moved} pruned values of '{name}' move during "
                           "fine-tuning; it must apply TrainSetup.masks inside its step")
    return new_weights, {k: v for k, v in run.last_eval.items() if k != "step"}
