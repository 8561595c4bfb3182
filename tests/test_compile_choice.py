"""``train.compile: auto``: each backend's rule, a measurement cached on this machine, and the run's log line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from crossframe.config.loading import load_config
from crossframe.errors import ConfigError
from crossframe.train.compile_choice import CACHE_FILE, choice_key, choose_compile, record_measurement
from crossframe.train.runner import make_backend

needs = {b: pytest.mark.skipif(importlib.util.find_spec(b) is None, reason=f"{b} not installed")
         for b in ("torch", "jax", "tensorflow")}


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CROSSFRAME_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (True, True), ("false", False)])
def test_the_setting_takes_true_false_or_auto(value: object, expected: object) -> None:
    assert load_config({"train": {"compile": value}}).train.compile == expected


def test_another_value_is_one_line_naming_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"train": {"compile": "fast"}})
    assert "train.compile" in str(err.value) and "\n" not in str(err.value)


@needs["torch"]
def test_an_explicit_setting_is_kept() -> None:
    torch = make_backend("torch")
    assert choose_compile(True, "torch", torch, "cpu", "single").enabled
    assert not choose_compile(False, "torch", torch, "gpu", "single").enabled


@needs["torch"]
def test_torch_rule_a_measurement_and_a_constraint(own_cache: Path) -> None:
    torch = make_backend("torch")
    assert not choose_compile("auto", "torch", torch, "cpu", "single").enabled  # the rule on CPU
    assert choose_compile("auto", "torch", torch, "gpu", "single").enabled  # and on a GPU
    key = choice_key("torch", torch.framework_version(), "cpu")
    assert record_measurement(key, 1200.0, 1000.0, "a test")
    assert key in json.loads((own_cache / CACHE_FILE).read_text())
    measured = choose_compile("auto", "torch", torch, "cpu", "single")
    assert measured.enabled and "measured on this machine: 1200 steps/s compiled after 0.0 s" in measured.reason
    # a constraint wins over any measurement
    assert not choose_compile("auto", "torch", torch, "cpu", "fully_sharded").enabled
    record_measurement(key, 900.0, 1000.0, "a test")  # a newer measurement replaces the old one
    assert not choose_compile("auto", "torch", torch, "cpu", "single").enabled


@needs["torch"]
def test_a_short_run_does_not_pay_for_a_long_compilation() -> None:
    torch = make_backend("torch")
    # 5 s of compilation for 1200 instead of 1000 steps/s: it pays off after 5 / (1/1000 - 1/1200) = 30000 steps
    record_measurement(choice_key("torch", torch.framework_version(), "cpu"), 1200.0, 1000.0, "a test", 5.0)
    assert not choose_compile("auto", "torch", torch, "cpu", "single", steps=29_000).enabled
    long = choose_compile("auto", "torch", torch, "cpu", "single", steps=31_000)
    assert long.enabled and "31000 steps take" in long.reason


@needs["jax"]
def test_jax_always_compiles_whatever_the_cache_says() -> None:
    jax = make_backend("jax")
    record_measurement(choice_key("jax", jax.framework_version(), "cpu"), 1.0, 1000.0, "a test")
    choice = choose_compile("auto", "jax", jax, "cpu", "single")
    assert choice.enabled and "always" in choice.reason


@needs["tensorflow"]
def test_tensorflow_picks_xla_for_one_device_only() -> None:
    tf = make_backend("tensorflow")
    assert choose_compile("auto", "tensorflow", tf, "cpu", "single").enabled
    assert not choose_compile("auto", "tensorflow", tf, "cpu", "data_parallel").enabled


@pytest.mark.slow
@needs["tensorflow"]
def test_a_run_logs_its_choice_and_trains_compiled(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import crossframe

    result = crossframe.run({"backend": "tensorflow", "device": "cpu", "output_dir": str(tmp_path),
                             "data": {"name": "synthetic", "samples": 64, "features": 4, "classes": 3},
                             "model": {"name": "mlp", "hidden": [5]},
                             "train": {"steps": 3, "batch_size": 16, "compile": "auto", "log_every": 1}})
    assert result.status == "completed"
    err = capfd.readouterr().err
    assert "train.compile: auto -> true (XLA jit_compile" in err
