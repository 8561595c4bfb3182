"""The compress/export pipeline: after training, on an existing run, across backends, and its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from crossframe import hookimpl
from crossframe.compress.base import CompressContext, CompressResult

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

REPORT_FIELDS = ("index", "kind", "name", "backend", "format", "size_bytes", "sparsity", "param_count", "metric",
                 "metric_before", "metric_after", "verify", "latency")


def _config(out: Path) -> dict[str, Any]:
    return {
        "name": "tiny", "backend": "torch", "device": "cpu", "seed": 0, "output_dir": str(out),
        "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [32]},
        "train": {"steps": 80, "batch_size": 32, "log_every": 40, "eval_every": 0, "checkpoint_every": 0,
                  "optimizer": {"name": "adamw", "lr": 0.01}},
        "compress": [{"name": "prune", "sparsity": 0.5, "finetune_steps": 15, "finetune_lr": 0.002},
                     {"name": "quantize", "bits": 8}],
        "export": [{"name": "onnx"}, {"name": "onnx-int8-dynamic"}],
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch-trained digits MLP, compressed and exported by the pipeline right after training."""
    import crossframe
    from crossframe import plugins

    plugins._manager = None
    result = crossframe.run(_config(tmp_path_factory.mktemp("runs")), quiet=True)
    plugins._manager = None
    return result.run_dir


def _report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())


def test_report_has_every_step_with_its_figures(trained: Path) -> None:
    report = _report(trained)
    assert (trained / "report.md").read_text().startswith("# Compression and export report")
    steps = report["steps"]
    assert [(s["kind"], s["name"]) for s in steps] == [("compress", "prune"), ("compress", "quantize"),
                                                       ("export", "onnx"), ("export", "onnx-int8-dynamic")]
    for step in steps:
        assert all(key in step for key in REPORT_FIELDS), step.keys()
        assert step["backend"] == "torch" and step["metric"] == "accuracy"
        assert 0.5 < step["metric_after"] <= 1.0
        assert step["size_bytes"] > 0
    base = report["baseline"]
    assert base["param_count"] == steps[0]["param_count"] == 64 * 32 + 32 + 32 * 10 + 10
    assert steps[0]["metric_before"] == pytest.approx(base["metric_after"])
    assert steps[1]["metric_before"] == pytest.approx(steps[0]["metric_after"])  # each step starts where the last ended
    assert steps[0]["finetune"]["steps"] == 15
    onnx, int8 = steps[2], steps[3]
    assert onnx["verify"]["max_rel_diff"] < 1e-4  # float export: the same model
    assert 0 < int8["verify"]["max_rel_diff"] <= int8["verify"]["tolerance"]
    assert int8["size_bytes"] < onnx["size_bytes"]
    for entry in (onnx, int8):
        lat = entry["latency"]
        assert set(lat["runtime"]) == set(lat["native"]) == {"batch_1", "batch_64"}
        assert all(v["p50_ms"] > 0 and v["p99_ms"] >= v["p50_ms"] and v["throughput"] > 0
                   for side in ("runtime", "native") for v in lat[side].values())
        assert entry["latency_p50_ms"] == lat["runtime"]["batch_1"]["p50_ms"]


def test_sparsity_is_exact_after_finetuning(trained: Path) -> None:
    from safetensors.numpy import load_file

    pruned = trained / "compressed" / "1-prune"
    weights, masks = load_file(str(pruned / "model.safetensors")), load_file(str(pruned / "masks.safetensors"))
    assert masks and set(masks) <= set(weights)
    for name, mask in masks.items():
        assert np.all(weights[name][mask == 0] == 0), name  # fine-tuning kept pruned weights at zero
        assert np.all(weights[name][mask != 0] != 0)
        assert (mask == 0).sum() == mask.size // 2  # exactly half of each (even-sized) kernel
    trained_w = load_file(str(next((trained / "checkpoints").glob("step_*")) / "model.safetensors"))
    moved = [n for n in masks if not np.allclose(weights[n][masks[n] != 0], trained_w[n][masks[n] != 0])]
    assert moved  # the kept weights were trained further
    step = _report(trained)["steps"][0]
    assert step["masked_sparsity"] == pytest.approx(1 - sum(m.sum() for m in masks.values()) /
                                                    sum(m.size for m in masks.values()))


def test_quantised_checkpoint_reloads_and_evaluates(trained: Path) -> None:
    from crossframe.train.evaluate import evaluate

    quant = trained / "compressed" / "2-quantize"
    assert (quant / "quantized.safetensors").stat().st_size < (quant / "model.safetensors").stat().st_size
    saved = yaml.safe_load((quant / "config.yaml").read_text())
    assert [c["name"] for c in saved["compress"]] == ["prune", "quantize"]
    metrics = evaluate(quant)
    assert metrics["val/accuracy"] == pytest.approx(_report(trained)["steps"][1]["metric_after"], abs=1e-6)


