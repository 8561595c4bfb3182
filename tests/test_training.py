"""The one training loop on the torch backend: accuracy, resume, accumulation, stopping, precision."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import crossframe
from crossframe import hookimpl
from crossframe.checkpoint import load_checkpoint
from crossframe.cli.main import main
from crossframe.optimizers import state_step
from crossframe.plugins import get_plugin_manager

pytest.importorskip("torch")


def weights_of(run_dir: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(run_dir).weights


class StopAt:
    """A plugin that records batches and stops the run after a given step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.batches: list[str] = []

    @hookimpl
    def on_step_end(self, run, step, batch, logs):
        self.batches.append(hashlib.sha1(batch["x"].tobytes() + batch["y"].tobytes()).hexdigest())
        if step == self.stop_at:
            run.should_stop = True


@pytest.mark.slow
def test_digits_mlp_preset_reaches_95_percent(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "digits-mlp", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "run directory: runs/digits-mlp" in out
    run_dir = workdir / "runs" / "digits-mlp"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "val/accuracy" in r][-1]
    assert final["step"] == 600
    assert final["val/accuracy"] >= 0.95
    assert (run_dir / "checkpoints" / "step_600" / "model.safetensors").is_file()
    assert (run_dir / "config.yaml").is_file()


def test_resume_matches_an_uninterrupted_run(workdir: Path, tiny) -> None:
    cfg = tiny(steps=40, schedule={"name": "cosine", "warmup_steps": 5}, eval_every=10, checkpoint_every=15)
    straight = StopAt()
    manager = get_plugin_manager()
    manager.register(straight, "recorder")
    full = crossframe.run({**cfg, "name": "full"}, quiet=True)
    manager.unregister("recorder")

    first = StopAt(stop_at=20)
    manager.register(first, "recorder")
    stopped = crossframe.run({**cfg, "name": "halves"}, quiet=True)
    manager.unregister("recorder")
    assert stopped.status == "stopped" and stopped.steps == 20

    second = StopAt()
    manager.register(second, "recorder")
    resumed = crossframe.run(resume=stopped.run_dir, quiet=True)
    assert resumed.status == "completed" and resumed.steps == 40
    assert resumed.run_dir == stopped.run_dir

    assert first.batches + second.batches == straight.batches
    a, b = weights_of(full.run_dir), weights_of(resumed.run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, rtol=0)
    opt_a, opt_b = load_checkpoint(full.run_dir).optimizer_state, load_checkpoint(resumed.run_dir).optimizer_state
    assert state_step(opt_a) == state_step(opt_b) == 40
    np.testing.assert_allclose(opt_a["exp_avg_sq/layers.0.weight"], opt_b["exp_avg_sq/layers.0.weight"], atol=1e-9)
    steps = [json.loads(x)["step"] for x in (stopped.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 40  # one metrics file, appended across the resume


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "adamw", "lr": 0.01}])
def test_grad_accumulation_equals_one_big_batch(workdir: Path, tiny, optimizer) -> None:
    big = crossframe.run({**tiny(steps=10, batch_size=32, optimizer=optimizer), "name": "big"}, quiet=True)
    acc = crossframe.run({**tiny(steps=10, batch_size=8, grad_accum=4, optimizer=optimizer), "name": "acc"},
                         quiet=True)
    a, b = weights_of(big.run_dir), weights_of(acc.run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, rtol=0)


def test_clipping_reports_grad_norm_and_bounds_the_update(workdir: Path, tiny) -> None:
    result = crossframe.run(tiny(steps=10, clip_norm=1e-3, optimizer={"name": "sgd", "lr": 1.0}), quiet=True)
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train/grad_norm"] > 1e-3 for r in records if "train/grad_norm" in r)
    from crossframe.models import build_model

    start = build_model("mlp", {"hidden": [16]}, _info()).init(3)
    end = weights_of(result.run_dir)
    moved = np.sqrt(sum(np.sum((end[k] - start[k]) ** 2) for k in start))
    assert moved <= 10 * 1e-3 * 1.0 + 1e-6  # 10 steps of at most lr * clip_norm


def _info():
    from crossframe.data.dataset import DataInfo

    return DataInfo("classification", (8,), 3)


def test_early_stopping_stops_and_says_why(workdir: Path, tiny) -> None:
    cfg = tiny(steps=400, eval_every=5, optimizer={"name": "sgd", "lr": 1e-9},
               early_stopping={"monitor": "val/accuracy", "patience": 2})
    result = crossframe.run(cfg, quiet=True)
    assert result.status == "stopped"
    assert result.steps == 15  # first eval sets the best, two more without improvement
    state = load_checkpoint(result.run_dir).state
    assert state["early_stopping"]["bad_evals"] == 2
    assert state["early_stopping"]["mode"] == "max"


def test_regression_task_trains_and_reports_errors(workdir: Path, tiny) -> None:
    cfg = tiny(steps=300, optimizer={"name": "adam", "lr": 0.05})
    cfg["data"] = {"name": "synthetic", "task": "regression", "features": 4, "targets": 2, "noise": 0.01}
    cfg["model"] = {"name": "mlp", "hidden": []}
    result = crossframe.run(cfg, quiet=True)
    assert {k for k in result.metrics if k.startswith("val/")} == {"val/loss", "val/mae", "val/rmse"}
    assert result.metrics["sys/peak_host_mb"] > 10
    assert result.metrics["val/rmse"] < 0.2


