"""A model written only in YAML (a small residual CNN) trains on every backend from the same weights,
with the same loss curve; dropout trains too; a checkpoint of it moves between backends."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import crossframe
from crossframe.checkpoint import load_checkpoint

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
STEPS = 50

RESIDUAL_CNN = """
backend: torch
device: cpu
seed: 0
data: {name: digits}
model:
  name: graph
  layers:
    - {conv2d: {filters: 4, kernel: 3, padding: same}}
    - relu
    - {residual: [{conv2d: {filters: 4, kernel: 3, padding: same}}, {norm: layer}, gelu]}
    - {pool: {kind: max, size: 2}}
    - flatten
    - {dropout: 0.0}
    - {dense: outputs}
train:
  steps: 50
  batch_size: 32
  log_every: 1
  eval_every: 0
  checkpoint_every: 0
  optimizer: {name: sgd, lr: 0.05}
  schedule: {name: constant}
"""


def _config(backend: str, name: str, dropout: float = 0.0) -> dict[str, Any]:
    cfg = yaml.safe_load(RESIDUAL_CNN)
    cfg["model"]["layers"][5] = {"dropout": dropout}
    return {**cfg, "backend": backend, "name": name}


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.slow
@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs two installed backends")
def test_a_yaml_residual_cnn_trains_alike_on_every_backend(workdir: Path) -> None:
    curves = {}
    for backend in BACKENDS:
        result = crossframe.run(_config(backend, f"graph-{backend}"), quiet=True)
        curves[backend] = _losses(result.run_dir)
        assert result.status == "completed" and result.steps == STEPS
    reference = curves[BACKENDS[0]]
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert np.mean([reference[s] for s in range(41, 51)]) < reference[1] - 0.3  # it learns
    # float32 against float32: each step's loss and gradients differ by about K * u relative (K ~ 150 terms in
    # the longest reduction, u = 2**-24: ~1e-5), and plain SGD carries each step's difference forward, so after
    # 50 steps (forward and backward) the curves stay within 50 * 2 * 1e-5 = 1e-3
    for backend in BACKENDS[1:]:
        late = [abs(curves[backend][s] - reference[s]) for s in range(11, STEPS + 1)]  # after warm-up, to the end
        assert max(late) <= 1e-3, f"{backend} vs {BACKENDS[0]}: {max(late):.2e}"
        print(f"{backend} vs {BACKENDS[0]}: largest loss difference over steps 11-{STEPS}: {max(late):.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_trains_and_a_checkpoint_moves_between_backends(workdir: Path, backend: str) -> None:
    cfg = _config(backend, f"drop-{backend}", dropout=0.3)
    cfg["train"].update(steps=6, checkpoint_every=6)
    result = crossframe.run(cfg, quiet=True)
    losses = _losses(result.run_dir)
    assert len(losses) == 6 and all(np.isfinite(list(losses.values())))
    ckpt = load_checkpoint(result.run_dir)
    assert "2.0.weight" in ckpt.weights and "2.1.bias" in ckpt.weights  # canonical graph names
    here = crossframe.evaluate(result.run_dir, backend=backend)
    for other in BACKENDS:  # the same canonical weights evaluate to the same loss anywhere (fp32 forward: ~1e-5)
        there = crossframe.evaluate(result.run_dir, backend=other)
        assert abs(float(there["val/loss"]) - float(here["val/loss"])) <= 1e-4, (other, there, here)
