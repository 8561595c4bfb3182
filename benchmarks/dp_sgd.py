"""DP-SGD step time: crossframe's private step against its plain step on each backend, and against
Opacus on torch, for the same model and batch.

The model is the digits MLP preset's shape (64 -> 128 -> 64 -> 10, ReLU), the batch 64 examples of
synthetic data, plain SGD. Each backend runs in its own subprocess. Per backend it times, alternating
in rounds: the plain compiled step, and the DP-SGD step *including* drawing that step's noise in numpy
(the core's seeded stream, which the private loader does once per step), since Opacus' step draws
its noise too. On torch, Opacus 1.x (``GradSampleModule`` hooks + ``DPOptimizer``: per-example
gradients, clipping, noise, the update) runs the same module and batch. Reported: milliseconds per
step (median over rounds), DP / plain, and crossframe DP / Opacus (below 1 = crossframe is faster).

``--smoke`` runs torch only. Run it alone with ``python -m benchmarks.dp_sgd [--quick] [--out FILE.json]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, pick

TITLE = "DP-SGD step: private vs plain step per backend, and vs Opacus on torch (ms/step)"
BACKENDS = ("torch", "jax", "tensorflow")
HIDDEN = [128, 64]
FEATURES, CLASSES, BATCH = 64, 10, 64
SIGMA, CLIP, LR = 1.0, 1.0, 0.05


def _setup(backend_name: str, private: bool) -> tuple[Any, Any, dict[str, np.ndarray], Any]:
    from crossframe.backend import TrainSetup
    from crossframe.data.dataset import DataInfo
    from crossframe.models import build_model
    from crossframe.privacy import PrivacySetup
    from crossframe.train.runner import make_backend

    spec = build_model("mlp", {"hidden": HIDDEN}, DataInfo("classification", (FEATURES,), CLASSES))
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((BATCH, FEATURES)).astype(np.float32),
             "y": rng.integers(0, CLASSES, BATCH).astype(np.int64)}
    priv = PrivacySetup(SIGMA, CLIP, BATCH, seed=0) if private else None
    backend = make_backend(backend_name)
    backend.set_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    state = backend.create_state(TrainSetup(spec, spec.init(0), "sgd", {"lr": LR}, privacy=priv))
    return backend, state, batch, spec


def _time(step: Callable[[int], Any], sync: Callable[[Any], Any], steps: int) -> float:
    """Seconds per step over ``steps`` steps (the last output fetched, so queued work is counted)."""
    start = time.perf_counter()
    out = None
    for i in range(steps):
        out = step(i)
    sync(out)
    return (time.perf_counter() - start) / steps


def measure_backend(backend_name: str, steps: int, rounds: int) -> dict[str, Any]:
    """The row of one backend: plain and DP ms/step, and Opacus on torch."""
    from crossframe.privacy import NOISE_PREFIX, PrivacySetup, step_noise

    backend, plain_state, batch, spec = _setup(backend_name, private=False)
    _, dp_state, _, _ = _setup(backend_name, private=True)
    table = [(p.name, tuple(p.shape)) for p in spec.table]
    priv = PrivacySetup(SIGMA, CLIP, BATCH, seed=0)
    holder = {"plain": plain_state, "dp": dp_state}

    def plain(i: int) -> Any:
        holder["plain"], out = backend.train_step(holder["plain"], batch, LR)
        return out

    def dp(i: int) -> Any:
        noisy = {**batch, **{NOISE_PREFIX + k: v for k, v in step_noise(priv, i, table).items()}}
        holder["dp"], out = backend.train_step(holder["dp"], noisy, LR)
        return out

    sides: dict[str, Callable[[int], Any]] = {"plain": plain, "dp": dp}
    if backend_name == "torch" and importlib.util.find_spec("opacus") is not None:
        sides["opacus"] = _opacus_step(spec, batch)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for fn in sides.values():  # warm-up: compilation, allocator
        _time(fn, backend.fetch, 5)
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            times[name].append(_time(sides[name], backend.fetch, steps))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    row = {"backend": backend_name, "steps": steps, "rounds": rounds, "batch": BATCH,
           "plain_ms": ms["plain"], "dp_ms": ms["dp"], "dp_over_plain": ms["dp"] / ms["plain"]}
    if "opacus" in ms:
        import opacus

        row.update({"opacus_ms": ms["opacus"], "dp_over_opacus": ms["dp"] / ms["opacus"],
                    "opacus_version": opacus.__version__})
    return row


def _opacus_step(spec: Any, batch: dict[str, np.ndarray]) -> Callable[[int], Any]:
    """Opacus on the same torch module (built from the same canonical weights) and batch."""
    import torch
    import torch.nn.functional as F
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from crossframe_torch.models import build_module, load_canonical

    module = build_module(spec)
    load_canonical(module, spec, spec.init(0))
    model = GradSampleModule(module)
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=LR), noise_multiplier=SIGMA,
                            max_grad_norm=CLIP, expected_batch_size=BATCH)
    x, y = torch.from_numpy(batch["x"]), torch.from_numpy(batch["y"])

    def step(i: int) -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def run(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One subprocess per installed backend."""
    log = log or (lambda text: print(text, file=sys.stderr))
    steps, rounds = pick(200, 50, 5, quick), pick(5, 3, 1, quick)
    rows = []
    from benchmarks.common import smoke

    for backend in BACKENDS[:1] if smoke() else BACKENDS:  # smoke: torch only (with Opacus), to stay short
        if importlib.util.find_spec(backend) is None:
            log(f"dp_sgd: {backend} is not installed; skipped")
            continue
        code = ("import json; from benchmarks.dp_sgd import measure_backend; "
                f"print(json.dumps(measure_backend({backend!r}, {steps}, {rounds})))")
        log(f"dp_sgd: {backend}, {rounds} rounds of {steps} steps (plain, DP-SGD{', Opacus' * (backend == 'torch')})")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        if proc.returncode != 0:
            log(f"dp_sgd: {backend} failed:\n{proc.stderr[-2000:]}")
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One row per backend; the Opacus columns on torch."""
    def opt(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    return markdown_table(
        ["backend", "plain ms", "DP-SGD ms", "DP / plain", "Opacus ms", "DP / Opacus"],
        [[r["backend"], f"{r['plain_ms']:.3f}", f"{r['dp_ms']:.3f}", f"{r['dp_over_plain']:.2f}",
          opt(r, "opacus_ms", ".3f"), opt(r, "dp_over_opacus", ".2f")] for r in rows])


if __name__ == "__main__":
    from benchmarks.__main__ import main

    sys.exit(main(["--only", "dp_sgd", *sys.argv[1:]]))
