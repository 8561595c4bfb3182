"""DP-SGD with data parallelism against one process with the same global batch and seed: two worker
processes started by ``crossframe run --nproc-per-node 2`` (torch: DDP over gloo through torch's
elastic launcher; jax: ``jax.distributed`` with gloo CPU collectives), and on tensorflow two
MirroredStrategy replicas in one process (``CROSSFRAME_TF_CPU_DEVICES=2``: the same replica step and
all-reduce as MultiWorkerMirroredStrategy, whose two-process start costs about 20 s more)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import crossframe
from crossframe.errors import CapabilityError
from crossframe.privacy.accounting import epsilon
from crossframe.testing.tolerance import U32

PER_WORKER = 8  # rows per micro-batch per worker; the global micro-batch is 16
ACCUM = 2
STEPS = 20
LR = 0.1
SIGMA, CLIP = 1.0, 1.0
BOUND_S = 240  # a hang detector for the whole job, not a timing claim
ROOT = Path(__file__).resolve().parents[1]
#: backends whose DP-SGD runs data parallel (their capabilities' private_strategies), when installed
BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
#: how each backend's two data-parallel workers are started: extra arguments, extra environment
TWO_WORKERS = {"torch": (["--nproc-per-node", "2"], {}), "jax": (["--nproc-per-node", "2"], {}),
               "tensorflow": ([], {"CROSSFRAME_TF_CPU_DEVICES": "2"})}


def worker_env(**extra: str) -> dict[str, str]:
    """The environment for the launcher: this checkout first, no forced devices or launcher variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CROSSFRAME_", "XLA_FLAGS"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "core"), str(ROOT / "plugins"),
                                                      env.get("PYTHONPATH", "")]))
    return {**env, **extra}


def dp_config(output_dir: Path, name: str, batch_size: int, backend: str = "torch", **over: Any) -> dict[str, Any]:
    """A tiny MLP on synthetic data with Poisson-sampled DP-SGD in two micro-batches, every step logged."""
    cfg: dict[str, Any] = {
        "name": name, "backend": backend, "device": "cpu", "seed": 4, "output_dir": str(output_dir),
        "data": {"name": "synthetic", "samples": 256, "features": 8, "classes": 3},
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"steps": STEPS, "batch_size": batch_size, "grad_accum": ACCUM, "log_every": 1,
                  "eval_every": 0, "checkpoint_every": 0, "optimizer": {"name": "sgd", "lr": LR},
                  "privacy": {"noise_multiplier": SIGMA, "max_grad_norm": CLIP, "poisson": True}},
    }
    cfg.update(over)
    return cfg


def losses(run_dir: Path) -> dict[int, float]:
    """``train/loss`` by step from a run's metrics."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def stored_privacy(run_dir: Path) -> dict[str, Any]:
    """The privacy summary stored with the run's last checkpoint."""
    latest = max((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return json.loads((latest / "state.json").read_text())["privacy"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_dp_workers_give_the_single_process_loss_curve_and_epsilon(tmp_path: Path, backend: str) -> None:
    """Each worker (replica) clips and sums its own part of every (Poisson) micro-batch; the sums are all-reduced
    and the one noise draw of ``(seed, step)`` is added once, so two workers with 8 rows per micro-batch
    train as one process with 16, and spend the same epsilon (the global sample rate).

    Where the tolerance comes from. Both runs do the same float32 arithmetic; only the order of the
    sums over examples changes (one sum over the micro-batch against two half sums added by the
    all-reduce, and matrix products of other shapes). A sum of n terms then differs by about
    lambda * sqrt(n) * u relative (u = 2**-24, lambda = 3: Higham and Mary's probabilistic bound);
    the widest sums here are over a Poisson micro-batch padded to 34 rows. A coordinate of a
    step's private gradient is at most C plus 4 sigma C / B (four standard deviations of noise over
    the expected batch B = 32), so 20 SGD steps at lr 0.1 move the weights apart by at most
    steps * lr * rel * (C + 4 sigma C / B); that changes the loss by about its gradient's norm (of
    order C) times it, and the loss itself (about 1.1, a mean) adds rel * 1.1.
    """
    rel = 3 * np.sqrt(34) * U32
    bound = CLIP * STEPS * LR * rel * (CLIP + 4 * SIGMA * CLIP / (2 * PER_WORKER * ACCUM)) + rel * 1.1
    assert bound < 1e-5  # about 3.5e-6

    one = crossframe.run(dp_config(tmp_path, "one", 2 * PER_WORKER, backend), quiet=True)
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(dp_config(tmp_path, "two", PER_WORKER, backend)), encoding="utf-8")
    args, env = TWO_WORKERS[backend]
    proc = subprocess.run([sys.executable, "-m", "crossframe", "run", str(config), "--quiet",
                           "--strategy", "data_parallel", *args],
                          capture_output=True, text=True, timeout=BOUND_S, env=worker_env(**env))
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = tmp_path / "two"

    a, b = losses(one.run_dir), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst <= bound, f"2-worker DP loss differs from 1-process by {worst:.2e} (bound {bound:.2e})"
    assert len({round(v, 6) for v in a.values()}) > 1  # it trained: the curve moves

    single, double = stored_privacy(one.run_dir), stored_privacy(two)
    assert double["sample_rate"] == single["sample_rate"]  # the global batch over the training examples
    assert double["epsilon"] == single["epsilon"] == epsilon(SIGMA, single["sample_rate"], STEPS, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dp_with_a_sharded_strategy_is_one_line_before_the_run(tmp_path: Path, backend: str) -> None:
    cfg = dp_config(tmp_path, "fsdp", PER_WORKER, backend, strategy="fully_sharded")
    # tensorflow shards nothing at all, so its strategy check speaks first
    with pytest.raises(CapabilityError, match=r"^(train\.privacy: DP-SGD with strategy 'fully_sharded' on backend"
                                              r"|strategy: 'fully_sharded' requested)"):
        crossframe.run(cfg, quiet=True)
    assert not (tmp_path / "fsdp").exists()
