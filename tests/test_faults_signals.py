"""Fault injection: SIGINT, SIGTERM and SIGKILL at seeded random moments, on every installed backend.

Every interrupted run, resumed, must end bit-identical (weights and optimizer state) to a run that
was never interrupted: so the checkpoint an interrupt writes holds exactly the state its step
counter names. Two tries per backend for the MLP and one for the GPT and for SIGKILL by default;
``CROSSFRAME_FAULT_TRIES=N`` runs N (N/2 for those).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossframe import hookimpl
from crossframe.checkpoint import load_checkpoint
from crossframe.cli.main import main
from crossframe.plugins import get_plugin_manager

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
TRIES = int(os.environ.get("CROSSFRAME_FAULT_TRIES", "2"))
STEPS = 12


def mlp_config(backend: str, steps: int = STEPS, **train: Any) -> dict[str, Any]:
    return {
        "backend": backend, "device": "cpu", "seed": 5,
        "data": {"name": "synthetic", "samples": 192, "features": 6, "classes": 3},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"steps": steps, "batch_size": 16, "log_every": 3, "eval_every": 4,
                  "optimizer": {"name": "adamw", "lr": 0.01}, "schedule": {"name": "cosine", "warmup_steps": 2},
                  **train},
    }


def gpt_config(backend: str, text_dir: Path, steps: int = STEPS, **train: Any) -> dict[str, Any]:
    return {
        "backend": backend, "device": "cpu", "seed": 5,
        "data": {"name": "text-files", "paths": [str(text_dir)], "val_fraction": 0.3},
        "text": {"tokenizer": {"name": "bytes"}, "seq_len": 8, "max_eval_tokens": 256},
        "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16, "max_seq_len": 8},
        "train": {"steps": steps, "batch_size": 4, "log_every": 3, "eval_every": 4,
                  "optimizer": {"name": "adamw", "lr": 0.01}, **train},
    }


def write_corpus(root: Path) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        words = [rng.choice(["alpha", "beta", "gamma", "delta", "step", "loss"]) for _ in range(120)]
        (root / f"doc{i}.txt").write_text(" ".join(words) + "\n")
    return root


def config_for(model: str, backend: str, workdir: Path, **train: Any) -> dict[str, Any]:
    if model == "mlp":
        return mlp_config(backend, **train)
    from crossframe.train.runner import make_backend

    if "gpt" not in make_backend(backend).capabilities().models:
        pytest.skip(f"{backend} has no gpt")
    return gpt_config(backend, write_corpus(workdir / "corpus"), **train)


def final_state(run_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    ckpt = load_checkpoint(run_dir)
    return ckpt.weights, ckpt.optimizer_state, ckpt.step


def assert_bit_identical(got: Path, want: Path) -> None:
    gw, go, gs = final_state(got)
    ww, wo, ws = final_state(want)
    assert gs == ws
    for label, a, b in (("weights", gw, ww), ("optimizer state", go, wo)):
        assert sorted(a) == sorted(b), label
        for name in b:
            assert a[name].dtype == b[name].dtype, f"{label} {name}"
            assert np.array_equal(a[name], b[name]), f"{label} '{name}' differs after the interrupted run resumed"


class SignalLater:
    """Sends ``signum`` to this process ``delay`` seconds after step ``at`` ends (so mid-step, mid-eval...)."""

    def __init__(self, at: int, delay: float, signum: int) -> None:
        self.at, self.delay, self.signum = at, delay, signum
        self.timer: threading.Timer | None = None

    @hookimpl
    def on_step_end(self, run, step, batch, logs):
        if step == self.at and self.timer is None:
            self.timer = threading.Timer(self.delay, os.kill, (os.getpid(), self.signum))
            self.timer.start()

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer.join()


def run_cli(*args: str) -> int:
    return main(["run", *args, "-q", "--sample-tokens", "0"], keep_plugins=True)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "gpt"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_signal_at_a_random_moment_then_resume_is_bit_identical(workdir: Path, backend: str, model: str,
                                                                capsys: pytest.CaptureFixture) -> None:
    cfg = config_for(model, backend, workdir)
    (workdir / "ref.json").write_text(json.dumps({**cfg, "name": "ref"}))
    assert run_cli("ref.json") == 0
    rng = random.Random(f"{backend}-{model}")
    strays: list[int] = []
    interrupted = 0
    previous = signal.signal(signal.SIGINT, lambda signum, frame: strays.append(signum))  # a late timer
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: strays.append(signum))
    try:
        for attempt in range(TRIES if model == "mlp" else max(1, TRIES // 2)):
            name = f"try{attempt}"
            signum = rng.choice([signal.SIGINT, signal.SIGINT, signal.SIGTERM])
            sender = SignalLater(rng.randint(1, STEPS - 1), rng.uniform(0.0, 0.02), signum)
            (workdir / f"{name}.json").write_text(json.dumps({**cfg, "name": name}))
            get_plugin_manager().register(sender, "signal-later")
            capsys.readouterr()
            try:
                code = run_cli(f"{name}.json")
            finally:
                sender.finish()
                get_plugin_manager().unregister("signal-later")
            err = capsys.readouterr().err.strip().splitlines()
            run_dir = workdir / "runs" / name
            if code == 130:
                interrupted += 1
                assert len(err) == 1 and "checkpoint written to" in err[0] and f"--resume runs/{name}" in err[0], err
                assert "Traceback" not in "".join(err)
                step = load_checkpoint(run_dir).step
                if step < STEPS:
                    assert run_cli("--resume", f"runs/{name}") == 0
            else:
                assert code == 0, err  # the signal came after the run had finished
            assert_bit_identical(run_dir, workdir / "runs" / "ref")
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
    print(f"{backend}-{model}: {interrupted} of {attempt + 1} tries interrupted mid-run")  # the rest came too late


def _child_env() -> dict[str, str]:
    here = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH", "")]))}


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(workdir: Path, backend: str) -> None:
    steps = 24
    cfg = mlp_config(backend, steps=steps, checkpoint_every=3, eval_every=5)
    (workdir / "ref.json").write_text(json.dumps({**cfg, "name": "ref"}))
    assert run_cli("ref.json") == 0
    rng = random.Random(f"kill-{backend}")
    code = "import sys; from crossframe.cli.main import main; sys.exit(main(sys.argv[1:]))"
    for attempt in range(max(1, TRIES // 2)):
        name = f"kill{attempt}"
        (workdir / f"{name}.json").write_text(json.dumps({**cfg, "name": name}))
        child = subprocess.Popen([sys.executable, "-c", code, "run", f"{name}.json", "-q"], cwd=workdir,
                                 env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        latest = workdir / "runs" / name / "checkpoints" / "latest"
        deadline = time.monotonic() + 120
        while not latest.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        child.kill()
        child.wait()
        child.stderr.close()
        run_dir = workdir / "runs" / name
        if load_checkpoint(run_dir).step < steps:
            assert run_cli("--resume", f"runs/{name}") == 0
        assert not list((run_dir / "checkpoints").glob(".step_*")), "a killed save's temporary was left behind"
        assert_bit_identical(run_dir, workdir / "runs" / "ref")


class SignalTwice:
    """Sends SIGINT twice at the end of step ``at``: the second one must stop the run at once."""

    def __init__(self, at: int) -> None:
        self.at = at

    @hookimpl
    def on_step_end(self, run, step, batch, logs):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_signal_stops_at_once_and_the_previous_checkpoint_resumes(workdir: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch")
    cfg = mlp_config("torch", checkpoint_every=2)
    (workdir / "ref.json").write_text(json.dumps({**cfg, "name": "ref"}))
    (workdir / "twice.json").write_text(json.dumps({**cfg, "name": "twice"}))
    assert run_cli("ref.json") == 0
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    get_plugin_manager().register(SignalTwice(5), "signal-twice")
    capsys.readouterr()
    try:
        assert run_cli("twice.json") == 130
    finally:
        get_plugin_manager().unregister("signal-twice")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers put back
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["interrupted: no checkpoint was written (any earlier checkpoint is intact)"]
    assert load_checkpoint(workdir / "runs" / "twice").step == 4
    assert run_cli("--resume", "runs/twice") == 0
    assert_bit_identical(workdir / "runs" / "twice", workdir / "runs" / "ref")
