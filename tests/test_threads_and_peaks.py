"""Thread counts chosen on purpose, MFU that stays in (0, 1], the machine's load in compare, NAME@latest."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crossframe
from crossframe.cli.main import main
from crossframe.compare.load import LoadMeter
from crossframe.errors import ConfigError
from crossframe.perf import cache_dir, device_peak, peak_key, raise_peak
from crossframe.rundirs import resolve_run_dir
from crossframe.threads import auto_threads, choose_threads, thread_environment

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]


def lm_config(backend: str, steps: int = 12) -> dict:
    """A tiny GPT on a slice of the stdlib: enough to log MFU a few times."""
    return {
        "name": f"mfu-{backend}", "backend": backend, "device": "cpu", "seed": 0,
        "data": {"name": "python-stdlib", "max_files": 20, "val_fraction": 0.25},
        "text": {"tokenizer": {"name": "bytes"}, "seq_len": 16, "max_eval_tokens": 512},
        "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16, "max_seq_len": 16},
        "train": {"steps": steps, "batch_size": 4, "log_every": 3, "eval_every": 0,
                  "optimizer": {"name": "adamw", "lr": 1e-3}},
    }


# ------------------------------------------------------------------------------------------ threads


@given(cores=st.integers(1, 256), load=st.floats(0, 512, allow_nan=False))
def test_auto_threads_is_at_least_one_and_never_more_than_the_idle_cores(cores: int, load: float) -> None:
    n = auto_threads(cores, load)
    assert 1 <= n <= cores
    assert n <= max(1, int(cores - load))  # never a thread for a core another process keeps busy
    if cores > 2:
        assert n <= cores // 2


def test_thread_environment_fixes_every_pool_and_keeps_other_xla_flags() -> None:
    env = thread_environment(1, {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=true"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert env["TF_NUM_INTEROP_THREADS"] == "1"
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", "--xla_cpu_multi_thread_eigen=false"]
    three = thread_environment(3, env)
    assert three["OMP_NUM_THREADS"] == "3" and "multi_thread_eigen" not in three["XLA_FLAGS"]


def test_a_configured_count_wins_and_a_bad_one_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert choose_threads(3).threads == 3 and choose_threads(3).reason == "as configured"
    assert choose_threads("auto").threads >= 1
    assert main(["run", "digits-mlp", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "threads" in err


@pytest.mark.skipif("torch" not in BACKENDS, reason="torch is not installed")
def test_a_run_uses_the_threads_it_was_given(workdir: Path, tiny, capsys: pytest.CaptureFixture) -> None:
    code = ("import crossframe, torch, sys; "
            "crossframe.run(sys.argv[1], ['threads=2', 'train.steps=2']); print('threads', torch.get_num_threads())")
    (workdir / "tiny.json").write_text(json.dumps(tiny()))
    proc = subprocess.run([sys.executable, "-c", code, "tiny.json"], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    assert "threads 2" in proc.stdout
    # the run says where it writes and how many threads it took, before training starts
    assert "run directory: runs/" in proc.stderr and "threads: 2 (as configured)" in proc.stderr


# ------------------------------------------------------------------------------------------ MFU


def test_the_peak_is_measured_once_and_only_ever_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFRAME_CACHE_DIR", str(tmp_path))
    calls: list[int] = []

    def probe() -> float:
        calls.append(1)
        return 1e9 + len(calls)

    key = peak_key("numpy-1", "cpu", "fp32", 1)
    first = device_peak(key, probe, rounds=3)
    assert first.flops == 1e9 + 3 and first.source == "probe" and len(calls) == 3
    again = device_peak(key, probe)
    assert again.flops == first.flops and again.source == "cached probe" and len(calls) == 3
    raise_peak(key, 5e8, "observed")  # lower: ignored
    assert device_peak(key, probe).flops == first.flops
    raise_peak(key, 2e9, "observed")
    assert device_peak(key, probe).flops == 2e9 and device_peak(key, probe).source == "cached observed"
    assert (cache_dir() / "peaks.json").is_file()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mfu_stays_in_0_1_even_when_the_probe_was_taken_under_load(
        workdir: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFRAME_CACHE_DIR", str(workdir / "cache"))
    cfg = lm_config(backend)
    from crossframe.train.runner import make_backend

    impl = make_backend(backend)
    # a probe that ran while the machine was busy: far below what the run will reach
    key = peak_key(f"{backend}-{impl.framework_version()}", "cpu", "fp32", int(os.environ["OMP_NUM_THREADS"]))
    raise_peak(key, 1.0, "probe")
    result = crossframe.run(cfg, ["threads=1"], quiet=True)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    mfus = [r["train/mfu"] for r in records if "train/mfu" in r]
    assert len(mfus) >= 3
    assert all(0.0 < m <= 1.0 for m in mfus), mfus
    assert mfus[0] == 1.0  # the first window proved the probe low and became the peak
    cached = json.loads((workdir / "cache" / "peaks.json").read_text())[key]
    assert cached["source"] == "observed" and cached["flops"] > 1.0


# ------------------------------------------------------------------------------------------ compare load


def test_the_load_meter_flags_a_run_that_shared_its_cores() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    spin = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass\n"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cores)]  # load the whole machine
    try:
        meter = LoadMeter(threads=cores, cores=cores)  # a run that asked for every core
        meter.start()
        child = subprocess.Popen([sys.executable, "-c", spin])
        child.wait()
        record = meter.stop()
    finally:
        for proc in busy:
            proc.wait()
    assert record["other_cores"] > 0.25, record
    assert record["contended"] and "other processes kept" in record["why"]
    assert record["child_cpu_cores"] > 0.1


def test_the_load_meter_does_not_flag_an_idle_share() -> None:
    meter = LoadMeter(threads=1, cores=64)  # 63 cores left free: nothing here can take more
    meter.start()
    time.sleep(0.2)
    record = meter.stop()
    assert not record["contended"] and record["why"] is None


# ------------------------------------------------------------------------------------------ NAME@latest


def test_name_at_latest_is_the_newest_run_of_that_name(workdir: Path, tiny) -> None:
    first = crossframe.run({**tiny(steps=2), "name": "twice"}, quiet=True)
    time.sleep(0.05)
    second = crossframe.run({**tiny(steps=2), "name": "twice"}, quiet=True)
    assert first.run_dir.name == "twice" and second.run_dir.name == "twice-1"
    assert resolve_run_dir(workdir / "runs" / "twice@latest") == second.run_dir.resolve() or \
        resolve_run_dir(Path("runs/twice@latest")) == second.run_dir
    assert crossframe.evaluate("runs/twice@latest")["step"] == 2
    with pytest.raises(ConfigError, match="no run named 'nothing'"):
        resolve_run_dir("runs/nothing@latest")
