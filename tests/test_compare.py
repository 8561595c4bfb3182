"""``crossframe compare``: one tiny digits MLP on torch, jax and tensorflow (plus a backend that
does not exist), each in its own subprocess; every output checked from one shared comparison."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from crossframe.cli.main import main
from crossframe.compare import measure
from crossframe.compare.schema import RESULTS_SCHEMA, SchemaError, check, validate_results

BACKENDS = ["torch", "jax", "tensorflow"]
STEPS = 30
LOG_EVERY = 5
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TINY = {
    "name": "compare-tiny",
    "seed": 0,
    "device": "cpu",
    "precision": "fp32",
    "data": {"name": "digits", "val_fraction": 0.2},
    "model": {"name": "mlp", "hidden": [32]},
    "train": {"steps": 100, "batch_size": 32, "log_every": LOG_EVERY, "eval_every": 0, "checkpoint_every": 0,
              "optimizer": {"name": "adamw", "lr": 0.003}},
}


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One comparison through the CLI: three real backends and one that does not exist."""
    root = tmp_path_factory.mktemp("compare")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = root / "out"
    code = main(["compare", str(config), "--backends", ",".join([*BACKENDS, "nosuch"]), "--out", str(out),
                 "--steps", str(STEPS), "--set", "model.activation=tanh"])
    directory = out / "compare"
    return {"code": code, "dir": directory, "results": json.loads((directory / "results.json").read_text())}


def _row(results: dict[str, Any], backend: str) -> dict[str, Any]:
    return next(r for r in results["results"] if r["backend"] == backend)


def test_writes_every_output_and_validates(compared: dict[str, Any]) -> None:
    assert compared["code"] == 0
    results, directory = compared["results"], compared["dir"]
    validate_results(results)  # jsonschema (installed here)
    check(results)  # and the fallback checker agrees
    for name in ("report.md", "report.html", "results.json"):
        assert (directory / name).stat().st_size > 0
    assert results["backends"] == [*BACKENDS, "nosuch"]
    assert results["config"]["train"]["steps"] == STEPS
    assert results["config"]["model"]["activation"] == "tanh"


