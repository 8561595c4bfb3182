"""``crossframe tune``: real Optuna studies (SQLite storage) over digits-mlp with tiny budgets."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import crossframe
from crossframe.cli.main import main
from crossframe.errors import ConfigError
from crossframe.tune.api import tune
from crossframe.tune.schema import Param, TuneConfig, parse_tune

STEPS = 60
#: a TPE search over this log range finds lr in GOOD_LR. From a log-spaced sweep of this very
#: config (60 steps of AdamW, warmup 5 + cosine, MLP [32]): val/loss < 0.3 only for lr in about
#: [0.02, 0.35]; below, 60 steps are too few; above, training becomes unstable.
LR_RANGE = [1.0e-4, 1.0]
GOOD_LR = (0.015, 0.4)
OTHER_BACKEND = next((b for b in ("jax", "tensorflow") if importlib.util.find_spec(b)), None)


def study_config(tmp: Path, name: str, trials: int, steps: int = STEPS, **tune_section: Any) -> dict[str, Any]:
    """digits-mlp, shrunk: a small MLP, ``steps`` steps, evaluated every ``steps // 6``."""
    return {
        "name": name, "backend": "torch", "device": "cpu", "seed": 0, "output_dir": str(tmp / "runs"),
        "data": {"name": "digits", "val_fraction": 0.2},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"steps": steps, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003},
                  "schedule": {"name": "cosine", "warmup_steps": 5}, "eval_every": max(1, steps // 6),
                  "log_every": 10, "checkpoint_every": 0, "keep_checkpoints": 1},
        "tune": {"metric": "val/loss", "sampler": "tpe", "pruner": "none", "trials": trials,
                 "space": {"train.optimizer.lr": {"log_uniform": LR_RANGE}}, **tune_section},
    }


