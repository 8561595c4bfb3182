"""``crossframe run --launcher ray``: the two-worker torch job on a local Ray cluster trains to the same
weights as one process with twice the batch."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("torch")

from crossframe.train.runner import run
from tests.test_distributed_torch import PER_WORKER, STEPS, assert_close, cli, tiny, weights, write


def test_ray_launcher_trains_the_ddp_job_to_the_single_process_weights(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "single")
    cfg["train"]["batch_size"] = 2 * PER_WORKER
    single = run(cfg, quiet=True).run_dir
    config = write(tiny(tmp_path, "on-ray"), tmp_path / "ray.yaml")
    proc = cli(str(config), "--strategy", "data_parallel", "--nproc-per-node", "2", "--launcher", "ray",
               env={"RAY_ADDRESS": ""})  # never join a cluster that happens to be around: start a local one
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"completed after {STEPS} steps" in proc.stdout
    assert_close(weights(tmp_path / "on-ray"), weights(single))
