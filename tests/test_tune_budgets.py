"""``tune.budget: schedule``: budget-aware rungs (each a run whose schedule ends at its budget), on real
Optuna studies over digits-mlp with tiny budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from crossframe.cli.main import main
from crossframe.config.loading import load_config
from crossframe.schedules import CosineParams, cosine
from crossframe.tune.api import tune
from crossframe.tune.budgets import budget_config, budget_steps
from tests.test_tune import study_config, write

STEPS = 45  # budgets 5 and 15, then 45


def budget_study(tmp: Path, name: str, trials: int, pruner: str = "successive_halving") -> dict[str, Any]:
    """A random search over the learning rate with budget-aware successive halving."""
    config = study_config(tmp, name, trials=trials, steps=STEPS, sampler="random", pruner=pruner,
                          budget="schedule", seed=3)
    config["train"]["schedule"] = {"name": "cosine", "warmup_steps": 6}
    return config


@given(total=st.integers(1, 10**6), factor=st.integers(2, 6), least=st.one_of(st.none(), st.integers(1, 1000)))
def test_budgets_ascend_below_the_total_on_successive_halving_rungs(total: int, factor: int,
                                                                   least: int | None) -> None:
    budgets = budget_steps(total, factor, least)
    assert budgets == sorted(set(budgets)) and all(b < total for b in budgets)
    assert all(b >= (least or 1) for b in budgets)
    for rank, budget in enumerate(budgets):  # Optuna's rung `rank` is reached at this budget, the next is not
        assert budgets[0] * factor**rank <= budget < budgets[0] * factor ** (rank + 1)
    if least is None and total >= factor**2:
        assert len(budgets) == 2


def test_a_budget_run_ends_its_schedule_at_its_budget() -> None:
    base = {"train": {"steps": 300, "eval_every": 30, "log_every": 10, "checkpoint_every": 100,
                      "schedule": {"name": "cosine", "warmup_steps": 15, "min_lr_ratio": 0.0}}}
    data = budget_config(base, 100, 300)
    assert base["train"]["steps"] == 300  # the trial's own config is left alone
    train = data["train"]
    assert (train["steps"], train["eval_every"], train["log_every"], train["checkpoint_every"]) == (100, 10, 3, 0)
    params = {k: v for k, v in train["schedule"].items() if k != "name"}
    assert params["warmup_steps"] == 5
    rate = cosine(CosineParams(**params), 1.0, train["steps"])
    assert rate(4) == pytest.approx(1.0) and rate(99) < 1e-3 < rate(50)  # warmed up by 5, decayed by 100
    load_config({"data": {"name": "digits"}, "model": {"name": "mlp"}, **data})  # a valid run config


@pytest.mark.slow
def test_budget_aware_pruning_stops_trials_at_a_budget_counted(workdir: Path) -> None:
    result = tune(budget_study(workdir, "budgets", trials=6), quiet=True)
    rows = result.summary["rows"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert result.summary["counts"]["pruned"] == len(pruned) >= 1 and len(rows) == 6
    assert complete, "the first trial reaches the top budget"
    for row in pruned:  # pruned after a budget: it trained that budget and every smaller one, from the start
        assert row["pruned_at"] in (5, 15)
        assert row["steps"] == (5 if row["pruned_at"] == 5 else 5 + 15)
        saved = yaml.safe_load(Path(row["run_dir"], "config.yaml").read_text())
        assert saved["train"]["steps"] == row["pruned_at"]
    for row in complete:
        assert row["steps"] == 5 + 15 + STEPS
        saved = yaml.safe_load(Path(row["run_dir"], "config.yaml").read_text())
        assert saved["train"]["steps"] == STEPS and saved["train"]["schedule"]["warmup_steps"] == 6
    assert result.summary["total_steps"] == sum(r["steps"] for r in rows) < 6 * STEPS


@pytest.mark.slow
def test_budget_aware_pruning_is_deterministic_and_keeps_unpruned_values(workdir: Path) -> None:
    def trials(result: Any) -> list[tuple]:
        return [(r["number"], r["state"], r["value"], r["steps"], r["pruned_at"]) for r in result.summary["rows"]]

    first = trials(tune(budget_study(workdir, "again-a", trials=5), quiet=True))
    second = trials(tune(budget_study(workdir, "again-b", trials=5), quiet=True))
    assert first == second  # same seed: the same trials, pruned at the same budgets, with the same values
    unpruned = {r["number"]: r["value"] for r in tune(budget_study(workdir, "none", trials=5, pruner="none"),
                                                      quiet=True).summary["rows"]}
    for number, state, value, _, _ in first:  # the top budget is the trial's config unchanged
        if state == "complete":
            assert value == unpruned[number]
    other = trials(tune({**budget_study(workdir, "seed-4", trials=5), "seed": 4}, quiet=True))
    assert [t[2] for t in other] != [t[2] for t in first]  # another seed is another study


def test_budget_schedule_needs_train_steps(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    config = budget_study(workdir, "epochs", trials=2)
    del config["train"]["steps"]
    config["train"]["epochs"] = 1
    assert main(["tune", str(write(workdir, config)), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tune.budget" in err[0] and "train.steps" in err[0], err
    config = budget_study(workdir, "small", trials=2)
    config["tune"]["budget_min_steps"] = STEPS // 3 + 1
    assert main(["tune", str(write(workdir, config)), "-q"]) == 2
    assert "tune.budget_min_steps" in capsys.readouterr().err
