"""The ``tensorboard`` logger: events read back with TensorBoard's own reader equal metrics.jsonl."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import crossframe
from crossframe.tensorboard import flat_hparams
from tests.conftest import tiny_config

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")
pytest.importorskip("torch")


@pytest.fixture
def accumulator(monkeypatch: pytest.MonkeyPatch):
    """TensorBoard's EventAccumulator on its TensorFlow-free path (the documented ``notf`` switch)."""
    monkeypatch.setitem(sys.modules, "tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def load(path: Path) -> EventAccumulator:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
        acc.Reload()
        return acc

    return load


def test_events_equal_metrics_jsonl_with_config_hparams_and_histograms(workdir: Path, accumulator) -> None:
    cfg = tiny_config(eval_every=10, checkpoint_every=10)
    cfg["loggers"] = [{"name": "tensorboard", "histograms": True}]
    result = crossframe.run({**cfg, "name": "tb"}, quiet=True)
    acc = accumulator(result.run_dir)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                expected.setdefault(key, []).append((record["step"], value))
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        # event files store float32 scalars: each value is the float32 rounding of the JSON one
        assert got == [(step, float(np.float32(value))) for step, value in points], tag

    weights = crossframe.checkpoint.load_checkpoint(result.run_dir).weights
    for name, array in weights.items():
        histos = acc.Histograms(f"weights/{name}")
        assert [h.step for h in histos] == [10, 20]
        last = histos[-1].histogram_value
        assert last.num == array.size and last.min == pytest.approx(float(array.min()), abs=0)
        assert last.max == pytest.approx(float(array.max()), abs=0)

    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "backend: torch" in text and "name: tensorboard" in text

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.optimizer.lr"].number_value == pytest.approx(0.01, abs=0)
    assert start.hparams["model.name"].string_value == "mlp"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"val/loss", "val/accuracy"}


def test_histograms_off_by_default_and_a_resume_appends(workdir: Path, accumulator) -> None:
    cfg = {**tiny_config(steps=10), "name": "tb2", "loggers": [{"name": "tensorboard", "subdir": "tb"}]}
    crossframe.run(cfg, quiet=True)
    crossframe.run({**cfg, "train": {**cfg["train"], "steps": 20}}, resume="runs/tb2", quiet=True)
    acc = accumulator(workdir / "runs" / "tb2" / "tb")
    assert acc.Tags()["histograms"] == []
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10, 15, 20]


def test_flat_hparams_keeps_leaves() -> None:
    assert flat_hparams({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x"}) == {"a.b": 1, "a.d": "[1, 2]", "e": "x"}