def test_plots_are_png_and_embedded(compared: dict[str, Any]) -> None:
    directory, files = compared["dir"], compared["results"]["files"]
    pngs = [files[k] for k in ("loss_png", "throughput_png", "memory_png")]
    html = (directory / "report.html").read_text()
    for name in pngs:
        data = (directory / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        assert len(data) > 5000
    assert html.count("data:image/png;base64,") == len(pngs)
    assert "<img" in html and "src='loss.png'" not in html  # self-contained
    md = (directory / "report.md").read_text()
    assert "| backend |" in md and "![loss_png](loss.png)" in md


def test_every_backend_trained_with_figures(compared: dict[str, Any]) -> None:
    for backend in BACKENDS:
        row = _row(compared["results"], backend)
        assert row["status"] == "ok", row["error"]
        assert row["steps"] == STEPS
        assert [s for s, _ in row["loss_curve"]] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
        assert row["throughput"]["samples_per_sec"] > 0
        assert row["throughput"]["windows"] == STEPS // LOG_EVERY - 1  # the first window is warm-up
        assert row["first_step_s"] is not None and row["first_step_s"] >= 0
        assert row["memory"]["peak_host_mb"] > 50  # a process with a framework imported
        assert row["memory"]["peak_device_mb"] is None  # CPU only
        assert 0.0 <= row["eval"]["val/accuracy"] <= 1.0 and row["eval"]["val/loss"] > 0
        assert row["timings"]["run_wall_s"] > 0 and row["timings"]["child_wall_s"] > row["timings"]["run_wall_s"]
        assert Path(row["run_dir"], "metrics.jsonl").is_file()


def test_initial_parity_fp32(compared: dict[str, Any]) -> None:
    for backend in BACKENDS:
        parity = _row(compared["results"], backend)["parity"]
        assert parity["samples"] > 0 and parity["reference_max_abs"] > 0
        assert parity["max_abs_diff"] < 1e-5, (backend, parity)


def test_loss_curves_agree_across_backends(compared: dict[str, Any]) -> None:
    pairs = compared["results"]["loss_divergence"]
    assert {(p["a"], p["b"]) for p in pairs} == {("jax", "tensorflow"), ("jax", "torch"), ("tensorflow", "torch")}
    for pair in pairs:
        assert pair["common_steps"] == STEPS // LOG_EVERY
        assert pair["max_abs_diff"] < 1e-3, pair  # same weights, same batches, fp32


def test_missing_backend_is_a_row_not_a_crash(compared: dict[str, Any]) -> None:
    row = _row(compared["results"], "nosuch")
    assert row["status"] == "unavailable"
    assert "nosuch" in row["error"] and "\n" not in row["error"]
    assert row["loss_curve"] == [] and row["memory"]["peak_host_mb"] is None
    assert "nosuch" in (compared["dir"] / "report.md").read_text().split("## Failures")[1]


def test_overhead_is_reported_apart_from_the_runs(compared: dict[str, Any]) -> None:
    o = compared["results"]["overhead"]
    runs = sum(_row(compared["results"], b)["timings"]["run_wall_s"] for b in BACKENDS)
    assert o["backends_s"] == pytest.approx(runs)
    assert o["total_s"] == pytest.approx(o["backends_s"] + o["overhead_s"])
    assert set(o["per_backend"]) == {*BACKENDS, "nosuch"} and all(v >= 0 for v in o["per_backend"].values())


def test_python_api_with_a_plugin_disabled_in_the_child(tmp_path: Path) -> None:
    import crossframe

    results = crossframe.compare(TINY, backends=["jax"], out=tmp_path, steps=5,
                                 env={"CROSSFRAME_DISABLE_PLUGINS": "jax"})
    row = results["results"][0]
    assert row["status"] == "unavailable" and "jax" in row["error"]
    assert results["loss_divergence"] == []
    assert json.loads((tmp_path / "compare" / "results.json").read_text()) == results


@pytest.mark.parametrize("args", [
    ["--backends", " , "],
    ["--steps", "0"],
    ["--set", "train.nosuchkey=1"],
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["compare", str(config), "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_missing_config_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and len(err.strip().splitlines()) == 1


def test_schema_rejects_broken_results(compared: dict[str, Any]) -> None:
    broken = copy.deepcopy(compared["results"])
    broken["results"][0]["status"] = "great"
    with pytest.raises(SchemaError, match="status"):
        validate_results(broken)
    with pytest.raises(SchemaError, match="status"):
        check(broken)
    del broken["results"][0]["parity"]
    broken["results"][0]["status"] = "ok"
    with pytest.raises(SchemaError, match="parity"):
        check(broken, RESULTS_SCHEMA)


# ---------------------------------------------------------------------- measure, without subprocesses

curves = st.lists(st.tuples(st.integers(1, 50), st.floats(0, 10, allow_nan=False)), min_size=1, max_size=20)


@given(curves, curves)
def test_loss_divergence_is_symmetric_and_exact(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> None:
    ca = [[s, v] for s, v in dict(a).items()]
    cb = [[s, v] for s, v in dict(b).items()]
    pair = measure.loss_divergence({"x": ca, "y": cb})[0]
    swapped = measure.loss_divergence({"x": cb, "y": ca})[0]
    common = set(dict(a)) & set(dict(b))
    assert pair["common_steps"] == len(common)
    if common:
        assert pair["max_abs_diff"] == max(abs(dict(a)[s] - dict(b)[s]) for s in common)
        assert swapped["max_abs_diff"] == pair["max_abs_diff"]
    else:
        assert pair["max_abs_diff"] is None
    assert measure.loss_divergence({"x": ca, "y": ca})[0]["max_abs_diff"] in (0.0, None)


@given(st.floats(0.0, 5.0), st.floats(0.001, 0.1), st.integers(2, 6), st.integers(2, 50))
def test_first_step_and_throughput_from_windows(first: float, step_s: float, windows: int, log_every: int) -> None:
    records = []
    for i in range(1, windows + 1):
        seconds = first + (log_every - 1) * step_s if i == 1 else log_every * step_s
        sps = log_every / seconds
        records.append({"step": i * log_every, "train/loss": 1.0, "train/steps_per_sec": sps,
                        "train/samples_per_sec": 8 * sps})
    assert measure.first_step_s(records) == pytest.approx(first, abs=1e-9)
    tp = measure.throughput(records)
    assert tp["windows"] == windows - 1 and not tp["includes_warmup"]
    assert tp["samples_per_sec"] == pytest.approx(8 / step_s)


def test_export_figures_tolerate_partial_reports(tmp_path: Path) -> None:
    assert measure.export_figures(tmp_path) == []
    (tmp_path / "report.json").write_text(json.dumps({"steps": [
        {"kind": "compress", "name": "prune", "format": "safetensors", "size_bytes": 100},
        {"kind": "export", "format": "onnx", "size_bytes": 2048, "latency": {"p50_ms": 0.5, "p99_us": 900},
         "metric": "accuracy", "metric_after": 0.9},
        {"kind": "export", "format": "saved-model", "status": "failed", "error": "boom\ntrace"},
    ]}))
    got = measure.export_figures(tmp_path)
    assert [e["format"] for e in got] == ["onnx", "saved-model"]
    assert got[0]["size_bytes"] == 2048 and got[0]["latency_p50_ms"] == 0.5 and got[0]["metric_after"] == 0.9
    assert math.isclose(got[0]["latency_p99_ms"], 0.9)
    assert got[1]["size_bytes"] is None and got[1]["error"] == "boom"


def test_export_figures_from_the_real_pipeline(tmp_path: Path) -> None:
    import crossframe

    config = {**TINY, "export": [{"name": "onnx"}]}
    results = crossframe.compare(config, backends=["torch"], out=tmp_path, steps=10)
    validate_results(results)
    row = results["results"][0]
    assert row["status"] == "ok", row["error"]
    (onnx,) = row["export"]
    assert onnx["format"] == "onnx" and onnx["size_bytes"] > 1000
    assert 0 < onnx["latency_p50_ms"] <= onnx["latency_p99_ms"]
    assert onnx["metric_after"] == pytest.approx(row["eval"]["val/accuracy"], abs=0.02)
    md = (tmp_path / "compare" / "report.md").read_text()
    assert "## Export" in md and re.search(r"\| torch \| onnx \| onnx \| [\d,.]+ \| onnxruntime \|", md)
