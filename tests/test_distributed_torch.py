"""torch across processes: real worker processes (gloo on CPU) against one process with the global batch.

Each multi-process test starts ``crossframe run`` workers and compares the canonical weights they
saved with a single process training on batch ``2b``; a tiny MLP, 20 steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")

from crossframe.checkpoint import load_checkpoint
from crossframe.config.loading import load_config
from crossframe.distributed.launch import prepare_job, run_local
from crossframe.train.launch import finished_result
from crossframe.train.runner import run

PER_WORKER = 8
STEPS = 20
BOUND_S = 240  # a hang detector for the whole job, not a timing claim


def tiny(output_dir: Path, name: str, **over: Any) -> dict[str, Any]:
    """A small MLP on synthetic data, checkpointing every 5 steps, no evaluation until the end."""
    cfg: dict[str, Any] = {
        "name": name, "backend": "torch", "device": "cpu", "seed": 3, "output_dir": str(output_dir),
        "data": {"name": "synthetic", "samples": 256, "features": 8, "classes": 3},
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"steps": STEPS, "batch_size": PER_WORKER, "log_every": 5, "eval_every": 0,
                  "checkpoint_every": 5, "grad_accum": 2, "optimizer": {"name": "adamw", "lr": 0.01}},
    }
    cfg.update(over)
    return cfg


def write(cfg: dict[str, Any], path: Path) -> Path:
    """``cfg`` as a YAML file."""
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m crossframe run ...`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "crossframe", "run", *args, "--quiet"], capture_output=True,
                          text=True, timeout=BOUND_S, env={**os.environ, **(env or {})})


def weights(run_dir: Path) -> dict[str, np.ndarray]:
    """The canonical weights of a run's latest checkpoint."""
    return load_checkpoint(run_dir).weights


def assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    """Same names, and every weight within ``tol``."""
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= tol, f"max |difference| {worst}"


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process training on the global batch (2 * PER_WORKER per micro-batch)."""
    out = tmp_path_factory.mktemp("single")
    cfg = tiny(out, "single")
    cfg["train"]["batch_size"] = 2 * PER_WORKER
    result = run(cfg, quiet=True)
    assert result.status == "completed" and result.steps == STEPS
    return result.run_dir


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two DDP workers started by torch's elastic launcher through ``crossframe run``."""
    out = tmp_path_factory.mktemp("ddp")
    proc = cli(str(write(tiny(out, "ddp"), out / "ddp.yaml")), "--strategy", "data_parallel", "--nproc-per-node", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"completed after {STEPS} steps" in proc.stdout
    return out / "ddp"


def test_two_ddp_workers_equal_one_process_with_twice_the_batch(single: Path, ddp: Path) -> None:
    assert_close(weights(ddp), weights(single))
    ckpt = load_checkpoint(ddp)
    assert ckpt.step == STEPS
    saved = yaml.safe_load((ddp / "config.yaml").read_text())
    assert saved["strategy"] == "data_parallel" and saved["launch"]["nproc_per_node"] == 2
    # only rank 0 wrote: one metrics file with one line per log step
    lines = (ddp / "metrics.jsonl").read_text().splitlines()
    assert sum('"train/loss"' in ln for ln in lines) == STEPS // 5


def test_fsdp_matches_ddp_through_the_subprocess_launcher(single: Path, ddp: Path, tmp_path: Path) -> None:
    cfg = load_config(tiny(tmp_path, "fsdp", strategy="fully_sharded", launch={"nproc_per_node": 2}))
    run_dir = tmp_path / "fsdp"
    work = tmp_path / "launch"
    work.mkdir()
    run_local(prepare_job(cfg, run_dir, None, True, work))  # workers with CROSSFRAME_* vars, our watchdog
    result = finished_result(run_dir, True)
    assert (result.status, result.steps) == ("completed", STEPS)
    assert_close(weights(run_dir), weights(ddp))
    fsdp_opt, ddp_opt = load_checkpoint(run_dir).optimizer_state, load_checkpoint(ddp).optimizer_state
    assert_close(fsdp_opt, ddp_opt)  # the sharded Adam moments, gathered, are DDP's


def test_a_killed_worker_stops_the_job_and_the_run_resumes_at_another_world_size(single: Path,
                                                                                   tmp_path: Path) -> None:
    config = write(tiny(tmp_path, "crash"), tmp_path / "crash.yaml")
    proc = cli(str(config), "--strategy", "data_parallel", "--nproc-per-node", "2",
               env={"CROSSFRAME_FAULT_EXIT": "1:10"})  # test-only hook: rank 1 os._exit(3) after step 10
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker rank 1 of 2 exited with code 3: "), last
    run_dir = tmp_path / "crash"
    ckpt = load_checkpoint(run_dir)  # the last good checkpoint loads
    assert ckpt.step in (5, 10)
    # one process continues the same run: same global batch (16 per micro-batch), same order, same weights
    result = run(None, ["strategy=single", "launch.nproc_per_node=1", f"train.batch_size={2 * PER_WORKER}"],
                 resume=run_dir, quiet=True)
    assert (result.status, result.steps) == ("completed", STEPS)
    assert_close(weights(run_dir), weights(single))


@pytest.mark.parametrize("strategy", ["data_parallel", "fully_sharded"])
def test_one_process_strategies_train_as_single(single: Path, tmp_path: Path, strategy: str) -> None:
    cfg = tiny(tmp_path, strategy, strategy=strategy)
    cfg["train"]["batch_size"] = 2 * PER_WORKER
    result = run(cfg, quiet=True)  # a world of one: a process group on an in-memory store, no port
    assert_close(weights(result.run_dir), weights(single))


def test_an_interrupt_stops_every_worker_at_one_step_and_the_run_resumes(single: Path, tmp_path: Path) -> None:
    """A Ctrl-C reaches the launcher, which passes it on; rank 1 sees it after step 7, rank 0 whenever it
    arrives. They agree at the next log boundary (8), both save step 8, and the job exits 130 in one line."""
    cfg = tiny(tmp_path, "ctrlc")
    cfg["train"]["log_every"] = 4  # the boundary after step 7 is 8, which no periodic checkpoint (every 5) covers
    proc = cli(str(write(cfg, tmp_path / "ctrlc.yaml")), "--strategy", "data_parallel", "--nproc-per-node", "2",
               env={"CROSSFRAME_FAULT_SIGNAL": "1:7"})  # test-only hook: rank 1 interrupts the launcher
    assert proc.returncode == 130, proc.stderr[-2000:]
    run_dir = tmp_path / "ctrlc"
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"interrupted after step 8: checkpoint written to '{run_dir / 'checkpoints' / 'step_8'}'; "
                    f"continue with --resume {run_dir}"), last
    ckpt = load_checkpoint(run_dir)
    assert (ckpt.step, ckpt.state["status"]) == (8, "interrupted")
    result = run(None, ["strategy=single", "launch.nproc_per_node=1", f"train.batch_size={2 * PER_WORKER}"],
                 resume=run_dir, quiet=True)
    assert (result.status, result.steps) == ("completed", STEPS)
    assert_close(weights(run_dir), weights(single))


