"""``torch-int8``: torchao int8 of the torch module, saved as a pickle-free .pt2, reloaded and checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("torchao")

from crossframe.errors import ExportError


def _run(out: Path, model: str) -> Path:
    import crossframe

    if model == "mlp":
        cfg: dict[str, Any] = {
            "name": "mlp", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [256, 128]},
            "train": {"steps": 40, "batch_size": 32, "log_every": 20, "eval_every": 0, "checkpoint_every": 0,
                      "optimizer": {"name": "adamw", "lr": 0.005}}}
    else:
        cfg = {
            "name": "gpt", "data": {"name": "python-stdlib", "max_files": 16, "val_fraction": 0.25},
            "text": {"tokenizer": {"name": "bytes"}, "seq_len": 32, "max_eval_tokens": 2048},
            "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "d_model": 64, "max_seq_len": 32, "dropout": 0.0},
            "train": {"steps": 10, "batch_size": 8, "log_every": 5, "eval_every": 0, "checkpoint_every": 0,
                      "eval_batch_size": 8, "optimizer": {"name": "adamw", "lr": 0.003}}}
    cfg |= {"backend": "torch", "device": "cpu", "seed": 0, "output_dir": str(out)}
    return crossframe.run(cfg, quiet=True).run_dir


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits MLP [256, 128] trained briefly on torch."""
    return _run(tmp_path_factory.mktemp("mlp"), "mlp")


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer d_model-64 GPT trained briefly on torch (byte tokens)."""
    return _run(tmp_path_factory.mktemp("gpt"), "gpt")


def _fp32(run_dir: Path, x: np.ndarray) -> np.ndarray:
    """The fp32 torch model's outputs on ``x`` (the run's checkpoint through the backend's inference state)."""
    from crossframe.checkpoint import load_checkpoint
    from crossframe.compress.pipeline import Pipeline, _run_config

    pipeline = Pipeline(_run_config(run_dir, [], None), run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoints")
    stage = pipeline.start(checkpoint)
    return pipeline._native_predictor(stage)(x)


def _fresh_process_outputs(path: str, dtype: str, x: np.ndarray, tmp: Path) -> np.ndarray:
    """Outputs of the .pt2 at ``path`` on ``x``, loaded in a new Python process."""
    np.save(tmp / "x.npy", x)
    code = ("import sys, numpy as np; from crossframe_torch.quantize import load_int8; "
            f"run = load_int8(sys.argv[1], '{dtype}'); np.save(sys.argv[3], run(np.load(sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", code, path, str(tmp / "x.npy"), str(tmp / "y.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(tmp / "y.npy")


def _fp32_bytes(run_dir: Path) -> int:
    """Bytes of the run's fp32 checkpoint weights (the report's baseline)."""
    return int(json.loads((run_dir / "report.json").read_text())["baseline"]["size_bytes"])


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def test_mlp_through_the_cli_reloads_in_a_fresh_process(mlp_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from crossframe.cli.main import main

    code = main(["export", str(mlp_run), "--format", "torch-int8"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "torch-int8: " in out and "model.int8.pt2" in out
    entry = next(s for s in json.loads((mlp_run / "report.json").read_text())["steps"] if s["name"] == "torch-int8")
    assert entry["format"] == "torch-int8" and entry["path"].endswith("model.int8.pt2")
    assert entry["verify"]["passed"] and entry["verify"]["max_rel_diff"] <= entry["verify"]["tolerance"] == 0.1
    assert entry["extra"]["pickle_free"] and entry["extra"]["int8_tensors"] >= 3  # the three Linear weights
    assert entry["size_bytes"] < _fp32_bytes(mlp_run)
    assert abs(entry["metric_after"] - entry["metric_before"]) <= 0.03
    lat = entry["latency"]
    assert lat["native"]["batch_1"]["p50_ms"] > 0 and lat["runtime"]["batch_1"]["p50_ms"] > 0
    # a batch size never traced (7), loaded in another process, against the fp32 model
    x = np.random.default_rng(1).normal(size=(7, 8, 8, 1)).astype(np.float32)
    x = np.abs(x) * 4  # digits pixels are >= 0
    got = _fresh_process_outputs(entry["path"], "float32", x, tmp_path)
    assert got.shape == (7, 10)
    assert _rel(got, _fp32(mlp_run, x)) <= 0.1


@pytest.fixture(scope="module")
def gpt_entry(gpt_run: Path) -> dict[str, Any]:
    """The report entry of the GPT's torch-int8 export (no latency measurement)."""
    from crossframe.compress.pipeline import Options, export_run

    _report, (entry,) = export_run(gpt_run, ["torch-int8"], options=Options(latency=False))
    return entry


def test_gpt_other_batch_and_sequence_sizes_from_disk(gpt_run: Path, gpt_entry: dict[str, Any],
                                                      tmp_path: Path) -> None:
    entry = gpt_entry
    assert entry["verify"]["passed"] and entry["verify"]["examples"] > 0
    traced = entry["extra"]["traced_shape"]
    assert all(c["shape"] != traced and c["max_rel_diff"] <= 0.1 for c in entry["extra"]["reload_check"])
    assert entry["size_bytes"] < _fp32_bytes(gpt_run)
    assert entry["metric"] == "perplexity" and entry["metric_after"] <= entry["metric_before"] * 1.05
    x = np.random.default_rng(2).integers(0, 256, size=(3, 11)).astype(np.int64)  # neither traced size
    got = _fresh_process_outputs(entry["path"], "int64", x, tmp_path)
    ref = _fp32(gpt_run, x)
    assert got.shape == ref.shape and got.shape[:2] == (3, 11)
    assert _rel(got, ref) <= 0.1


def test_another_backend_is_a_one_line_error(mlp_run: Path) -> None:
    pytest.importorskip("jax")
    from crossframe.compress.pipeline import Options, export_run

    with pytest.raises(ExportError) as err:
        export_run(mlp_run, ["torch-int8"], backend="jax", options=Options(latency=False))
    message = str(err.value)
    assert "torch-int8" in message and "'jax'" in message and "--backend torch" in message and "\n" not in message


def test_an_archive_holding_pickled_subclass_tensors_is_refused(tmp_path: Path) -> None:
    """Without unwrapping, torch.export.save pickles torchao's tensor subclass: check_archive says so."""
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from crossframe_torch.quantize import check_archive

    module = torch.nn.Sequential(torch.nn.Linear(16, 8)).eval()
    quantize_(module, Int8WeightOnlyConfig())
    path = tmp_path / "pickled.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(2, 16),)), str(path))
    with pytest.raises(ExportError, match="through pickle"):
        check_archive(path)


@pytest.fixture(scope="module")
def gpt_pair(gpt_run: Path, gpt_entry: dict[str, Any]) -> tuple[Any, Any]:
    """(the reloaded int8 program, the fp32 torch model), both numpy in and out."""
    from crossframe.checkpoint import load_checkpoint
    from crossframe.compress.pipeline import Pipeline, _run_config
    from crossframe_torch.quantize import load_int8

    pipeline = Pipeline(_run_config(gpt_run, [], None), gpt_run)
    stage = pipeline.start(load_checkpoint(gpt_run / "checkpoints"))
    return load_int8(Path(gpt_entry["path"]), "int64"), pipeline._native_predictor(stage)


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 5), length=st.integers(1, 32), seed=st.integers(0, 2**16))
def test_int8_gpt_tracks_fp32_at_any_batch_and_length(gpt_pair: tuple[Any, Any], batch: int, length: int,
                                                      seed: int) -> None:
    int8, fp32 = gpt_pair
    x = np.random.default_rng(seed).integers(0, 256, size=(batch, length)).astype(np.int64)
    got, ref = int8(x), fp32(x)
    assert got.shape == ref.shape == (batch, length, ref.shape[-1])
    assert _rel(got, ref) <= 0.1
