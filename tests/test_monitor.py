"""``sys/`` resource metrics per log window, on every backend; data-wait rises with a slow loader."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crossframe
from crossframe.data.loader import BatchLoader
from crossframe.train.monitor import ResourceMonitor, _rss_reader, percentile
from tests.conftest import tiny_config

WINDOW_KEYS = {"sys/rss_mb", "sys/cpu_percent", "sys/data_wait_share", "sys/step_ms_p50", "sys/step_ms_p95"}


def _train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train/loss" in r]


@pytest.mark.parametrize("backend", [
    "torch",
    pytest.param("jax", marks=pytest.mark.slow),
    pytest.param("tensorflow", marks=pytest.mark.slow),
])
def test_every_log_window_has_sys_metrics(workdir: Path, backend: str) -> None:
    pytest.importorskip({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
    result = crossframe.run({**tiny_config(steps=10), "backend": backend, "name": backend}, quiet=True)
    records = _train_records(result.run_dir)
    assert [r["step"] for r in records] == [5, 10]
    for record in records:
        assert set(record) >= WINDOW_KEYS
        assert record["sys/rss_mb"] > 0 and record["sys/cpu_percent"] >= 0
        assert 0 <= record["sys/data_wait_share"] <= 1
        assert 0 < record["sys/step_ms_p50"] <= record["sys/step_ms_p95"]
        assert "sys/device_peak_mb" not in record and "sys/device_mb" not in record  # host CPU: not kept


def test_data_wait_rises_when_the_loader_is_slowed(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    fast = _train_records(crossframe.run({**tiny_config(), "name": "fast"}, quiet=True).run_dir)
    original = BatchLoader.batch

    def slow_batch(self: BatchLoader, step: int):
        time.sleep(0.02)  # far longer than a tiny MLP step
        return original(self, step)

    monkeypatch.setattr(BatchLoader, "batch", slow_batch)
    slow = _train_records(crossframe.run({**tiny_config(), "name": "slow"}, quiet=True).run_dir)
    fast_share = float(np.mean([r["sys/data_wait_share"] for r in fast]))
    slow_share = float(np.mean([r["sys/data_wait_share"] for r in slow]))
    assert fast_share < 0.5 < slow_share
    assert min(r["sys/step_ms_p50"] for r in slow) >= 20.0  # each iteration includes the 20 ms sleep


def test_resource_metrics_can_be_turned_off(workdir: Path) -> None:
    pytest.importorskip("torch")
    cfg = tiny_config(resource_metrics=False)
    records = _train_records(crossframe.run({**cfg, "name": "off"}, quiet=True).run_dir)
    assert records and not any(k.startswith("sys/") for r in records for k in r)


def test_window_percentiles_and_shares_follow_the_recorded_steps() -> None:
    monitor = ResourceMonitor(device_peak_mb=lambda: 12.5, device_mb=lambda: 3.0)
    for i in range(1, 101):
        monitor.record(0.001 * i / 4, 0.001 * i)
    out = monitor.window()
    assert out["sys/data_wait_share"] == pytest.approx(0.25)
    assert out["sys/step_ms_p50"] == pytest.approx(50.5)
    assert out["sys/step_ms_p95"] == pytest.approx(95.05)
    assert out["sys/device_peak_mb"] == 12.5 and out["sys/device_mb"] == 3.0
    assert "sys/step_ms_p50" not in monitor.window()  # a new window starts empty


def test_a_device_figure_the_backend_does_not_keep_is_asked_for_once() -> None:
    asked: list[str] = []

    def none() -> None:
        asked.append("peak")

    monitor = ResourceMonitor(device_peak_mb=none, device_mb=lambda: 3.0)
    for _ in range(3):
        monitor.record(0.001, 0.002)
        out = monitor.window()
        assert out["sys/device_mb"] == 3.0 and "sys/device_peak_mb" not in out
    assert asked == ["peak"]


@given(st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=60),
       st.floats(min_value=0.0, max_value=100.0))
def test_pure_python_percentile_is_numpys_linear_method(values: list[float], q: float) -> None:
    ordered = sorted(values)
    # the same interpolation in float64: equal up to a few ulps of the largest value
    assert percentile(ordered, q) == pytest.approx(float(np.percentile(ordered, q)), rel=1e-12, abs=1e-12)


def test_rss_reader_reports_this_processes_resident_memory() -> None:
    psutil = pytest.importorskip("psutil")
    rss = _rss_reader()()
    assert rss is not None
    # the statm read and psutil see the same process within what a few allocations move it
    assert abs(rss - psutil.Process().memory_info().rss / 2**20) < 64
