"""What the report measures: sparsity, sizes, output agreement, numpy-side metrics and latency."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: the headline metric of a task, as named in evaluation results
HEADLINE = {"classification": "val/accuracy", "language_modeling": "val/perplexity", "regression": "val/rmse"}


def headline(task: str, metrics: Mapping[str, Any]) -> tuple[str, float | None]:
    """The task's headline metric name (without ``val/``) and value; ``loss`` when it is missing."""
    key = HEADLINE.get(task, "val/loss")
    if key not in metrics:
        key = "val/loss"
    value = metrics.get(key)
    return key.split("/", 1)[1], None if value is None else float(value)


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a metrics dict, as floats (matrices dropped)."""
    out = {}
    for key, value in metrics.items():
        if np.ndim(value) == 0:
            try:
                out[key] = float(value)
            except (TypeError, ValueError):
                continue
    return out


def sparsity(weights: Mapping[str, np.ndarray]) -> float:
    """Fraction of exactly-zero values over all floating-point parameters."""
    floats = [w for w in weights.values() if np.issubdtype(np.asarray(w).dtype, np.floating)]
    total = sum(w.size for w in floats)
    return float(sum(int(np.count_nonzero(w == 0)) for w in floats) / max(total, 1))


def masked_sparsity(masks: Mapping[str, np.ndarray]) -> float | None:
    """Fraction pruned (0) over the masked tensors, or ``None`` without masks."""
    if not masks:
        return None
    total = sum(m.size for m in masks.values())
    kept = sum(float(np.sum(m != 0)) for m in masks.values())
    return float(1.0 - kept / max(total, 1))


def nonzero_params(weights: Mapping[str, np.ndarray]) -> int:
    """Parameters that are not exactly zero."""
    return int(sum(np.count_nonzero(w) for w in weights.values()))


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of all files under a directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def output_diff(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """``(max |got - ref|, that / max |ref|)``: the largest error, absolute and relative to the output scale."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("inf"), float("inf")
    err = float(np.max(np.abs(got - ref))) if got.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return err, err / max(scale, 1e-12)


def evaluate_predictions(predict: Callable[[np.ndarray], np.ndarray], batches: Iterable[Mapping[str, np.ndarray]],
                         task: str) -> dict[str, float]:
    """``val/loss`` and the headline metric of ``predict`` (numpy in, numpy outputs) over ``batches``.

    Used for artefacts that only predict (ONNX, TFLite): accuracy for classifiers, perplexity
    over counted tokens for language models, rmse for regression.
    """
    loss_sum = count = correct = 0.0
    sq = 0.0
    for batch in batches:
        out = np.asarray(predict(batch["x"]), np.float64)
        y = np.asarray(batch["y"])
        if task == "regression":
            diff = out.reshape(y.shape) - y
            sq += float(np.sum(diff ** 2))
            loss_sum += float(np.sum(diff ** 2))
            count += y.size
            continue
        logp = out - out.max(axis=-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=-1, keepdims=True))
        nll = -np.take_along_axis(logp, y[..., None].astype(np.int64), axis=-1)[..., 0]
        weight = np.asarray(batch["mask"], np.float64) if "mask" in batch else np.ones_like(nll)
        loss_sum += float(np.sum(nll * weight))
        count += float(np.sum(weight))
        if task == "classification":
            correct += float(np.sum(out.argmax(axis=-1) == y))
    mean = loss_sum / max(count, 1.0)
    metrics = {"val/loss": mean}
    if task == "classification":
        metrics["val/accuracy"] = correct / max(count, 1.0)
    elif task == "language_modeling":
        metrics["val/perplexity"] = float(np.exp(min(mean, 700.0)))
    else:
        metrics["val/rmse"] = float(np.sqrt(sq / max(count, 1.0)))
    return metrics


def latency(fn: Callable[[np.ndarray], Any], x: np.ndarray, budget_s: float = 0.5, min_runs: int = 20,
            max_runs: int = 2000, warmup: int = 5) -> dict[str, float]:
    """Per-call latency of ``fn(x)``: p50 and p99 in ms and throughput in examples/s (at p50).

    Runs ``warmup`` calls first, then at least ``min_runs`` timed calls and more until
    ``budget_s`` seconds are spent (at most ``max_runs``).
    """
    for _ in range(warmup):
        fn(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < max_runs):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    arr = np.asarray(times) * 1000.0
    p50 = float(np.percentile(arr, 50))
    return {"batch": len(x), "p50_ms": p50, "p99_ms": float(np.percentile(arr, 99)),
            "throughput": float(len(x) / (p50 / 1000.0)) if p50 > 0 else float("inf"), "runs": len(times)}
