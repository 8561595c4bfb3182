"""k-fold cross-validation: ``crossframe cv CONFIG --folds K [--jobs N] [--backend B]``.

Each fold is an ordinary run (``data.split: {folds: K, fold: i}``) in ``<output_dir>/<name>-cv/
fold-<i>/``, so it can be evaluated, resumed or served like any other; the folds come from
:func:`crossframe.data.splits.kfold` (stratified or grouped as ``data.split`` says). With
``jobs > 1`` the folds train in that many spawned processes, each with one CPU thread. The summary,
one row per fold plus the mean and standard deviation (``ddof=0``, as ``numpy.std``) of every scalar
validation metric, is written atomically to ``cv.json`` next to the folds.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.config.loading import load_config
from crossframe.data.dataset import Dataset
from crossframe.errors import ConfigError, CrossframeError, RunError
from crossframe.files import atomic_write_text
from crossframe.plugins import get_plugin_manager
from crossframe.train.data import load_source
from crossframe.train.runner import _run_name, _unique_dir, run
from crossframe.train.splitting import split_dataset

SUMMARY_FILE = "cv.json"


def fold_configs(config: Any, overrides: Iterable[str], folds: int, *, backend: str | None = None,
                 jobs: int = 1) -> tuple[Path, list[dict[str, Any]], list[dict[str, int]]]:
    """The cv directory, each fold's resolved config (as data) and its split sizes; fails in one line,
    before anything trains, on a bad config or data."""
    if folds < 2:
        raise ConfigError(f"--folds: {folds}; use at least 2")
    if jobs < 1:
        raise ConfigError(f"--jobs: {jobs}; use at least 1")
    cfg = load_config(config, overrides, backend=backend)
    get_plugin_manager().hook.check_run_config(config=cfg)
    if cfg.launch.nproc_per_node > 1 or cfg.launch.nnodes > 1:
        raise ConfigError("launch: crossframe cv trains one process per fold; drop the launch section")
    base = _unique_dir(Path(cfg.output_dir) / f"{_run_name(cfg)}-cv")
    source = load_source(cfg)
    if not isinstance(source, Dataset):
        raise ConfigError(f"data.name: '{cfg.data.name}' is a text corpus; cv folds array datasets")
    out, sizes = [], []
    for i in range(folds):
        data = cfg.model_dump(mode="json", exclude_none=True)
        data["data"]["split"] = {**data["data"].get("split", {}), "folds": folds, "fold": i}
        data.update(output_dir=str(base), name=f"fold-{i}")
        if jobs > 1:
            data["threads"] = 1
        fold_cfg = load_config(data)
        train, val, test = split_dataset(source, fold_cfg.data, fold_cfg.seed)
        sizes.append({"train": len(train), "val": len(val), "test": 0 if test is None else len(test)})
        out.append(data)
    return base, out, sizes


def _train_fold(config: dict[str, Any]) -> dict[str, Any]:
    """One fold, in this process (the pool calls it in a spawned one): its status and scalar metrics."""
    started = time.perf_counter()
    try:
        result = run(config, quiet=True)
    except CrossframeError as exc:
        return {"status": "failed", "error": str(exc), "seconds": time.perf_counter() - started}
    except Exception as exc:  # a bug in a fold: named, not a pickled traceback
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - started}
    metrics = {k: float(v) for k, v in result.metrics.items() if np.ndim(v) == 0 and k.startswith("val/")}
    return {"status": result.status, "run_dir": str(result.run_dir), "step": result.steps, "metrics": metrics,
            "seconds": time.perf_counter() - started}


def summarise(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (``ddof=0``) of each metric every finished fold reports."""
    done = [f["metrics"] for f in folds if f.get("metrics")]
    if not done:
        return {}
    keys = [k for k in done[0] if all(k in m and math.isfinite(m[k]) for m in done)]
    return {k: {"mean": float(np.mean([m[k] for m in done])), "std": float(np.std([m[k] for m in done]))}
            for k in keys}


def cross_validate(config: Any = None, overrides: Iterable[str] = (), *, folds: int = 5, jobs: int = 1,
                   backend: str | None = None) -> dict[str, Any]:
    """Train every fold and return the summary that ``cv.json`` holds.

    Raises :class:`~crossframe.errors.RunError` (after writing ``cv.json``) when a fold failed.
    """
    base, configs, sizes = fold_configs(config, overrides, folds, backend=backend, jobs=jobs)
    base.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    workers = min(jobs, folds)
    if workers == 1:
        results = [_train_fold(c) for c in configs]
    else:
        env = {"OMP_NUM_THREADS": "1"}  # the children's pools start at one thread, before any framework loads
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                results = list(pool.map(_train_fold, configs))
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    rows = [{"fold": i, **sizes[i], **r} for i, r in enumerate(results)]
    summary = {"cv_dir": str(base), "folds": folds, "jobs": workers, "backend": configs[0]["backend"],
               "seconds": time.perf_counter() - started, "results": rows, "summary": summarise(rows)}
    atomic_write_text(base / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        raise RunError(f"cv: {len(failed)} of {folds} folds failed; fold {failed[0]['fold']}: {failed[0]['error']} "
                       f"(summary in {base / SUMMARY_FILE})")
    return summary


def summary_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the cv table: one per fold, then ``mean ± std``."""
    keys = list(summary["summary"])
    headers = ["fold", "train", "val", "status", *(k.removeprefix("val/") for k in keys)]
    rows = [[str(r["fold"]), str(r["train"]), str(r["val"]), r["status"],
             *(f"{r.get('metrics', {}).get(k, float('nan')):.4f}" for k in keys)] for r in summary["results"]]
    rows.append(["mean ± std", "", "", "", *(f"{s['mean']:.4f} ± {s['std']:.4f}" for s in summary["summary"].values())])
    return headers, rows