def write(tmp: Path, config: dict[str, Any], name: str = "study.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return path


def trials_of(db: Path) -> list[dict[str, Any]]:
    """Every trial in a study's SQLite file, read with sqlite3 (not through Optuna)."""
    con = sqlite3.connect(db, timeout=30)
    try:
        rows = con.execute("SELECT trial_id, number, state FROM trials ORDER BY number").fetchall()
        values = dict(con.execute("SELECT trial_id, value FROM trial_values").fetchall())
        attrs: dict[int, dict[str, Any]] = {}
        for trial_id, key, value in con.execute("SELECT trial_id, key, value_json FROM trial_user_attributes"):
            attrs.setdefault(trial_id, {})[key] = json.loads(value)
        params: dict[int, dict[str, float]] = {}
        for trial_id, key, value in con.execute("SELECT trial_id, param_name, param_value FROM trial_params"):
            params.setdefault(trial_id, {})[key] = value
    finally:
        con.close()
    return [{"number": n, "state": s, "value": values.get(i), "attrs": attrs.get(i, {}), "params": params.get(i, {})}
            for i, n, s in rows]


def cli_env() -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    paths = [str(root / "core"), str(root / "plugins"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crossframe", "tune", *args, "-q"], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------- a TPE search, and its best config


@pytest.fixture(scope="module")
def lr_study(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("tpe")
    from crossframe import plugins

    plugins._manager = None
    return tune(study_config(tmp, "lr", trials=12), quiet=True)


def test_tpe_finds_a_learning_rate_in_the_good_range(lr_study: Any) -> None:
    lr = lr_study.best_params["train.optimizer.lr"]
    assert GOOD_LR[0] <= lr <= GOOD_LR[1], lr
    summary = lr_study.summary
    assert summary["counts"]["complete"] == 12 and summary["direction"] == "minimize"
    values = [r["value"] for r in summary["rows"]]
    assert lr_study.best_value == min(values)
    dirs = sorted(p.name for p in (lr_study.study_dir / "trials").iterdir())
    assert dirs == [f"{n:04d}" for n in range(12)]
    for row in summary["rows"]:  # each trial is an ordinary run directory holding its own values
        saved = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        assert saved["train"]["optimizer"]["lr"] == row["params"]["train.optimizer.lr"]
        assert (Path(row["run_dir"]) / "metrics.jsonl").is_file()


def test_the_study_writes_a_runnable_best_config_and_a_report(lr_study: Any) -> None:
    best = yaml.safe_load(lr_study.best_config.read_text())
    assert "tune" not in best
    assert best["train"]["optimizer"]["lr"] == lr_study.best_params["train.optimizer.lr"]
    crossframe.load_config(lr_study.best_config)  # what `crossframe run` checks first
    study_dir = lr_study.study_dir
    for name in ("history", "importances", "slice"):
        assert (study_dir / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (study_dir / "report.html").read_text()
    assert "data:image/png;base64," in report and " src='http" not in report and "<link" not in report
    assert f"{lr_study.best_value:.6g}" in report
    results = json.loads((study_dir / "results.json").read_text())
    assert set(results["importances"]) == {"train.optimizer.lr"}
    assert len(results["trials"]) == 12


@pytest.mark.slow
@pytest.mark.skipif(OTHER_BACKEND is None, reason="needs a second backend")
def test_best_config_reproduces_its_metric_on_another_backend(lr_study: Any, workdir: Path) -> None:
    result = crossframe.run(lr_study.best_config, ["name=again"], backend=OTHER_BACKEND, quiet=True)
    # Same canonical weights and batches; backends differ only in fp32 rounding. Per step, a dot
    # product of length <= 64 (the digits' inputs) rounds differently by ~sqrt(64) * eps32, and to
    # first order these differences add up over the steps: the loss (order 0.1-1) moves by at most
    # about steps * 8 * 2**-23 ~ 5.7e-5 for 60 steps, under the 1e-4.
    tolerance = STEPS * math.sqrt(64) * float(np.finfo(np.float32).eps)
    assert result.metrics["val/loss"] == pytest.approx(lr_study.best_value, abs=tolerance)


# ---------------------------------------------------------------------- pruning


def test_pruning_stops_bad_trials_before_their_budget(workdir: Path) -> None:
    config = study_config(workdir, "pruned", trials=10, sampler="random", pruner="median",
                          pruner_options={"n_startup_trials": 2})
    result = tune(config, quiet=True)
    rows = result.summary["rows"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert result.summary["counts"]["pruned"] == len(pruned) >= 1
    assert len(rows) == 10 and result.summary["counts"]["complete"] + len(pruned) == 10
    for row in pruned:
        assert row["steps"] == row["pruned_at"] < STEPS
        checkpoint = json.loads(next(Path(row["run_dir"], "checkpoints").glob("step_*/state.json")).read_text())
        assert checkpoint["status"] == "stopped"  # stopped in the loop, at the pruned step
    assert result.summary["total_steps"] == sum(r["steps"] for r in rows) < 10 * STEPS
    assert all(r["steps"] == STEPS for r in rows if r["state"] == "complete")


# ---------------------------------------------------------------------- checks before any trial


@pytest.mark.parametrize(("space", "words"), [
    ({"train.optimzer.lr": {"log_uniform": [1e-4, 1e-2]}}, ["tune.space.train.optimzer.lr", "optimizer"]),
    ({"train.optimizer.lr": {"uniform": [-0.1, 0.1]}}, ["tune.space.train.optimizer.lr", "low -0.1", "greater than 0"]),
    ({"train.batch_size": {"choice": [32, 0]}}, ["tune.space.train.batch_size", "value 0"]),
    ({"model.hidden": {"int": [8, 32]}}, ["tune.space.model.hidden", "list"]),
    ({"train.steps": {"log_uniform": [10, 100]}}, ["tune.space.train.steps", "integer"]),
])
def test_a_bad_space_is_one_line_and_exit_2_before_any_trial(workdir: Path, capsys: pytest.CaptureFixture,
                                                             space: dict, words: list[str]) -> None:
    config = study_config(workdir, "bad", trials=2)
    config["tune"]["space"] = space
    assert main(["tune", str(write(workdir, config)), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], err[0]
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(("section", "field"), [
    ({"space": {}}, "tune.space"),
    ({"sampler": "bayes", "space": {"seed": {"int": [0, 3]}}}, "tune.sampler"),
    ({"metric": "val/zeta", "space": {"seed": {"int": [0, 3]}}}, "tune.direction"),
    ({"space": {"seed": {"int": [0, 3], "uniform": [0, 1]}}}, "tune.space.seed"),
])
def test_a_bad_tune_section_names_its_field(section: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_tune(section).resolved_direction()


def test_pruning_needs_intermediate_evaluations(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    config = study_config(workdir, "noeval", trials=2, pruner="median")
    config["train"]["eval_every"] = 0
    assert main(["tune", str(write(workdir, config)), "-q"]) == 2
    assert "train.eval_every" in capsys.readouterr().err


def test_direction_is_inferred_for_known_metrics() -> None:
    space = {"seed": {"int": [0, 1]}}
    assert TuneConfig(metric="val/accuracy", space=space).resolved_direction() == "maximize"
    assert TuneConfig(metric="val/perplexity", space=space).resolved_direction() == "minimize"
    assert TuneConfig(metric="val/zeta", direction="maximize", space=space).resolved_direction() == "maximize"


@given(low=st.floats(1e-6, 1.0), span=st.floats(1.0, 1e4), kind=st.sampled_from(["log_uniform", "uniform", "int"]),
       seed=st.integers(0, 2**16))
def test_sampled_values_stay_in_their_range(low: float, span: float, kind: str, seed: int) -> None:
    import optuna

    from crossframe.tune.space import suggest

    bounds = [low, low * span] if kind != "int" else [int(low * 10), int(low * 10 + span)]
    param = Param(**{kind: bounds})
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    value = suggest(study.ask(), "x", param)
    assert bounds[0] <= value <= bounds[1]
    assert isinstance(value, int) == (kind == "int")


def test_list_choices_travel_through_optuna(workdir: Path) -> None:
    config = study_config(workdir, "lists", trials=3, steps=10, sampler="grid")
    config["tune"]["space"] = {"model.hidden": {"choice": [[8], [16, 8], [4]]}}
    result = tune(config, quiet=True)
    assert sorted(map(tuple, (r["params"]["model.hidden"] for r in result.summary["rows"]))) == [(4,), (8,), (16, 8)]
    assert yaml.safe_load(result.best_config.read_text())["model"]["hidden"] == result.best_params["model.hidden"]


# ---------------------------------------------------------------------- crashes and shared storage


@pytest.mark.slow
def test_sigkill_mid_study_then_resume_keeps_finished_trials(tmp_path: Path) -> None:
    config = study_config(tmp_path, "killed", trials=5, steps=300, sampler="random")
    proc = start_cli(str(write(tmp_path, config)), cwd=tmp_path)
    db = tmp_path / "runs" / "killed" / "study.db"
    killed: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            trials = trials_of(db)
        except sqlite3.Error:
            continue
        if sum(t["state"] == "COMPLETE" for t in trials) >= 2 and any(
                t["state"] == "RUNNING" and "pid" in t["attrs"] for t in trials):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = trials_of(db)  # read after the kill: nothing moves any more
            break
    assert killed, f"the study never reached two complete trials and a running one: {proc.communicate()[1][-2000:]}"
    done_before = {t["number"]: t["value"] for t in killed if t["state"] == "COMPLETE"}
    running = [t for t in killed if t["state"] == "RUNNING"]
    assert len(running) == 1

    result = tune(resume=tmp_path / "runs" / "killed", quiet=True)
    after = trials_of(db)
    for number, value in done_before.items():  # kept, not re-run
        assert after[number]["state"] == "COMPLETE" and after[number]["value"] == value
    dead = after[running[0]["number"]]
    assert dead["state"] == "FAIL" and "died" in dead["attrs"]["error"]
    retries = [t for t in after if t["attrs"].get("retry_of") == dead["number"]]
    assert len(retries) == 1 and retries[0]["state"] == "COMPLETE" and retries[0]["params"] == dead["params"]
    assert result.summary["counts"]["complete"] == 5 == sum(t["state"] == "COMPLETE" for t in after)


@pytest.mark.slow
def test_two_processes_share_one_storage(tmp_path: Path) -> None:
    config = study_config(tmp_path, "shared", trials=6, steps=60, sampler="random")
    path = write(tmp_path, config)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [start_cli(str(path), "--storage", url, cwd=tmp_path),
             start_cli(str(path), "--storage", url, "--jobs", "2", cwd=tmp_path)]  # three workers in all
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    trials = trials_of(tmp_path / "shared.db")
    assert sorted(t["number"] for t in trials) == list(range(len(trials)))
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert 6 <= len(complete) <= 6 + 2  # two workers may each start the last trial at once
    assert len({t["attrs"]["pid"] for t in trials}) >= 2  # both processes ran trials
    trials_dir = tmp_path / "runs" / "shared" / "trials"
    assert sorted(p.name for p in trials_dir.iterdir()) == [f"{t['number']:04d}" for t in trials]
    for t in complete:  # every result landed in its own run directory, with its own values
        saved = yaml.safe_load((trials_dir / f"{t['number']:04d}" / "config.yaml").read_text())
        assert saved["train"]["optimizer"]["lr"] == pytest.approx(t["params"]["train.optimizer.lr"], rel=1e-12)
        assert t["value"] is not None and math.isfinite(t["value"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    in_workers = [t for t in trials if t["attrs"]["pid"] != procs[0].pid]  # the --jobs 2 process's children
    assert in_workers and {t["attrs"]["threads"] for t in in_workers} == {str(max(1, cores // 2))}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray")
def test_ray_launcher_runs_the_workers_as_ray_tasks(tmp_path: Path) -> None:
    config = study_config(tmp_path, "onray", trials=2, steps=12, sampler="random")
    proc = start_cli(str(write(tmp_path, config)), "--launcher", "ray", "--jobs", "2", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    trials = trials_of(tmp_path / "runs" / "onray" / "study.db")
    assert sum(t["state"] == "COMPLETE" for t in trials) >= 2
    assert all(t["attrs"]["pid"] != proc.pid for t in trials)  # trained in the Ray tasks' worker processes
    assert {t["attrs"]["threads"] for t in trials} <= {str(n) for n in range(1, (os.cpu_count() or 1) + 1)}


def test_a_bad_storage_url_is_one_line_and_leaves_nothing(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    config = study_config(workdir, "nostore", trials=2)
    assert main(["tune", str(write(workdir, config)), "--storage", "nosuchdb://x/y", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --storage: cannot open 'nosuchdb://x/y'"), err
    assert not (workdir / "runs" / "nostore").exists()


def test_a_storage_password_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crossframe.tune.plan import STORAGE_ENV, Plan

    url = "postgresql://tuner:s3cret@db.example:5432/studies"
    plan = Plan(tmp_path, "s", url, {"name": "s"}, parse_tune({"space": {"seed": {"int": [0, 3]}}}), 0, 10,
                default_storage=False)
    plan.save()
    saved = (tmp_path / "study.json").read_text()
    assert "s3cret" not in saved and "tuner:***@db.example" in saved
    monkeypatch.setenv(STORAGE_ENV, url)  # how a worker process receives it
    assert Plan.load(tmp_path).storage == url


def test_timeout_stops_starting_trials(workdir: Path) -> None:
    config = study_config(workdir, "timed", trials=500, steps=10, sampler="random", timeout_s=1.0)
    result = tune(config, quiet=True)
    done = result.summary["counts"]["complete"]
    assert 1 <= done < 500 and result.summary["counts"]["running"] == 0
