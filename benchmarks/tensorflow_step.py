"""Training throughput: ``crossframe.run`` on the tensorflow backend against a hand-written TF loop.

Both sides train the same MLP (same canonical initial weights) on the same numpy training split,
in the same batch order, with AdamW (decoupled weight decay on weights only, the canonical rule
written in TF ops on both sides, as no Keras optimizer implements it), the same warmup + cosine
learning rate passed as a float32 tensor on every step, in the same process and with the same TF
thread pools. After the first (warm-up) round the benchmark checks that both sides ended with the
same weights, so they did the same work.

What is timed
-------------
Every round builds its model afresh, so every round pays for tracing (and, for the XLA case,
compiling) its step function on its first step. That cost is reported on its own
(``first_step_s``) and kept out of the throughput, which is the steady state:

steps/s
    ``(steps - LOG_EVERY) / (t_last - t_first)`` where ``t_first`` and ``t_last`` are the moments
    the first and the last train log reach the host: both sides fetch the loss every
    ``LOG_EVERY`` steps, so the window covers steps ``LOG_EVERY + 1 .. steps`` and the same
    number of host syncs on both sides.
crossframe
    The real public API, ``crossframe.run(config, quiet=True)`` with ``eval_every: 0`` and
    ``checkpoint_every: 0``; a plugin of this benchmark notes when each train log reaches the
    loggers (after the loop's ``backend.fetch`` of the pending losses). Everything the loop does
    per step is inside the window: ``loader.batch(step)``, ``schedule(step)``,
    ``backend.train_step`` (``tf.convert_to_tensor`` of the batch, ``tf.constant`` of the rate,
    one call of the traced step), the pending list, the fetch and the ``metrics.jsonl`` write
    every ``LOG_EVERY`` steps. The plugin implements no ``on_step_end``, so the loop's per-step
    hook call stays disabled.
native
    A plain TF program: ``tf.Variable`` s, a ``tf.function`` step with a fixed input signature
    (``GradientTape``, softmax cross-entropy, AdamW in TF ops), and a loop that slices the epoch's
    seeded permutation, ``np.sort`` s the indices, gathers ``x[idx]`` / ``y[idx]``,
    ``tf.convert_to_tensor`` s them, computes the rate, calls the step, and calls ``.numpy()`` on
    the loss every ``LOG_EVERY`` steps. Measured twice: calling the ``tf.function`` (what TF code
    usually does) and calling its concrete function (what the crossframe backend does: the same
    graph without the ``tf.function``'s per-call argument binding).
first step
    crossframe: from ``on_run_start`` to the first train log of a run with ``log_every: 1``
    (batch, convert, trace / compile, run, fetch). Native: a fresh model's first step call and
    ``.numpy()``. Median of a few probes each, taken after the warm-up.

Rounds rotate the order of the three sides to cancel drift. Reported: the median steps/s of each
side, the ratio crossframe / native (1.0 means no overhead), the per-step overhead
``1/cf - 1/native`` in microseconds, and the first-step times. No timing is asserted anywhere.

Run alone with ``python -m benchmarks.tensorflow_step [--quick] [--out FILE.json]``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import crossframe
from benchmarks.common import (
    LOG_EVERY,
    SEED,
    WEIGHT_DECAY,
    RunClock,
    canonical_start,
    first_if_smoke,
    learning_rate,
    markdown_table,
    median,
    mlp_run_config,
    pick,
    smoke,
    spread,
)

TITLE = "Training step throughput: crossframe (tensorflow backend) vs native TensorFlow"

BETAS = (0.9, 0.999)
EPS = 1e-8
FIRST_STEP_PROBES = 3
CLOCK = "tf_benchmark_clock"
SIDES = ("crossframe", "native", "native_concrete")


@dataclass(frozen=True)
class Case:
    """One model / data / batch-size / compile regime."""

    name: str
    description: str
    data: dict[str, Any]
    hidden: tuple[int, ...]
    batch_size: int
    steps: int
    rounds: int
    compile: bool = False


def cases(quick: bool = False) -> list[Case]:
    """The quickstart MLP (tiny steps, overhead-bound) in graph mode and with XLA, and a bigger MLP."""
    digits = {"name": "digits"}
    big = {"name": "synthetic", "samples": 8192, "features": 256, "classes": 10, "noise": 8.0}
    return [
        Case("mlp-digits", "quickstart MLP on digits: 64-128-64-10, batch 64, graph",
             digits, (128, 64), 64, steps=pick(1000, 100, 40, quick), rounds=pick(11, 3, 1, quick)),
        Case("mlp-digits-xla", "quickstart MLP on digits: 64-128-64-10, batch 64, XLA (jit_compile)",
             digits, (128, 64), 64, steps=pick(1000, 100, 40, quick), rounds=pick(11, 3, 1, quick),
             compile=True),
        Case("mlp-512x512", "MLP on synthetic data: 256-512-512-10, batch 256, graph",
             big, (512, 512), 256, steps=pick(300, 60, 40, quick), rounds=pick(7, 3, 1, quick)),
    ]


# --------------------------------------------------------------------------- crossframe side


def crossframe_config(case: Case, output_dir: Path, name: str, steps: int | None = None,
                      log_every: int = LOG_EVERY) -> dict[str, Any]:
    """The run config of ``case``: no intermediate eval or checkpoint."""
    return mlp_run_config("tensorflow", name, output_dir, case.data,
                          {"name": "mlp", "hidden": list(case.hidden), "activation": "relu"},
                          steps or case.steps, case.batch_size, CLOCK, log_every=log_every, compile=case.compile)


@dataclass
class Round:
    """One timed round of one side."""

    steps_per_s: float
    first_window_s: float  # start of the loop to the first train log (includes tracing)
    wall_s: float = math.nan
    checkpoint: Path | None = None


def _steady(case: Case, start: float, logs: dict[int, float]) -> tuple[float, float]:
    first, last = logs[LOG_EVERY], logs[case.steps]
    return (case.steps - LOG_EVERY) / (last - first), first - start


def crossframe_round(case: Case, clock: RunClock, output_dir: Path, name: str) -> Round:
    """Run ``crossframe.run`` once; the clock plugin times its training loop."""
    start = time.perf_counter()
    result = crossframe.run(crossframe_config(case, output_dir, name), quiet=True)
    wall = time.perf_counter() - start
    if result.steps != case.steps or case.steps not in clock.logs:
        raise RuntimeError(f"{case.name}: crossframe run stopped at step {result.steps} of {case.steps}")
    rate, first = _steady(case, clock.start, clock.logs)
    return Round(rate, first, wall, result.checkpoint)


def crossframe_first_step(case: Case, clock: RunClock, output_dir: Path) -> float:
    """Seconds from ``on_run_start`` to the first train log, logging every step."""
    crossframe.run(crossframe_config(case, output_dir, f"{case.name}-first", steps=2, log_every=1), quiet=True)
    return clock.logs[1] - clock.start


# --------------------------------------------------------------------------- native side


@dataclass
class NativeSetup:
    """What the native loop starts from (built untimed): the training arrays and initial weights."""

    x: np.ndarray
    y: np.ndarray
    widths: list[int]
    weights: dict[str, np.ndarray]
    decays: dict[str, bool] = field(default_factory=dict)


def native_setup(case: Case) -> NativeSetup:
    """The same training split and canonical initial weights ``crossframe.run`` starts from."""
    start = canonical_start(case.data, {"name": "mlp", "hidden": list(case.hidden), "activation": "relu"})
    return NativeSetup(start.x, start.y, start.widths, start.weights, start.decays)


class NativeModel:
    """A hand-written TF MLP with AdamW: variables, slots and one ``tf.function`` step."""

    def __init__(self, setup: NativeSetup, jit_compile: bool) -> None:
        import tensorflow as tf

        self.names = list(setup.weights)
        self.params = [tf.Variable(setup.weights[n]) for n in self.names]
        self.m = [tf.Variable(tf.zeros_like(p)) for p in self.params]
        self.v = [tf.Variable(tf.zeros_like(p)) for p in self.params]
        self.t = tf.Variable(0.0)
        decays = [setup.decays[n] for n in self.names]
        n_layers, flat = len(setup.widths) - 1, setup.widths[0]
        log_b1, log_b2 = math.log(BETAS[0]), math.log(BETAS[1])
        b1, b2 = BETAS
        signature = [tf.TensorSpec([None, *setup.x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int64),
                     tf.TensorSpec([], tf.float32)]

        @tf.function(input_signature=signature, jit_compile=jit_compile)
        def step(x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                h = tf.reshape(x, [-1, flat])
                for i in range(n_layers):
                    h = tf.nn.bias_add(tf.matmul(h, self.params[2 * i]), self.params[2 * i + 1])
                    if i < n_layers - 1:
                        h = tf.nn.relu(h)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=h))
            grads = tape.gradient(loss, self.params)
            t = self.t.assign_add(1.0)
            step_size = lr / -tf.math.expm1(t * log_b1)  # 1 - b^t without float32 cancellation
            bc2_sqrt = tf.sqrt(-tf.math.expm1(t * log_b2))
            for p, g, m, v, decay in zip(self.params, grads, self.m, self.v, decays, strict=True):
                m_new = m.assign(m + (1.0 - b1) * (g - m))
                v_new = v.assign(v * b2 + (1.0 - b2) * g * g)
                value = p * (1.0 - lr * WEIGHT_DECAY) if decay else p
                p.assign(value - step_size * (m_new / (tf.sqrt(v_new) / bc2_sqrt + EPS)))
            return loss

        self.step = step

    def weights(self) -> dict[str, np.ndarray]:
        """The weights under canonical names (the layouts are canonical already)."""
        return {n: p.numpy().copy() for n, p in zip(self.names, self.params, strict=True)}


def native_loop(setup: NativeSetup, case: Case, concrete: bool) -> tuple[Round, NativeModel]:
    """Train ``case.steps`` steps by hand on a fresh model; the loop only is timed."""
    import tensorflow as tf

    model = NativeModel(setup, case.compile)
    call = model.step.get_concrete_function() if concrete else model.step
    n = len(setup.x)
    steps_per_epoch = n // case.batch_size
    order = np.empty(0, dtype=np.int64)
    current_epoch = -1
    logs: dict[int, float] = {}
    start = time.perf_counter()
    for step in range(case.steps):
        epoch, within = divmod(step, steps_per_epoch)
        if epoch != current_epoch:
            order = np.random.default_rng([SEED, epoch]).permutation(n)
            current_epoch = epoch
        idx = np.sort(order[within * case.batch_size:(within + 1) * case.batch_size])
        x = tf.convert_to_tensor(setup.x[idx])
        y = tf.convert_to_tensor(setup.y[idx])
        loss = call(x, y, tf.constant(learning_rate(step, case.steps), tf.float32))
        if (step + 1) % LOG_EVERY == 0 or step + 1 == case.steps:
            loss.numpy()
            logs[step + 1] = time.perf_counter()
    rate, first = _steady(case, start, logs)
    return Round(rate, first), model


def native_first_step(setup: NativeSetup, case: Case) -> float:
    """Seconds for a fresh model's first step (trace, compile, run) and its ``.numpy()``."""
    import tensorflow as tf

    model = NativeModel(setup, case.compile)
    idx = np.arange(case.batch_size)
    start = time.perf_counter()
    x = tf.convert_to_tensor(setup.x[idx])
    y = tf.convert_to_tensor(setup.y[idx])
    model.step(x, y, tf.constant(learning_rate(0, case.steps), tf.float32)).numpy()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- the benchmark