def test_cnn_and_bf16_run_end_to_end(workdir: Path) -> None:
    cfg = {"model": {"name": "cnn", "channels": [8], "hidden": 16}, "precision": "bf16", "device": "cpu",
           "train": {"steps": 60, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.01}}}
    result = crossframe.run(cfg, quiet=True)
    assert result.metrics["val/accuracy"] > 0.6
    weights = weights_of(result.run_dir)
    assert all(w.dtype == np.float32 for w in weights.values())  # master weights stay fp32


def test_epochs_budget_and_confusion_matrix(workdir: Path, tiny) -> None:
    cfg = tiny(metrics=["accuracy", "confusion_matrix"])
    del cfg["train"]["steps"]
    cfg["train"]["epochs"] = 2
    result = crossframe.run(cfg, quiet=True)
    assert result.steps == 2 * ((256 - 51) // 16)  # 205 training examples, batches of 16
    cm = np.asarray(result.metrics["val/confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 51
    assert np.trace(cm) / cm.sum() == pytest.approx(result.metrics["val/accuracy"])


def test_same_seed_same_run(workdir: Path, tiny) -> None:
    a = crossframe.run({**tiny(), "name": "a"}, quiet=True)
    b = crossframe.run({**tiny(), "name": "b"}, quiet=True)
    wa, wb = weights_of(a.run_dir), weights_of(b.run_dir)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_run_directories_are_never_overwritten(workdir: Path, tiny) -> None:
    first = crossframe.run({**tiny(steps=5), "name": "same"}, quiet=True)
    second = crossframe.run({**tiny(steps=5), "name": "same"}, quiet=True)
    assert first.run_dir.name == "same" and second.run_dir.name == "same-1"


def test_non_finite_loss_fails_with_advice(workdir: Path, tiny, capsys: pytest.CaptureFixture) -> None:
    (workdir / "boom.yaml").write_text(json.dumps(tiny(steps=30, optimizer={"name": "sgd", "lr": 1e30})))
    assert main(["run", "boom.yaml", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train loss became" in err[0] and "clip_norm" in err[0]


def test_resume_past_the_budget_is_refused(workdir: Path, tiny, capsys: pytest.CaptureFixture) -> None:
    done = crossframe.run(tiny(steps=5), quiet=True)
    assert main(["run", "--resume", str(done.run_dir), "-q"]) == 2
    assert "raise train.steps" in capsys.readouterr().err
    assert main(["run", "--resume", str(done.run_dir), "--set", "train.steps=8", "-q"]) == 0
    assert load_checkpoint(done.run_dir).step == 8


INTERRUPT_AT_7 = """
import os
import signal

from crossframe import hookimpl

@hookimpl
def on_step_end(run, step, batch, logs):
    if step == 7 and not run.config.name.endswith("resumed"):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: the loop finishes step 7, saves and stops
"""


def test_ctrl_c_writes_a_checkpoint_and_the_run_resumes(workdir: Path, tiny, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    from tests.plugin_dists import make_distribution

    make_distribution(workdir / "site", "crossframe-ctrl-c", "ctrlc", "ctrlc_plugin", INTERRUPT_AT_7)
    monkeypatch.syspath_prepend(str(workdir / "site"))
    (workdir / "cfg.json").write_text(json.dumps({**tiny(steps=12), "name": "int"}))
    assert main(["run", "cfg.json", "-q"]) == 130
    assert "continue with --resume" in capsys.readouterr().err
    assert load_checkpoint(workdir / "runs" / "int").step == 7
    assert main(["run", "--resume", "runs/int", "--set", "name=int-resumed", "-q"]) == 0
    assert load_checkpoint(workdir / "runs" / "int").step == 12


@pytest.mark.slow
def test_torch_compile_gives_the_same_training(workdir: Path, tiny) -> None:
    eager = crossframe.run({**tiny(steps=5), "name": "eager"}, quiet=True)
    compiled = crossframe.run({**tiny(steps=5, compile=True), "name": "compiled"}, quiet=True)
    a, b = weights_of(eager.run_dir), weights_of(compiled.run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, rtol=0)


def test_metrics_do_not_depend_on_the_eval_batch_size(workdir: Path, tiny) -> None:
    cfg = tiny(steps=20)
    cfg["data"] = {"name": "synthetic", "task": "regression", "features": 4, "targets": 2}
    one = crossframe.run({**cfg, "name": "one", "train": {**cfg["train"], "eval_batch_size": 512}}, quiet=True)
    many = crossframe.run({**cfg, "name": "many", "train": {**cfg["train"], "eval_batch_size": 7}}, quiet=True)
    for key in ("val/loss", "val/mae", "val/rmse"):
        assert many.metrics[key] == pytest.approx(one.metrics[key], rel=1e-5)


def test_csv_logger_keeps_rows_across_a_resume(workdir: Path, tiny) -> None:
    first = crossframe.run({**tiny(steps=10, log_every=5), "loggers": [{"name": "csv"}]}, quiet=True)
    crossframe.run(resume=first.run_dir, overrides=["train.steps=20"], quiet=True)
    import csv

    with (first.run_dir / "metrics.csv").open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == sorted(steps) and steps[0] == 5 and steps[-1] == 20


def test_run_end_hook_sees_failures_of_any_kind(workdir: Path, tiny) -> None:
    seen: list[str] = []

    class Watcher:
        @hookimpl
        def on_run_end(self, run, status, metrics):
            seen.append(status)

    get_plugin_manager().register(Watcher(), "watcher")
    with pytest.raises(crossframe.errors.RunError, match="train loss became"):
        crossframe.run(tiny(optimizer={"name": "sgd", "lr": 1e38}), quiet=True)
    assert seen == ["failed"]
