"""Running an exported model against the native one, on batches shaped unlike those it was traced with.

An export that only reproduces the shape it was traced with is a trap: dynamic batch (and
sequence) axes are the point. So the batches here are built from the request's real sample with
a *different* batch size, and for token models a shorter sequence too, and the artefact's outputs
are compared with the backend's own ``predict`` on an inference state made from the same
canonical weights.

The error measure is ``max |export - native|``; it must stay within ``tolerance * max(1, max |native|)``
(absolute for outputs of order one, relative to the output scale for large logits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from crossframe.errors import ExportError
from crossframe.export.base import ExportArtifact, ExportRequest

DEFAULT_TOLERANCE = 1e-4


def is_token_model(request: ExportRequest) -> bool:
    """Whether inputs are int token ids ``[B, T]`` (language models: dynamic batch *and* sequence)."""
    return request.spec.data_info.task == "language_modeling"


def trace_example(request: ExportRequest) -> np.ndarray:
    """The batch an exporter traces with: the request's sample, with at least 2 rows (and 2 tokens).

    Tracers specialise axes of size 1, so a one-row sample is repeated to two rows (and a
    one-token sequence to two tokens, within ``max_seq_len``).
    """
    x = np.asarray(request.sample)
    if len(x) < 2:
        x = np.concatenate([x, x[::-1]])[:2] if len(x) else x
    if is_token_model(request) and x.shape[1] < 2 <= int(request.spec.params.get("max_seq_len", 2)):
        x = np.concatenate([x, x], axis=1)[:, :2]
    return np.ascontiguousarray(x, dtype=np.int64 if is_token_model(request) else np.float32)


def verification_batches(sample: np.ndarray, traced_shape: tuple[int, ...], tokens: bool) -> list[np.ndarray]:
    """Real batches from ``sample`` whose batch size (and, for tokens, length) differ from ``traced_shape``.

    Two batches: one row more than traced (rows of the sample, reordered), and a single row. For
    token models the first is one token shorter than traced and the second half as long.
    """
    sample = np.asarray(sample)
    b = traced_shape[0]
    pool = np.concatenate([sample, sample[::-1]])
    while len(pool) < b + 1:
        pool = np.concatenate([pool, pool])
    bigger = pool[1:b + 2] if len(pool) >= b + 2 else pool[: b + 1]
    single = sample[-1:] if b != 1 else pool[:3]
    if tokens:
        t = traced_shape[1]
        if t > 1:
            bigger = bigger[:, : t - 1]
            single = single[:, : max(1, t // 2)]
    return [np.ascontiguousarray(bigger), np.ascontiguousarray(single)]


def compare(exported: np.ndarray, native: np.ndarray) -> dict[str, float]:
    """``max_abs_diff`` and ``max_rel_diff`` (the former over ``max |native|``) of two output arrays."""
    exported = np.asarray(exported, dtype=np.float64)
    native = np.asarray(native, dtype=np.float64)
    if exported.shape != native.shape:
        raise ExportError(f"export: outputs have shape {exported.shape}, the native model gives {native.shape}")
    if not np.all(np.isfinite(exported)):
        return {"max_abs_diff": float("inf"), "max_rel_diff": float("inf"), "scale": float(np.max(np.abs(native)))}
    diff = float(np.max(np.abs(exported - native))) if native.size else 0.0
    scale = float(np.max(np.abs(native))) if native.size else 0.0
    return {"max_abs_diff": diff, "max_rel_diff": diff / scale if scale > 0 else diff, "scale": scale}


def native_predictor(request: ExportRequest) -> Callable[[np.ndarray], np.ndarray]:
    """``backend.predict`` on an fp32 CPU inference state built from the request's canonical weights."""
    from crossframe.train.runner import make_backend

    backend = make_backend(request.backend)
    state = backend.inference_state(request.spec, request.weights, "cpu", "fp32")
    return lambda x: backend.predict(state, x)


def verify_export(run: Callable[[np.ndarray], np.ndarray], request: ExportRequest, artifact: ExportArtifact,
                  tolerance: float = DEFAULT_TOLERANCE,
                  native: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Compare the loaded artefact ``run`` with the native model; figures, or ExportError beyond ``tolerance``.

    ``artifact.extra["traced_shape"]`` (set by the exporters) is the shape the export was traced
    with; the verification batches differ from it. Returns ``max_abs_diff``, ``max_rel_diff``,
    ``tolerance``, ``batches`` (the shapes run) and ``passed``.
    """
    tokens = is_token_model(request)
    traced = tuple(artifact.extra.get("traced_shape") or trace_example(request).shape)
    native = native or native_predictor(request)
    worst = {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "scale": 0.0}
    shapes = []
    for x in verification_batches(request.sample, traced, tokens):
        x = x.astype(np.int64 if tokens else np.float32)
        figures = compare(run(x), native(x))
        shapes.append(list(x.shape))
        for key in worst:
            worst[key] = max(worst[key], figures[key])
        allowed = tolerance * max(1.0, figures["scale"])
        if not figures["max_abs_diff"] <= allowed:
            raise ExportError(
                f"export: {artifact.format} from {artifact.backend} ({request.spec.name}) differs from the native "
                f"model by {figures['max_abs_diff']:.3g} max abs ({figures['max_rel_diff']:.3g} rel) on a batch of "
                f"shape {list(x.shape)}; tolerance {tolerance:g} (export.tolerance)")
    return {"max_abs_diff": worst["max_abs_diff"], "max_rel_diff": worst["max_rel_diff"],
            "tolerance": tolerance, "batches": shapes, "traced_shape": list(traced), "passed": True}