def _same_work(case: Case, cf: Round, model: NativeModel) -> float:
    """Max |difference| between crossframe's final weights and the native loop's."""
    from crossframe.checkpoint import load_checkpoint

    if cf.checkpoint is None:
        raise RuntimeError(f"{case.name}: crossframe run wrote no checkpoint to compare against")
    theirs = load_checkpoint(cf.checkpoint).weights
    ours = model.weights()
    if set(theirs) != set(ours):
        raise RuntimeError(f"{case.name}: parameter names differ: {sorted(theirs)} vs {sorted(ours)}")
    return max(float(np.max(np.abs(theirs[k] - ours[k]))) for k in ours)


def bench_case(case: Case, clock: RunClock, output_dir: Path, log: Callable[[str], None],
               warmup_s: float = 2.0) -> dict[str, Any]:
    """Warm up and check both sides, probe the first step, then time interleaved rounds."""
    import tensorflow as tf

    setup = native_setup(case)
    cf0 = crossframe_round(case, clock, output_dir, f"{case.name}-warmup")
    _, model0 = native_loop(setup, case, concrete=False)
    diff = _same_work(case, cf0, model0)
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        crossframe_round(case, clock, output_dir, f"{case.name}-warmup")
        native_loop(setup, case, concrete=False)
        native_loop(setup, case, concrete=True)
    log(f"  {case.name}: warmed up; after {case.steps} steps the weights of both sides differ by at most {diff:.2e}")

    first_cf: list[float] = []
    first_native: list[float] = []
    for _ in range(pick(FIRST_STEP_PROBES, FIRST_STEP_PROBES, 1, warmup_s < 3.0)):
        first_cf.append(crossframe_first_step(case, clock, output_dir))
        first_native.append(native_first_step(setup, case))

    rounds: dict[str, list[Round]] = {side: [] for side in SIDES}
    for r in range(case.rounds):
        order = SIDES[r % 3:] + SIDES[:r % 3]
        for side in order:
            if side == "crossframe":
                rounds[side].append(crossframe_round(case, clock, output_dir, f"{case.name}-{r}"))
            else:
                rounds[side].append(native_loop(setup, case, concrete=side == "native_concrete")[0])
        log(f"  {case.name} round {r + 1}/{case.rounds}: " + ", ".join(
            f"{side} {rounds[side][-1].steps_per_s:.1f}" for side in SIDES) + " steps/s")

    rates = {side: [x.steps_per_s for x in rounds[side]] for side in SIDES}
    cf_med, native_med, concrete_med = (median(rates[side]) for side in SIDES)
    params = sum(a * b + b for a, b in zip(setup.widths[:-1], setup.widths[1:], strict=True))
    return {
        "case": case.name,
        "description": case.description,
        "widths": setup.widths,
        "params": params,
        "batch_size": case.batch_size,
        "compile": case.compile,
        "steps_per_round": case.steps,
        "timed_steps_per_round": case.steps - LOG_EVERY,
        "rounds": case.rounds,
        "log_every": LOG_EVERY,
        "tensorflow": tf.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "crossframe_steps_per_s": cf_med,
        "native_steps_per_s": native_med,
        "native_concrete_steps_per_s": concrete_med,
        "ratio": cf_med / native_med,
        "ratio_vs_concrete": cf_med / concrete_med,
        "paired_ratio_median": median(c / n for c, n in zip(rates["crossframe"], rates["native"], strict=True)),
        "overhead_us_per_step": (1.0 / cf_med - 1.0 / native_med) * 1e6,
        "overhead_vs_concrete_us_per_step": (1.0 / cf_med - 1.0 / concrete_med) * 1e6,
        "crossframe_ms_per_step": 1e3 / cf_med,
        "native_ms_per_step": 1e3 / native_med,
        "native_concrete_ms_per_step": 1e3 / concrete_med,
        "crossframe_spread": spread(rates["crossframe"]),
        "native_spread": spread(rates["native"]),
        "native_concrete_spread": spread(rates["native_concrete"]),
        "crossframe_rounds_steps_per_s": rates["crossframe"],
        "native_rounds_steps_per_s": rates["native"],
        "native_concrete_rounds_steps_per_s": rates["native_concrete"],
        "crossframe_first_step_s": median(first_cf),
        "native_first_step_s": median(first_native),
        "crossframe_first_step_probes_s": first_cf,
        "native_first_step_probes_s": first_native,
        "run_wall_s": median(x.wall_s for x in rounds["crossframe"]),
        "warmup_weights_max_abs_diff": diff,
    }


