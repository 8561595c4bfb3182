"""Training throughput: ``crossframe.run`` on the torch backend against a hand-written torch loop.

Both sides train the same MLP (same canonical initial weights) on the same numpy training split,
in the same batch order, with the same ``torch.optim.AdamW`` (weight decay on weights only,
``fused=True`` as the torch backend builds it on the CPU), the same warmup + cosine learning rate set on
every step, in the same process and with the same torch thread count. After the first (warm-up)
round the benchmark checks that both sides ended with the same weights, so they did the same work.

What is timed
-------------
crossframe
    The real public API, ``crossframe.run(config, quiet=True)``, with ``eval_every: 0`` and
    ``checkpoint_every: 0``. The timed window is the training loop of ``Trainer.fit`` as it runs:
    it opens in the ``on_run_start`` hook (called right before ``Trainer.fit``) and closes when the
    loop's last train log reaches the loggers (after the final ``backend.fetch`` of the pending
    losses, the one host sync of the last window). Everything the loop does per step is inside it:
    ``loader.batch(step)``, ``schedule(step)``, ``backend.train_step``, the pending list, the
    progress object (disabled by ``quiet``), the fetch + ``metrics.jsonl`` write every
    ``log_every`` steps. Outside it: config validation, dataset loading, model and optimizer
    construction (before), and the final evaluation and checkpoint that ``fit`` always does
    (after). The benchmark's own plugin adds one ``on_run_start`` hook and one logger called
    every ``log_every`` steps; it implements no ``on_step_end``, so the loop's per-step hook call
    stays disabled. The whole ``crossframe.run`` wall time is reported too (``run_wall_s``).
native
    A plain torch loop: per step, slice the epoch's seeded permutation, ``np.sort`` the indices,
    gather ``x[idx]`` / ``y[idx]``, ``torch.from_numpy``, compute the LR, set it on the param
    groups, forward, ``F.cross_entropy``, ``backward``, ``step``, ``zero_grad(set_to_none=True)``,
    and ``loss.item()`` every ``log_every`` steps (and after the last step). The timed window is
    the loop only; building the module and optimizer and loading the data happen before it.

Threads: both sides share the process, so they always run with the same torch intra-op thread
count; by default the benchmark sets it to 1 (``--torch-threads N`` changes it, ``0`` keeps torch's
own choice, one per core). On a small shared machine two OpenMP threads stall on each other
whenever another process takes a core (steps slow down 10-50x for seconds at a time), which
buries a per-step overhead of tens of microseconds; one thread does not, and for these models it
is as fast.

Rounds alternate the order (crossframe then native, native then crossframe, ...) to cancel
drift. Reported: the median steps/s of each side over the rounds, their ratio (crossframe /
native; 1.0 means no overhead), the per-step overhead ``1/cf - 1/native`` in microseconds, the
spread of the rounds ((max - min) / median) and the minor page faults inside each timed window
(``getrusage``, read just outside the window). No timing is asserted anywhere.

The native side reuses its process's warm memory from round to round; ``crossframe.run`` churns
memory before and after its loop (data generation, final eval, checkpoint export), after which
glibc may have handed pages back to the OS, so its first steps can take page faults that the
native loop does not (see the fault counts in the JSON). That cost is per run, not per step.

Run it alone with ``python -m benchmarks.torch_step [--quick] [--out FILE.json] [--threads N]``.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import crossframe
from benchmarks.common import (
    LOG_EVERY,
    LR,
    MIN_LR_RATIO,
    SEED,
    WARMUP_STEPS,
    WEIGHT_DECAY,
    RunClock,
    canonical_start,
    first_if_smoke,
    markdown_table,
    median,
    minor_faults,
    mlp_run_config,
    pick,
    smoke,
    spread,
)

TITLE = "Training step throughput: crossframe (torch backend) vs native torch"

CLOCK = "benchmark_clock"


@dataclass(frozen=True)
class Case:
    """One model / data / batch-size regime."""

    name: str
    description: str
    data: dict[str, Any]
    hidden: tuple[int, ...]
    batch_size: int
    steps: int
    rounds: int


def cases(quick: bool = False) -> list[Case]:
    """The regimes: the quickstart MLP (tiny steps, overhead-bound) and a bigger MLP (compute-bound)."""
    return [
        Case("mlp-digits", "quickstart MLP on digits: 64-128-64-10, batch 64",
             {"name": "digits"}, (128, 64), 64,
             steps=pick(1000, 100, 40, quick), rounds=pick(15, 3, 1, quick)),
        Case("mlp-512x512", "MLP on synthetic data: 256-512-512-10, batch 256",
             {"name": "synthetic", "samples": 8192, "features": 256, "classes": 10, "noise": 8.0}, (512, 512), 256,
             steps=pick(400, 40, 20, quick), rounds=pick(9, 3, 1, quick)),
    ]


# --------------------------------------------------------------------------- crossframe side


def crossframe_config(case: Case, output_dir: Path, name: str) -> dict[str, Any]:
    """The run config of ``case``: no intermediate eval or checkpoint, logging every ``LOG_EVERY``."""
    return mlp_run_config("torch", name, output_dir, case.data,
                          {"name": "mlp", "hidden": list(case.hidden), "activation": "relu"},
                          case.steps, case.batch_size, CLOCK)


@dataclass
class CrossframeRound:
    """One timed ``crossframe.run``."""

    loop_s: float
    faults: int
    wall_s: float
    final_loss: float
    checkpoint: Path | None
    run_dir: Path


def crossframe_round(case: Case, clock: RunClock, output_dir: Path, name: str) -> CrossframeRound:
    """Run ``crossframe.run`` once; the clock plugin times its training loop."""
    config = crossframe_config(case, output_dir, name)
    start = time.perf_counter()
    result = crossframe.run(config, quiet=True)
    wall = time.perf_counter() - start
    if result.steps != case.steps or math.isnan(clock.end):
        raise RuntimeError(f"{case.name}: crossframe run stopped at step {result.steps} of {case.steps}")
    return CrossframeRound(clock.seconds, clock.end_faults - clock.start_faults, wall, clock.final_loss,
                           result.checkpoint, result.run_dir)


# --------------------------------------------------------------------------- native side


@dataclass
class NativeSetup:
    """What the native loop starts from (built untimed): the training arrays and initial weights."""

    x: np.ndarray
    y: np.ndarray
    widths: list[int]
    weights: dict[str, np.ndarray]


def native_setup(case: Case) -> NativeSetup:
    """The same training split and canonical initial weights ``crossframe.run`` starts from."""
    start = canonical_start(case.data, {"name": "mlp", "hidden": list(case.hidden), "activation": "relu"})
    return NativeSetup(start.x, start.y, start.widths, start.weights)


def native_model(setup: NativeSetup) -> tuple[Any, Any]:
    """A hand-written torch MLP holding the canonical initial weights, and its AdamW."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MLP(nn.Module):
        """Flatten, then Linear layers with ReLU between them (the same forward as crossframe's)."""

        def __init__(self, widths: list[int]) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.flatten(1)
            last = len(self.layers) - 1
            for i, layer in enumerate(self.layers):
                h = layer(h)
                if i < last:
                    h = F.relu(h)
            return h

    model = MLP(setup.widths)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            layer.weight.copy_(torch.from_numpy(setup.weights[f"layers.{i}.weight"].T))
            layer.bias.copy_(torch.from_numpy(setup.weights[f"layers.{i}.bias"]))
    groups = [
        {"params": [layer.weight for layer in model.layers], "weight_decay": WEIGHT_DECAY},
        {"params": [layer.bias for layer in model.layers], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8, fused=True)
    return model, optimizer


def native_loop(model: Any, optimizer: Any, x_all: np.ndarray, y_all: np.ndarray, batch_size: int,
                steps: int) -> tuple[float, float]:
    """Train ``steps`` steps by hand; returns (seconds, last logged loss). Only the loop is timed."""
    import torch
    import torch.nn.functional as F

    n = len(x_all)
    steps_per_epoch = n // batch_size
    span = max(steps - WARMUP_STEPS, 1)
    floor = LR * MIN_LR_RATIO
    order = np.empty(0, dtype=np.int64)
    current_epoch = -1
    last_loss = math.nan
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        epoch, within = divmod(step, steps_per_epoch)
        if epoch != current_epoch:
            order = np.random.default_rng([SEED, epoch]).permutation(n)
            current_epoch = epoch
        idx = np.sort(order[within * batch_size:(within + 1) * batch_size])
        x = torch.from_numpy(x_all[idx])
        y = torch.from_numpy(y_all[idx])
        if step < WARMUP_STEPS:
            lr = LR * (step + 1) / WARMUP_STEPS
        else:
            lr = floor + 0.5 * (LR - floor) * (1.0 + math.cos(math.pi * min((step - WARMUP_STEPS) / span, 1.0)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
            last_loss = loss.item()
    return time.perf_counter() - start, last_loss


def native_weights(model: Any) -> dict[str, np.ndarray]:
    """The native module's weights under canonical names and layouts."""
    out: dict[str, np.ndarray] = {}
    for i, lin in enumerate(model.layers):
        out[f"layers.{i}.weight"] = lin.weight.detach().numpy().T.copy()
        out[f"layers.{i}.bias"] = lin.bias.detach().numpy().copy()
    return out


# --------------------------------------------------------------------------- the benchmark


def _same_work(case: Case, cf: CrossframeRound, model: Any) -> float:
    """Max |difference| between crossframe's final weights and the native loop's."""
    from crossframe.checkpoint import load_checkpoint

    if cf.checkpoint is None:
        raise RuntimeError(f"{case.name}: crossframe run wrote no checkpoint to compare against")
    theirs = load_checkpoint(cf.checkpoint).weights
    ours = native_weights(model)
    if set(theirs) != set(ours):
        raise RuntimeError(f"{case.name}: parameter names differ: {sorted(theirs)} vs {sorted(ours)}")
    return max(float(np.max(np.abs(theirs[k] - ours[k]))) for k in ours)


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def bench_case(case: Case, clock: RunClock, output_dir: Path, log: Callable[[str], None],
               warmup_s: float = 2.0) -> dict[str, Any]:
    """Warm up and check both sides, then time ``case.rounds`` interleaved rounds of each."""
    setup = native_setup(case)

    native_faults: list[int] = []

    def native() -> tuple[float, float, Any]:
        model, optimizer = native_model(setup)
        faults = minor_faults()
        seconds, loss = native_loop(model, optimizer, setup.x, setup.y, case.batch_size, case.steps)
        native_faults.append(minor_faults() - faults)
        return seconds, loss, model

    # Warm-up (untimed): imports, allocator, caches. Its first round proves both sides do the same work.
    cf0 = crossframe_round(case, clock, output_dir, f"{case.name}-warmup")
    _, native_loss0, model0 = native()
    diff = _same_work(case, cf0, model0)
    shutil.rmtree(cf0.run_dir)
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        shutil.rmtree(crossframe_round(case, clock, output_dir, f"{case.name}-warmup").run_dir)
        native()
    log(f"  {case.name}: warmed up; after {case.steps} steps the weights of both sides differ by at most {diff:.2e}")

    cf_rates: list[float] = []
    native_rates: list[float] = []
    walls: list[float] = []
    cf_faults: list[int] = []
    outside: list[float] = []
    for r in range(case.rounds):
        order = ("crossframe", "native") if r % 2 == 0 else ("native", "crossframe")
        for side in order:
            if side == "crossframe":
                cf = crossframe_round(case, clock, output_dir, f"{case.name}-{r}")
                cf_rates.append(case.steps / cf.loop_s)
                cf_faults.append(cf.faults)
                walls.append(cf.wall_s)
                outside.append(cf.wall_s - cf.loop_s)
                shutil.rmtree(cf.run_dir)  # keep the disk quiet and small
            else:
                seconds, _, _ = native()
                native_rates.append(case.steps / seconds)
        log(f"  {case.name} round {r + 1}/{case.rounds}: crossframe {cf_rates[-1]:.1f} steps/s, "
            f"native {native_rates[-1]:.1f} steps/s")

    cf_med, native_med = median(cf_rates), median(native_rates)
    params = sum(a * b + b for a, b in zip(setup.widths[:-1], setup.widths[1:], strict=True))
    return {
        "case": case.name,
        "description": case.description,
        "widths": setup.widths,
        "params": params,
        "batch_size": case.batch_size,
        "steps_per_round": case.steps,
        "rounds": case.rounds,
        "log_every": LOG_EVERY,
        "torch_threads": _torch_threads(),
        "crossframe_steps_per_s": cf_med,
        "native_steps_per_s": native_med,
        "ratio": cf_med / native_med,
        "paired_ratio_median": median(c / n for c, n in zip(cf_rates, native_rates, strict=True)),
        "overhead_us_per_step": (1.0 / cf_med - 1.0 / native_med) * 1e6,
        "crossframe_ms_per_step": 1e3 / cf_med,
        "native_ms_per_step": 1e3 / native_med,
        "crossframe_spread": spread(cf_rates),
        "native_spread": spread(native_rates),
        "crossframe_rounds_steps_per_s": cf_rates,
        "native_rounds_steps_per_s": native_rates,
        "run_wall_s": median(walls),
        "run_outside_loop_s": median(outside),
        "crossframe_minor_faults_median": median(cf_faults),
        "native_minor_faults_median": median(native_faults[-case.rounds:]),
        "warmup_weights_max_abs_diff": diff,
        "warmup_final_loss": {"crossframe_window_mean": cf0.final_loss, "native_last": native_loss0},
    }


DEFAULT_THREADS = 1


def run(quick: bool = False, log: Callable[[str], None] | None = None,
        threads: int | None = DEFAULT_THREADS) -> list[dict[str, Any]]:
    """Run every case; one result dict per case.

    ``threads`` sets torch's intra-op threads for both sides (``None`` or ``0``: torch's default).
    """
    import torch

    log = log or (lambda text: print(text, file=sys.stderr))
    if threads:
        torch.set_num_threads(threads)
    log(f"torch_step: torch {torch.__version__}, {torch.get_num_threads()} threads")
    warmup_s = (0.0 if smoke() else 0.5) if quick else 3.0
    with RunClock(CLOCK).installed() as clock, tempfile.TemporaryDirectory(prefix="crossframe-bench-") as tmp:
        return [bench_case(case, clock, Path(tmp), log, warmup_s=warmup_s) for case in first_if_smoke(cases(quick))]


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`run`'s results."""
    headers = ["case", "steps x rounds", "crossframe steps/s", "native steps/s", "ratio cf/native",
               "overhead us/step", "spread cf / native", "run() wall s"]
    body = [
        [row["description"], f"{row['steps_per_round']} x {row['rounds']}",
         f"{row['crossframe_steps_per_s']:.1f}", f"{row['native_steps_per_s']:.1f}", f"{row['ratio']:.3f}",
         f"{row['overhead_us_per_step']:+.0f}",
         f"{row['crossframe_spread']:.0%} / {row['native_spread']:.0%}", f"{row['run_wall_s']:.2f}"]
        for row in rows
    ]
    return markdown_table(headers, body)


if __name__ == "__main__":
    from benchmarks.__main__ import main

    sys.exit(main(["--only", "torch_step", *sys.argv[1:]]))