def test_tflite_int8_through_tensorflow_from_a_torch_run(trained: Path) -> None:
    pytest.importorskip("tensorflow")
    from crossframe.compress.pipeline import Options, export_run

    report, (entry,) = export_run(trained, ["tflite-int8"], backend="tensorflow", options=Options(latency=False))
    assert entry["format"] == "tflite" and entry["backend"] == "tensorflow"
    assert entry["path"].endswith(".tflite") and Path(entry["path"]).is_file()
    assert entry["verify"]["passed"] and entry["verify"]["max_rel_diff"] <= entry["verify"]["tolerance"]
    assert entry["source"] == report.data["final"]  # the last compressed step is what gets exported
    assert entry["metric_after"] == pytest.approx(entry["metric_before"], abs=0.05)

def test_compress_on_another_backend_from_the_cli(trained: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("jax")
    from crossframe.cli.main import main

    code = main(["compress", str(trained), "--backend", "jax", "--no-export", "-q",
                 "--set", "compress.0.finetune_steps=5"])
    out = capsys.readouterr().out
    assert code == 0, out
    steps = _report(trained)["steps"]
    assert [(s["name"], s["backend"]) for s in steps if s["kind"] == "compress"] == [("prune", "jax"),
                                                                                      ("quantize", "jax")]
    assert "prune" in out and "jax" in out
    assert 0.5 < steps[-1]["metric_after"] <= 1.0


def test_bad_compressor_name_is_one_line(trained: Path, capsys: pytest.CaptureFixture) -> None:
    from crossframe.cli.main import main

    code = main(["compress", str(trained), "--set", "compress.0.name=prnue"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err and "compress.0.name" in err and "prnue" in err and "prune" in err
    assert main(["export", str(trained), "--format", "onnx-int9"]) == 2
    assert "onnx-int8-dynamic" in capsys.readouterr().err


def test_a_compressor_error_names_its_place_in_the_list(trained: Path, capsys: pytest.CaptureFixture) -> None:
    from crossframe.cli.main import main

    code = main(["compress", str(trained), "--set", "compress=[{name: quantize, bits: 8}, "
                                                    "{name: prune, sparsity: 0.5, include: ['nosuch.*']}]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith("error: compress.1: ") and "nosuch" in err, err


class _HalfParams(BaseModel):
    scale: float = 0.5


class _Halve:
    """A third-party compressor: scales every weight (a real change the report must show)."""

    name = "halve-test"

    def __init__(self, params: _HalfParams) -> None:
        self.scale = params.scale

    def apply(self, context: CompressContext) -> CompressResult:
        weights = {k: (v * self.scale).astype(v.dtype) for k, v in context.weights.items()}
        return CompressResult(weights, summary={"scale": self.scale, "masks_in": len(context.masks)})


class _Plugin:
    @hookimpl
    def register_compressors(self, register: Any) -> None:
        register("halve-test", _Halve, schema=_HalfParams, description="test-only")


def test_third_party_compressor_through_the_hook(trained: Path, tmp_path: Path) -> None:
    from crossframe.compress.pipeline import compress_run
    from crossframe.plugins import get_plugin_manager

    get_plugin_manager().register(_Plugin(), "halve-test-plugin")
    steps = tmp_path / "steps.yaml"
    steps.write_text(yaml.safe_dump({"compress": [{"name": "prune", "sparsity": 0.25},
                                                  {"name": "halve-test", "scale": 0.0}]}))
    report, added = compress_run(trained, config=steps)
    assert added == 2
    halve = report.steps[-1]
    assert halve["summary"]["scale"] == 0.0 and halve["summary"]["masks_in"] >= 1  # the prune masks reached it
    assert halve["sparsity"] == 1.0 and halve["nonzero_params"] == 0
    assert halve["metric_after"] < report.steps[-2]["metric_after"]



@settings(max_examples=25)
@given(st.integers(1, 40), st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_numpy_metrics_match_their_definitions(n: int, classes: int, seed: int) -> None:
    from crossframe.compress.measure import evaluate_predictions, masked_sparsity, sparsity

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    y = rng.integers(0, classes, n)
    got = evaluate_predictions(lambda x: x, [{"x": logits[: n // 2], "y": y[: n // 2]},
                                             {"x": logits[n // 2:], "y": y[n // 2:]}], "classification")
    assert got["val/accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert got["val/loss"] == pytest.approx(-np.mean(logp[np.arange(n), y]), rel=1e-5)
    mask = (rng.random((n, classes)) < 0.5).astype(np.float32)
    w = {"a": logits * mask, "b": np.ones(3, np.float32)}
    assert sparsity(w) == pytest.approx(np.sum(mask == 0) / (mask.size + 3))
    assert masked_sparsity({"a": mask}) == pytest.approx(np.mean(mask == 0))