def run(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every case; one result dict per case."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    log = log or (lambda text: print(text, file=sys.stderr))
    # every native round builds a fresh tf.function from the same code, and TF's retracing
    # detector (keyed by code object) would warn about it: quieten TF's Python logger here
    tf.get_logger().setLevel("ERROR")
    log(f"tensorflow_step: tensorflow {tf.__version__}")
    warmup_s = (0.0 if smoke() else 0.5) if quick else 3.0
    with RunClock(CLOCK).installed() as clock, tempfile.TemporaryDirectory(prefix="crossframe-bench-") as tmp:
        return [bench_case(case, clock, Path(tmp), log, warmup_s=warmup_s) for case in first_if_smoke(cases(quick))]


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`run`'s results."""
    headers = ["case", "steps x rounds", "crossframe steps/s", "native steps/s (tf.function)",
               "native steps/s (concrete fn)", "ratio cf/native", "overhead us/step",
               "first step s (cf / native)"]
    body = [
        [row["description"], f"{row['steps_per_round']} x {row['rounds']}",
         f"{row['crossframe_steps_per_s']:.1f}", f"{row['native_steps_per_s']:.1f}",
         f"{row['native_concrete_steps_per_s']:.1f}", f"{row['ratio']:.3f}",
         f"{row['overhead_us_per_step']:+.0f}",
         f"{row['crossframe_first_step_s']:.2f} / {row['native_first_step_s']:.2f}"]
        for row in rows
    ]
    return markdown_table(headers, body)


if __name__ == "__main__":
    from benchmarks.__main__ import main

    sys.exit(main(["--only", "tensorflow_step", *sys.argv[1:]]))