def test_fully_sharded_gpt_shards_each_block_and_steps_as_one_process() -> None:
    """FSDP in a world of one on the lowered gpt: each block ``h.i`` is its own FSDP group (its weights gathered
    around its call) inside the root's, and three AdamW steps (with activation checkpointing, which recomputes
    inside the sharded blocks) give the weights of the plain module. float32 through two tiny blocks: 1e-6."""
    from torch.distributed.fsdp import FSDPModule

    from crossframe.backend import TrainSetup, WorldInfo
    from crossframe.data.dataset import DataInfo
    from crossframe.models import build_model
    from crossframe_torch.backend import TorchBackend
    from crossframe_torch.lowering import repeated_blocks

    be = TorchBackend()
    spec = build_model("gpt", {"n_layer": 2, "n_head": 2, "d_model": 8, "max_seq_len": 8},
                       DataInfo("language_modeling", (8,), 11))
    w = spec.init(0)
    world = WorldInfo(strategy="fully_sharded")
    be.init_distributed(world, "cpu")
    try:
        states = [be.create_state(TrainSetup(spec, w, "adamw", {"lr": 0.01}, activation_checkpointing=True,
                                             world=world_)) for world_ in (world, None)]
        sharded = states[0].module
        assert isinstance(sharded, FSDPModule) and len(repeated_blocks(sharded)) == 2
        assert all(isinstance(block, FSDPModule) for block in repeated_blocks(sharded))
        rng = np.random.default_rng(1)
        for _ in range(3):
            x = rng.integers(0, 11, (4, 9))
            for state in states:
                be.train_step(state, {"x": x[:, :-1], "y": x[:, 1:]}, 0.01)
        got, want = (be.export_state(state)[0] for state in states)
    finally:
        be.shutdown_distributed()
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=1e-6, rtol=0, err_msg=name)
