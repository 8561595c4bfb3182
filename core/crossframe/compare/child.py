"""One backend of a comparison, in its own process: ``python -m crossframe.compare.child REQUEST.json``.

The request (written by :mod:`crossframe.compare.runner`) holds the resolved config, the backend
and where to write the result. The child measures the initial parity of the backend's
``predict`` against the numpy reference ``spec.forward`` on real validation inputs, then trains
with ``crossframe.run(config, backend=..., quiet=True)``, and writes ``result.json`` atomically:
its status (``ok``, ``unavailable``, ``failed``, ``oom``), a one-line error, timings of its own
phases, the parity figure and peak host and device memory. Everything else the parent reads
from the run's ``metrics.jsonl``. Phases are announced on stdout as JSON lines for the parent's
progress display.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

#: at most this many validation examples (or token blocks) go through the parity check
PARITY_SAMPLES = 256


def announce(phase: str, **fields: Any) -> None:
    """Tell the parent which phase this child is in (one JSON line on stdout)."""
    print(json.dumps({"phase": phase, **fields}), flush=True)


def classify(exc: BaseException) -> str:
    """The row status for an exception: ``unavailable``, ``oom`` or ``failed``."""
    from crossframe.errors import CapabilityError, PluginError

    text = f"{type(exc).__name__} {exc}".lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "resource_exhausted" in text \
            or "resourceexhausted" in text:
        return "oom"
    if isinstance(exc, (CapabilityError, PluginError, ImportError)):
        return "unavailable"
    return "failed"


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, prefixed by its type unless it is a crossframe error."""
    from crossframe.errors import CrossframeError

    text = (str(exc).strip().splitlines() or [""])[0][:400]
    return text if isinstance(exc, CrossframeError) and text else f"{type(exc).__name__}: {text}"


def parity(backend: Any, cfg: Any, device: str, data: Any) -> dict[str, Any]:
    """Max |predict - spec.forward| on the canonical initial weights, over real validation inputs."""
    import numpy as np

    from crossframe.models import build_model

    spec = build_model(cfg.model.name, cfg.model.params, data.info)
    weights = spec.init(cfg.seed)
    batch = next(iter(data.val.eval_batches(PARITY_SAMPLES)))
    x = batch["x"][:PARITY_SAMPLES]
    state = backend.inference_state(spec, weights, device, cfg.precision)
    got = np.asarray(backend.predict(state, x), dtype=np.float64)
    want = np.asarray(spec.forward(weights, x), dtype=np.float64)
    del state
    return {"max_abs_diff": float(np.max(np.abs(got - want))), "reference_max_abs": float(np.max(np.abs(want))),
            "samples": int(x.shape[0])}


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """Run one backend as ``request`` asks; the result dict (never raises for a backend failure)."""
    started = time.perf_counter()
    result: dict[str, Any] = {"backend": request["backend"], "status": "ok", "error": None, "timings": {
        "process_start_s": max(0.0, time.time() - request["spawned_at"])}}
    try:
        from crossframe.config.loading import load_config
        from crossframe.train.data import load_training_data
        from crossframe.train.runner import prepare_backend, run

        cfg = load_config(request["config"], backend=request["backend"])
        announce("backend")
        t = time.perf_counter()
        backend, device = prepare_backend(cfg)
        result.update(framework_version=backend.framework_version(), device=device)
        result["timings"]["backend_load_s"] = time.perf_counter() - t
        announce("data")
        t = time.perf_counter()
        data = load_training_data(cfg)
        total = cfg.train.steps or (cfg.train.epochs or 1) * data.loader.steps_per_epoch
        result["timings"]["data_s"] = time.perf_counter() - t
        announce("parity", total=total)
        t = time.perf_counter()
        result["parity"] = parity(backend, cfg, device, data)
        result["timings"]["parity_s"] = time.perf_counter() - t
        del data
        announce("train", total=total)
        t = time.perf_counter()
        try:
            outcome = run(request["config"], backend=request["backend"], quiet=True)
        finally:
            result["timings"]["run_wall_s"] = time.perf_counter() - t
        result.update(run_dir=str(outcome.run_dir), run_status=outcome.status, steps=outcome.steps)
        result["peak_device_mb"] = backend.peak_device_memory_mb(device)
    except Exception as exc:  # a backend's failure is data for the report, not a crash of the comparison
        result.update(status=classify(exc), error=one_line(exc))
    from crossframe.perf import peak_host_memory_mb

    result["peak_host_mb"] = peak_host_memory_mb()
    result["timings"]["child_wall_s"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    """Read the request, measure, write the result next to it; 0 unless the request is unreadable."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m crossframe.compare.child REQUEST.json", file=sys.stderr)
        return 2
    request = json.loads(Path(args[0]).read_text())
    result = measure(request)
    from crossframe.config.loading import atomic_write_text

    atomic_write_text(Path(request["result"]), json.dumps(result, indent=2, default=float) + "\n")
    announce("done", status=result["status"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
