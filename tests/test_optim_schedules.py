"""One-cycle and reduce-on-plateau schedules; the new optimizers train through the loop on every backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import crossframe
from crossframe.checkpoint import load_checkpoint
from crossframe.schedules import OneCycleParams, PlateauParams, one_cycle, plateau


def test_one_cycle_rises_then_falls() -> None:
    lr = one_cycle(OneCycleParams(pct_start=0.25, div_factor=10, final_div_factor=100), 1.0, 100)
    values = [lr(s) for s in range(100)]
    assert values[0] == pytest.approx(0.1)
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == 25
    assert all(a <= b for a, b in zip(values[:25], values[1:26], strict=True))
    assert all(a >= b for a, b in zip(values[25:-1], values[26:], strict=True))
    assert values[-1] == pytest.approx(1e-3)


def test_plateau_reduces_after_patience_and_round_trips_its_state() -> None:
    sched = plateau(PlateauParams(factor=0.5, patience=1, min_lr=0.2), 1.0, 100)
    rates = []
    for loss in [1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.99, 0.98]:
        sched.observe({"val/loss": loss})
        rates.append(sched(50))
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.2]  # floored at min_lr
    again = plateau(PlateauParams(factor=0.5, patience=1, min_lr=0.2), 1.0, 100)
    again.restore(json.loads(json.dumps(sched.state())))
    assert again(50) == sched(50) and again.state() == sched.state()
    accuracy = plateau(PlateauParams(monitor="val/accuracy", patience=0), 1.0, 10)
    accuracy.observe({"val/accuracy": 0.5})
    accuracy.observe({"val/accuracy": 0.6})  # higher is better for accuracy ("auto" mode)
    assert accuracy(5) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_plateau_in_a_run_lowers_the_rate_and_resumes_its_state(workdir: Path, tiny, backend: str) -> None:
    pytest.importorskip(backend)
    # threshold 10: no evaluation counts as an improvement, so each one after the first halves the rate
    schedule = {"name": "plateau", "factor": 0.5, "patience": 0, "threshold": 10.0}
    cfg = {**tiny(steps=8, eval_every=2, log_every=2, checkpoint_every=4, schedule=schedule,
                  optimizer={"name": "lion", "lr": 0.01}), "backend": backend}
    result = crossframe.run({**cfg, "name": "plateau"}, quiet=True)
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/lr"] for r in records if "train/lr" in r]
    assert rates == [0.01, 0.01, 0.005, 0.0025]  # logged before the eval of the same step
    state = load_checkpoint(result.run_dir).state["schedule"]
    assert state["reductions"] == 3 and state["bad_evals"] == 0


@pytest.mark.parametrize("optimizer", [{"name": "rmsprop", "lr": 0.01}, {"name": "adagrad", "lr": 0.1},
                                       {"name": "lion", "lr": 0.003}])
def test_new_optimizers_learn_and_resume_from_another_backend(workdir: Path, tiny, optimizer: dict) -> None:
    pytest.importorskip("jax")
    cfg = tiny(steps=30, optimizer=optimizer, eval_every=0)
    first = crossframe.run({**cfg, "name": "opt"}, quiet=True)
    assert first.metrics["val/accuracy"] > 0.6  # three well-separated synthetic classes
    opt = load_checkpoint(first.run_dir).optimizer_state
    slot = {"rmsprop": "square_avg", "adagrad": "sum", "lion": "exp_avg"}[optimizer["name"]]
    assert f"{slot}/layers.0.weight" in opt and float(abs(opt[f"{slot}/layers.0.weight"]).max()) > 0
    # the canonical slots written by torch continue on jax
    more = crossframe.run(None, ["train.steps=40"], resume=first.run_dir, backend="jax", quiet=True)
    assert more.status == "completed" and more.steps == 40 and more.metrics["val/accuracy"] > 0.6
