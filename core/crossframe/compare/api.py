"""``crossframe.compare(config, backends=[...])``: the same job on each backend, side by side.

Each backend trains in its own subprocess (:mod:`crossframe.compare.child`) from the same
canonical initial weights and the same batch order (both follow from ``seed``). The parent
collects numerics (initial parity against the numpy reference, pairwise loss-curve divergence),
speed (throughput, first step), memory, final eval metrics, MFU and export figures, and writes
``<output_dir>/compare/``: ``results.json`` (validated against :mod:`crossframe.compare.schema`),
``report.md``, ``report.html`` and PNG plots.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crossframe.errors import UsageError

DEFAULT_BACKENDS = ("torch", "jax", "tensorflow")
COMPARE_DIR = "compare"


def parse_backends(backends: str | Iterable[str] | None) -> list[str]:
    """Backend names from ``"a,b"`` or a list: stripped, de-duplicated, in order; at least one."""
    if backends is None:
        return list(DEFAULT_BACKENDS)
    items = backends.split(",") if isinstance(backends, str) else list(backends)
    names: list[str] = []
    for item in items:
        name = str(item).strip()
        if name and name not in names:
            names.append(name)
    if not names:
        raise UsageError("--backends: give at least one backend name, e.g. --backends torch,jax,tensorflow")
    return names


def _prepare_data(cfg: Any, config: dict[str, Any]) -> float:
    """Prepare a text source's token store once for all backends (pinning ``text.store``); seconds spent.

    Array datasets (digits, npz, ...) are cheap and loaded by each child; only text sources (the
    built-in ones, or any source under a ``gpt`` model) are tokenised here, once.
    """
    started = time.perf_counter()
    from crossframe.text.corpus import TextCorpus
    from crossframe.text.sources import SOURCES
    from crossframe.train.data import load_source, token_store

    if cfg.data.name not in SOURCES and cfg.model.name != "gpt":
        return 0.0
    source = load_source(cfg)
    if isinstance(source, TextCorpus):
        store = token_store(cfg, source)
        config.setdefault("text", {})["store"] = str(Path(store.directory).resolve())
    return time.perf_counter() - started


def _row(outcome: Any) -> dict[str, Any]:
    """One backend's row of ``results.json`` from its child's result and its run directory."""
    from crossframe.compare import measure

    res = outcome.result
    run_dir = Path(res["run_dir"]) if res.get("run_dir") else None
    records = measure.read_metrics(run_dir / "metrics.jsonl") if run_dir else []
    host = res.get("peak_host_mb")
    timings = wall_parts({k: float(v) for k, v in (res.get("timings") or {}).items() if v is not None},
                         outcome.wall_s)
    parity = res.get("parity") or {"max_abs_diff": None}
    return {
        "backend": outcome.backend,
        "status": res.get("status", "crashed"),
        "error": res.get("error"),
        "framework_version": res.get("framework_version"),
        "device": res.get("device"),
        "run_dir": str(run_dir) if run_dir else None,
        "run_status": res.get("run_status"),
        "steps": res.get("steps"),
        "parity": parity,
        "throughput": measure.throughput(records),
        "first_step_s": measure.first_step_s(records),
        "memory": {"peak_host_mb": None if res.get("status") == "unavailable" else
                   host if host is not None else measure.peak_host_from_metrics(records),
                   "peak_device_mb": res.get("peak_device_mb")},
        "mfu": measure.mfu(records),
        "eval": measure.final_eval(records),
        "loss_curve": measure.loss_curve(records),
        "export": measure.export_figures(run_dir),
        "timings": timings,
        "load": outcome.load,
    }


#: the parts of one backend's process wall time, in the order they happen; they sum to ``child_wall_s``
WALL_PARTS = ("process_start_s", "backend_load_s", "data_s", "parity_s", "run_wall_s", "finish_s")


def wall_parts(timings: dict[str, float], wall_s: float) -> dict[str, float]:
    """``timings`` with ``child_wall_s`` (the parent's clock) and ``finish_s``, the rest, so the parts add up.

    ``finish_s`` is what follows the training run: peak-memory readings, writing the result and
    the interpreter's exit (framework teardown). ``process_start_s`` is measured from the request's
    timestamp, a moment before the parent's clock starts; if that makes the parts exceed the wall
    time, the excess comes off ``process_start_s``, so the columns always sum to ``child_wall_s``.
    """
    out = {k: v for k, v in timings.items() if k not in ("child_wall_s", "finish_s")}
    out["child_wall_s"] = wall_s
    rest = wall_s - sum(out.get(k, 0.0) for k in WALL_PARTS[:-1])
    if rest < 0 and "process_start_s" in out:
        trim = min(-rest, out["process_start_s"])
        out["process_start_s"] -= trim
        rest += trim
    out["finish_s"] = max(0.0, rest)
    return out


def machine() -> dict[str, Any]:
    """Where the comparison ran: platform, Python, CPU model and cores."""
    from crossframe.perf import cpu_model

    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "cpu_model": cpu_model()}


def compare(
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    backends: str | Sequence[str] | None = None,
    overrides: Iterable[str] = (),
    *,
    out: str | os.PathLike | None = None,
    steps: int | None = None,
    progress: bool = False,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    threads: int | str | None = None,
) -> dict[str, Any]:
    """Run ``config`` on each of ``backends`` and return the results (the content of ``results.json``).

    ``out`` replaces the config's ``output_dir`` (the report goes to ``<out>/compare/``);
    ``steps`` replaces ``train.steps``; ``env`` is added to each child's environment;
    ``progress`` shows a live display on stderr. Every backend gets the same CPU ``threads``
    (a count, or ``auto``, resolved once here; default: the config's ``threads``), and the
    machine's load during each run is recorded; a run that had to share its cores is flagged.
    A backend that is missing, runs out of memory
    or fails is a row with its status and one-line error; the others still run. Raises
    :class:`~crossframe.errors.CrossframeError` (one line) for a bad config or arguments.
    """
    from crossframe import __version__
    from crossframe.compare.load import LoadMeter
    from crossframe.compare.report import write_reports
    from crossframe.compare.runner import ProgressDisplay, run_child
    from crossframe.compare.schema import SCHEMA_VERSION, validate_results
    from crossframe.config.loading import config_to_dict, load_config
    from crossframe.threads import available_cores, choose_threads, thread_environment

    started = time.perf_counter()
    names = parse_backends(backends)
    if steps is not None and steps < 1:
        raise UsageError(f"--steps: must be a positive number of steps, got {steps}")
    extra = [f"train.steps={steps}"] if steps is not None else []
    cfg = load_config(config, [*overrides, *extra])
    if out is not None:  # a plain string field: set directly rather than through YAML-parsed overrides
        cfg = cfg.model_copy(update={"output_dir": str(out)})
    compare_dir = Path(cfg.output_dir) / COMPARE_DIR
    choice = choose_threads(cfg.threads if threads is None else threads)
    cfg = cfg.model_copy(update={"threads": choice.threads})
    shared = config_to_dict(cfg)
    data_s = _prepare_data(cfg, shared)
    display = ProgressDisplay(names, enabled=progress)
    outcomes = []
    try:
        for name in names:
            child_config = {**shared, "backend": name, "name": name, "output_dir": str(compare_dir / "runs")}
            outcome = run_child(name, child_config, compare_dir / "work" / name, compare_dir / "runs" / name,
                                progress=display, env={**thread_environment(choice.threads), **(env or {})},
                                timeout_s=timeout_s, meter=LoadMeter(choice.threads, available_cores()))
            display.finish(name, outcome.result.get("status", "crashed"))
            outcomes.append(outcome)
    finally:
        display.close()
    rows = [_row(o) for o in outcomes]
    from crossframe.compare.measure import loss_divergence

    curves = {r["backend"]: r["loss_curve"] for r in rows if r["loss_curve"]}
    backends_s = sum(r["timings"].get("run_wall_s", 0.0) for r in rows)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "crossframe_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {k: v for k, v in shared.items() if k not in ("backend",)},
        "backends": names,
        "results": rows,
        "loss_divergence": loss_divergence(curves),
        "overhead": {},
        "machine": machine(),
        "threads": {"per_backend": choice.threads, "reason": choice.reason},
        "contended": [r["backend"] for r in rows if (r.get("load") or {}).get("contended")],
    }
    results["overhead"] = {  # filled last so the report writing is inside the total
        "data_prepare_s": data_s,
        "per_backend": {r["backend"]: max(0.0, r["timings"]["child_wall_s"] - r["timings"].get("run_wall_s", 0.0))
                        for r in rows},
        "backends_s": backends_s,
        "total_s": 0.0,
        "overhead_s": 0.0,
    }
    results["files"] = write_reports(results, compare_dir, lambda: _close_overhead(results, started, backends_s))
    validate_results(results)
    return results


def _close_overhead(results: dict[str, Any], started: float, backends_s: float) -> None:
    """Set the comparison's total wall time and its overhead (everything but the runs themselves)."""
    total = time.perf_counter() - started
    results["overhead"]["total_s"] = total
    results["overhead"]["overhead_s"] = total - backends_s
