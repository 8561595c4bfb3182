"""``crossframe run`` as a launcher: start the workers of a multi-process job and return rank 0's result.

The loop floor's side of :mod:`crossframe.distributed.launch` (which describes, starts and watches the
worker processes): it checks the backend first, prepares the data once, hands the job to the backend's
launcher (or Ray, or the default subprocess launcher) and reads the result back from the final checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from crossframe.distributed.launch import JobInterrupted, check_launch, prepare_job, run_local
from crossframe.train.interrupts import RunInterrupted
from crossframe.train.result import RunResult


def _prepare_data(cfg: Any) -> None:
    """Tokenise a text source once here, so the workers do not race to build the token store."""
    from crossframe.text.corpus import TextCorpus
    from crossframe.train.data import load_source, token_store

    source = load_source(cfg)
    if isinstance(source, TextCorpus):
        token_store(cfg, source)


def launch(cfg: Any, run_dir: Path, checkpoint: Any, quiet: bool, backend: Any) -> RunResult:
    """Run the job ``cfg.launch`` describes and return rank 0's :class:`~crossframe.train.result.RunResult`.

    ``backend`` is the configured backend, already checked against the strategy (so a bad config fails
    here, not in every worker).
    """
    check_launch(cfg)
    _prepare_data(cfg)
    with tempfile.TemporaryDirectory(prefix="crossframe-launch-") as tmp:
        job = prepare_job(cfg, run_dir, checkpoint, quiet, Path(tmp))
        try:
            if cfg.launch.launcher == "ray":
                from crossframe.distributed.ray import run_on_ray

                run_on_ray(job, gpus_per_worker=1.0 if cfg.device == "gpu" else 0.0)
            elif backend.launch_workers(job) is False:  # the backend leaves it to the core's launcher
                run_local(job)
        except JobInterrupted as exc:
            raise interrupted_result(run_dir, exc.signum) from None
    return finished_result(run_dir, cfg.launch.node_rank == 0, cfg.train.steps or 0)


def interrupted_result(run_dir: Path, signum: int) -> RunInterrupted:
    """What the launcher reports when the workers stopped on a signal: the step they agreed on and
    checkpointed (rank 0's latest checkpoint), or that none was written."""
    from crossframe.checkpoint import load_checkpoint
    from crossframe.errors import CheckpointError

    try:
        ckpt = load_checkpoint(run_dir)
    except CheckpointError:
        return RunInterrupted(run_dir, 0, None, signum)
    return RunInterrupted(run_dir, ckpt.step, ckpt.path, signum)


def finished_result(run_dir: Path, main_node: bool, steps: int = 0) -> RunResult:
    """The result rank 0 left: status, step and last evaluation from the run's latest checkpoint
    (another node reports the budget of ``steps`` and no metrics: rank 0 may still be writing)."""
    from crossframe.checkpoint import load_checkpoint

    if not main_node:
        return RunResult(run_dir, "completed", steps)
    ckpt = load_checkpoint(run_dir)
    metrics = {k: v for k, v in (ckpt.state.get("last_eval") or {}).items() if k != "step"}
    return RunResult(run_dir, ckpt.state.get("status", "completed"), ckpt.step, metrics, ckpt.path)
