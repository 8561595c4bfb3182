"""Same config, three backends: the same numbers, and checkpoints that move between them."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import crossframe
from crossframe import hookimpl
from crossframe.backend import TrainSetup
from crossframe.checkpoint import load_checkpoint
from crossframe.models import spec_from_json
from crossframe.optimizers import state_step
from crossframe.plugins import get_plugin_manager
from crossframe.train.runner import make_backend

FRAMEWORKS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}
BACKENDS = [name for name, module in FRAMEWORKS.items() if importlib.util.find_spec(module)]
needs_two = pytest.mark.skipif(len(BACKENDS) < 2, reason="needs two installed backends")


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@needs_two
def test_digits_mlp_loss_curves_agree_across_backends(workdir: Path) -> None:
    curves = {}
    for backend in BACKENDS:
        result = crossframe.run("digits-mlp", ["train.steps=50", "train.log_every=1", "train.eval_every=0",
                                       "train.checkpoint_every=0", f"name=parity-{backend}"],
                                backend=backend, quiet=True)
        curves[backend] = losses(result.run_dir)
    reference = curves[BACKENDS[0]]
    assert sorted(reference) == list(range(1, 51))
    worst = 0.0
    for backend in BACKENDS[1:]:
        diffs = [abs(curves[backend][s] - reference[s]) for s in reference]
        worst = max(worst, max(diffs))
        assert max(diffs) <= 1e-3, f"{backend} vs {BACKENDS[0]}: loss differs by {max(diffs):.2e}"
    print(f"largest loss difference over 50 steps: {worst:.3e}")


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, run, step, batch, logs):
        if step == self.step:
            run.should_stop = True


@needs_two
@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(BACKENDS, 2)))
def test_resume_on_another_backend(workdir: Path, tiny, first: str, second: str) -> None:
    cfg = tiny(steps=20, schedule={"name": "cosine", "warmup_steps": 3}, checkpoint_every=0)
    cfg["backend"] = first
    straight = crossframe.run({**cfg, "name": "straight"}, quiet=True)

    manager = get_plugin_manager()
    manager.register(StopAt(10), "stop-at-10")
    half = crossframe.run({**cfg, "name": "moved"}, quiet=True)
    manager.unregister("stop-at-10")
    assert half.steps == 10

    # the other backend takes the checkpoint exactly: weights, optimizer state, step count
    ckpt = load_checkpoint(half.run_dir)
    other = make_backend(second)
    spec = spec_from_json(ckpt.state["model"])
    state = other.create_state(TrainSetup(spec, spec.init(0), "adamw", {"lr": 0.01}))
    state = other.load_state(state, ckpt.weights, ckpt.optimizer_state)
    weights, opt = other.export_state(state)
    assert all(np.array_equal(weights[k], ckpt.weights[k]) for k in weights)
    assert state_step(opt) == 10
    for key, value in ckpt.optimizer_state.items():
        np.testing.assert_array_equal(opt[key].reshape(-1), value.reshape(-1), err_msg=key)

    resumed = crossframe.run(resume=half.run_dir, backend=second, quiet=True)
    assert resumed.steps == 20 and resumed.status == "completed"
    final = load_checkpoint(resumed.run_dir)
    assert final.state["backend"] == second and state_step(final.optimizer_state) == 20
    want = load_checkpoint(straight.run_dir).weights
    for name, value in final.weights.items():
        np.testing.assert_allclose(value, want[name], atol=1e-4, rtol=0, err_msg=f"{first}->{second}: {name}")


@needs_two
def test_eval_of_one_run_agrees_on_every_backend(workdir: Path, tiny) -> None:
    trained = crossframe.run(tiny(steps=15), quiet=True)
    results = {b: crossframe.evaluate(trained.run_dir, backend=b) for b in BACKENDS}
    first = results[BACKENDS[0]]
    assert first["step"] == 15 and first["val/loss"] == pytest.approx(trained.metrics["val/loss"], abs=1e-6)
    for backend, metrics in results.items():
        assert metrics["backend"] == backend
        assert metrics["val/loss"] == pytest.approx(first["val/loss"], abs=1e-5)
        assert metrics["val/accuracy"] == first["val/accuracy"]


def test_eval_cli_reports_and_rejects_bad_input(workdir: Path, tiny, capsys: pytest.CaptureFixture) -> None:
    from crossframe.cli.main import main

    trained = crossframe.run(tiny(steps=5), quiet=True)
    assert main(["eval", str(trained.run_dir), "--json", "--split", "train"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 5 and "train/accuracy" in out
    assert main(["eval", str(workdir / "nowhere")]) == 2  # bad input (README: exit codes)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere' does not exist" in err[0]


def test_backends_command_lists_every_backend(capsys: pytest.CaptureFixture) -> None:
    from crossframe.cli.main import main

    assert main(["backends", "--json"]) == 0
    rows = {row["backend"]: row for row in json.loads(capsys.readouterr().out)}
    for backend in BACKENDS:
        assert rows[backend]["status"] == "ok"
        assert "cpu" in rows[backend]["devices"] and "fp32" in rows[backend]["precisions"]
        assert {"mlp", "cnn"} <= set(rows[backend]["models"])
