"""Tests of the dataset `example`, through crossframe's fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

NAME = "example"
PREFERRED_BACKENDS = ("torch", "jax", "tensorflow")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary directory, so `runs/` lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def backend(crossframe_plugins) -> str:
    """The first backend that works here (install one: pip install "crossframe[torch]")."""
    from crossframe.errors import CrossframeError
    from crossframe.train.runner import make_backend

    available = crossframe_plugins.components("backend")
    ordered = [n for n in PREFERRED_BACKENDS if n in available]
    for name in ordered + sorted(set(available) - set(ordered)):
        try:
            make_backend(name)
        except (CrossframeError, ImportError):
            continue
        return name
    pytest.skip("no crossframe backend is installed")


def load(crossframe_plugins, **params):
    """The dataset, loaded the way a run loads it: params validated by its schema."""
    comp = crossframe_plugins.get("dataset", NAME)
    return comp.obj(comp.schema.model_validate(params))


def test_the_plugin_is_loaded_and_provides_the_dataset(crossframe_cli) -> None:
    result = crossframe_cli("plugins", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows[NAME]["status"] == "loaded", rows[NAME]["error"]
    assert rows[NAME]["components"] == {"dataset": [NAME]}


def test_same_seed_same_arrays(crossframe_plugins) -> None:
    a = load(crossframe_plugins, samples=200, classes=4, seed=1)
    b = load(crossframe_plugins, samples=200, classes=4, seed=1)
    c = load(crossframe_plugins, samples=200, classes=4, seed=2)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert a.x.shape == (200, 2) and a.x.dtype == np.float32
    assert set(np.unique(a.y)) == {0, 1, 2, 3}
    assert a.info.num_outputs == 4 and a.info.task == "classification"
    assert np.abs(a.x).max() < 1.5  # scaled into (about) the unit disc


def test_bad_params_are_one_line_errors(crossframe_cli, workdir: Path) -> None:
    result = crossframe_cli("run", "digits-mlp", "--set", "data.name=" + NAME,
                            "--set", "data.samples=0")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: data.samples: input should be greater than 0 (got 0)"]
    result = crossframe_cli("run", "digits-mlp", "--set", "data.name=" + NAME,
                            "--set", "data.sample=10")
    assert result.exit_code == 2
    assert "data.sample: unknown key; did you mean 'samples'?" in result.stderr


def test_a_small_mlp_learns_it(crossframe_cli, workdir: Path, backend: str) -> None:
    config = {
        "name": "rings",
        "device": "cpu",
        "data": {"name": NAME, "samples": 1000, "classes": 3},
        "model": {"name": "mlp", "hidden": [32, 32]},
        "train": {"steps": 200, "batch_size": 32, "log_every": 50,
                  "optimizer": {"name": "adamw", "lr": 0.01}},
    }
    (workdir / "rings.json").write_text(json.dumps(config))
    result = crossframe_cli("run", "rings.json", "--backend", backend, "--quiet")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in (workdir / "runs/rings/metrics.jsonl").open()]
    final = [r for r in records if "val/accuracy" in r][-1]
    assert final["step"] == 200
    assert final["val/accuracy"] > 0.9, f"accuracy {final['val/accuracy']:.3f} on {backend}"
