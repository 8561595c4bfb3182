"""Deployment int8: ONNX Runtime int8 and torchao int8 against the native eager float32 torch model, on CPU.

Two models, each trained here with ``crossframe.run`` on the torch backend and then exported by
the compress/export pipeline (``crossframe.compress.pipeline.export_run``), exactly as
``crossframe export RUN_DIR --format onnx-int8-dynamic --format onnx-int8-static --format torch-int8`` does
(``torch-int8``: torchao int8 weight-only of the torch module, a ``torch.export`` .pt2 run by torch):

- the digits MLP (64 -> 256 -> 128 -> 10, scikit-learn's 8x8 digits);
- a small GPT (4 layers, d_model 128, byte tokens, sequence 128) on Python standard-library source.

What is measured, per int8 method (dynamic, static), in one process with one intra-op thread on
both sides (``torch.set_num_threads(1)``, ONNX Runtime ``intra_op_num_threads=1``):

size ratio
    bytes of the trained float32 checkpoint (``model.safetensors``, the canonical weights) over the
    bytes of the int8 file (``.onnx``; ``.pt2`` for torch-int8). Goal: at least 3.5x smaller.
latency ratio (batch 1)
    the median (p50) latency of the torch eager model's ``predict`` (the backend's own inference
    path: numpy in, numpy out) over the p50 of the ONNX Runtime int8 session, at batch 1 (one
    example, or one 128-token sequence). Goal: at least 2x faster. Batch 64 (MLP) / 8 (GPT) too.
accuracy / perplexity cost
    the validation accuracy (MLP) or perplexity (GPT) of the int8 model against the float32 one,
    on the same validation data.

Timings are medians over a fixed time budget after warm-up; nothing is asserted. Run it alone with
``python -m benchmarks --only export_int8 [--quick]``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, pick, smoke

TITLE = "Deployment int8: ONNX Runtime / torchao int8 vs native eager fp32 torch (CPU, 1 thread)"

SEED = 0
METHODS = ("onnx-int8-dynamic", "onnx-int8-static", "torch-int8")


def mlp_config(output_dir: Path, quick: bool) -> dict[str, Any]:
    """The digits MLP run."""
    return {
        "name": "int8-mlp", "backend": "torch", "device": "cpu", "seed": SEED, "output_dir": str(output_dir),
        "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [256, 128]},
        "train": {"steps": pick(600, 150, 30, quick), "batch_size": 64, "log_every": 50, "eval_every": 0,
                  "checkpoint_every": 0, "optimizer": {"name": "adamw", "lr": 0.003}},
    }


def gpt_config(output_dir: Path, quick: bool) -> dict[str, Any]:
    """The stdlib GPT run (byte tokens, so the vocabulary is 256 and nothing is downloaded); a toy one in smoke mode."""
    width = {"n_layer": 1, "n_head": 2, "d_model": 32} if quick and smoke() else {"n_layer": 4, "n_head": 4,
                                                                                   "d_model": 128}
    return {
        "name": "int8-gpt", "backend": "torch", "device": "cpu", "seed": SEED, "output_dir": str(output_dir),
        "data": {"name": "python-stdlib", "max_files": pick(100, 40, 16, quick),
                 "val_fraction": 0.25 if quick and smoke() else 0.05},
        "text": {"tokenizer": {"name": "bytes"}, "seq_len": 128, "max_eval_tokens": pick(32768, 8192, 1024, quick)},
        "model": {"name": "gpt", **width, "max_seq_len": 128, "dropout": 0.0},
        "train": {"steps": pick(200, 30, 5, quick), "batch_size": 16, "clip_norm": 1.0, "log_every": 20,
                  "eval_every": 0, "checkpoint_every": 0, "eval_batch_size": 16,
                  "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.1, "betas": [0.9, 0.95]},
                  "schedule": {"name": "cosine", "warmup_steps": 20}},
    }


def measure(name: str, config: dict[str, Any], quick: bool, log: Callable[[str], None],
            threads: int = 1) -> list[dict[str, Any]]:
    """Train ``config``, export it in every int8 method; one row per method."""
    import crossframe
    from crossframe.compress.pipeline import Options, export_run

    log(f"{name}: training ({config['train']['steps']} steps)")
    result = crossframe.run(config, quiet=True)
    fp32_bytes = (result.checkpoint / "model.safetensors").stat().st_size if result.checkpoint else None
    options = Options(quiet=True, threads=threads, latency_budget_s=(0.1 if smoke() else 0.5) if quick else 2.0)
    log(f"{name}: exporting {', '.join(METHODS)}")
    from crossframe.errors import ExportError

    _report, (fp32_onnx,) = export_run(result.run_dir, ["onnx"], options=options)
    rows = []
    for method in METHODS:
        try:
            _report, (entry,) = export_run(result.run_dir, [method], options=options)
        except ExportError as exc:  # e.g. over its tolerance: a result, reported as such
            log(f"{name}: {method} failed: {exc}")
            rows.append({"model": name, "method": method, "error": str(exc)})
            continue
        lat = entry["latency"]
        big = next(k for k in lat["runtime"] if k != "batch_1")
        rt1, nat1 = lat["runtime"]["batch_1"], lat["native"]["batch_1"]
        rtb, natb = lat["runtime"][big], lat["native"][big]
        rows.append({
            "model": name, "method": entry["name"], "metric": entry["metric"],
            "fp32_bytes": fp32_bytes, "fp32_onnx_bytes": fp32_onnx["size_bytes"], "int8_bytes": entry["size_bytes"],
            "size_ratio": fp32_bytes / entry["size_bytes"] if fp32_bytes else None,
            "native_p50_ms_b1": nat1["p50_ms"], "int8_p50_ms_b1": rt1["p50_ms"],
            "native_p99_ms_b1": nat1["p99_ms"], "int8_p99_ms_b1": rt1["p99_ms"],
            "latency_ratio_b1": nat1["p50_ms"] / rt1["p50_ms"],
            "fp32_onnx_p50_ms_b1": fp32_onnx["latency"]["runtime"]["batch_1"]["p50_ms"],
            "big_batch": rtb["batch"], "native_throughput_big": natb["throughput"],
            "int8_throughput_big": rtb["throughput"], "throughput_ratio_big": rtb["throughput"] / natb["throughput"],
            "fp32_metric": entry["metric_before"], "int8_metric": entry["metric_after"],
            "max_rel_diff": entry["verify"]["max_rel_diff"], "tolerance": entry["verify"]["tolerance"],
        })
    return rows


def run(quick: bool = False, log: Callable[[str], None] = print, threads: int = 1) -> list[dict[str, Any]]:
    """Train and measure both models; one row per (model, int8 method). ``threads``: intra-op threads, both sides."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="crossframe-int8-"))
    try:
        rows = measure("digits MLP", mlp_config(tmp, quick), quick, log, threads)
        rows += measure("stdlib GPT", gpt_config(tmp, quick), quick, log, threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`run`'s rows."""
    headers = ["model", "int8 method", "fp32 / int8 size", "native fp32 p50 ms (b=1)", "int8 p50 ms (b=1)",
               "latency ratio b=1", "throughput ratio (big batch)", "metric fp32 -> int8", "max rel diff (tol)"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["model"], r["method"], f"failed: {r['error']}", *["-"] * (len(headers) - 3)])
            continue
        cost = f"{r['metric']} {r['fp32_metric']:.4f} -> {r['int8_metric']:.4f}"
        body.append([r["model"], r["method"], f"{r['size_ratio']:.2f}x ({r['fp32_bytes']:,} / {r['int8_bytes']:,} B)",
                     f"{r['native_p50_ms_b1']:.3f}", f"{r['int8_p50_ms_b1']:.3f}", f"{r['latency_ratio_b1']:.2f}x",
                     f"{r['throughput_ratio_big']:.2f}x (b={r['big_batch']})", cost,
                     f"{r['max_rel_diff']:.4f} ({r['tolerance']})"])
    return markdown_table(headers, body)


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    quick_mode = "--quick" in sys.argv
    result_rows = run(quick_mode, lambda text: print(text, file=sys.stderr))
    print(table(result_rows))
    print(json.dumps(result_rows, indent=2))
