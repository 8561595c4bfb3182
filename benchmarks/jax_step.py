"""Training throughput: ``crossframe.run`` on the jax backend against a hand-written jax + optax loop.

Both sides train the same model (same canonical initial weights) on the same numpy training
split, in the same batch order, with AdamW (weight decay on weights only), the same warmup +
cosine learning rate set from the host on every step, in the same process. Before timing, the
benchmark steps both sides side by side for ``log_every`` steps and reports how far their weights
and losses differ (rounding: they do the same work), and after the warm-up round, how far the final
weights of the two full runs differ (more: Adam amplifies last-bit differences over hundreds of
steps, see :func:`lockstep_diff`).

The native side is what a JAX user would write: a pure forward function on a dict of arrays,
``optax.inject_hyperparams(optax.adamw)`` with its learning rate set from a traced argument,
``jax.value_and_grad``, ``optax.apply_updates``, one ``jax.jit`` with the parameters and optimizer
state donated, the numpy batch passed straight to the jitted call, and the loss fetched with
``float()`` every ``log_every`` steps.

What is timed
-------------
Each round is a fresh start on both sides (so each compiles its step again):

crossframe
    ``crossframe.run(config, quiet=True)`` with ``eval_every: 0`` and ``checkpoint_every: 0``.
    A plugin notes the time at ``on_run_start`` (right before ``Trainer.fit``) and a logger
    notes the time of the train logs at step ``log_every`` (the first one: after the first
    ``fetch``, the first host sync) and at the last step. Everything the loop does per step is
    inside: ``loader.batch``, the schedule, ``backend.train_step``, the pending list, the fetch +
    ``metrics.jsonl`` write every ``log_every`` steps.
native
    The hand-written loop, timed at the same three points: its start, after the loss fetch at
    step ``log_every``, after the last fetch.

Reported per side: the median over rounds of the *steady* rate (steps ``log_every + 1 .. N``,
after compilation), its ratio (crossframe / native; 1.0 means no overhead), the per-step
overhead in microseconds, the median *first window* (start to the first log: trace + compile +
``log_every`` steps), and the *first step*: a separate cold measurement per round of one fresh
state's first ``train_step`` (crossframe's backend API, exactly what ``crossframe.run`` calls)
or first call of the freshly jitted native step, until its outputs are ready: tracing plus XLA
compilation plus one step.

Cores: both sides share the process, so they always run on the same cores. By default the
benchmark pins the process (every thread, including XLA's CPU thread pool) to one core while it
runs: on a small shared machine the second core comes and goes (another process, the hypervisor),
and rates jump between two modes about 2x apart from round to round, which buries a per-step
overhead of microseconds. XLA's ``XLA_FLAGS`` thread settings are not used because recent jaxlib's
CPU runtime ignores them. ``--cores 0`` leaves the affinity alone; each row says what was used.

Rounds alternate the order (crossframe then native, native then crossframe, ...) to cancel
drift. No timing is asserted anywhere.

Run it alone with ``python -m benchmarks.jax_step [--quick] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import crossframe
from benchmarks.common import (
    LOG_EVERY,
    LR,
    SEED,
    WEIGHT_DECAY,
    RunClock,
    canonical_start,
    first_if_smoke,
    learning_rate,
    machine_info,
    markdown_table,
    median,
    mlp_run_config,
    pick,
    pin_to_one_core,
    spread,
)

TITLE = "Training step throughput: crossframe (jax backend) vs native jax + optax"

BETAS = (0.9, 0.999)
EPS = 1e-8
CLOCK = "jax_benchmark_clock"


@dataclass(frozen=True)
class Case:
    """One model / data / batch-size regime."""

    name: str
    description: str
    data: dict[str, Any]
    model: dict[str, Any]
    batch_size: int
    steps: int
    rounds: int


def cases(quick: bool = False) -> list[Case]:
    """The quickstart MLP (tiny steps, overhead-bound), a bigger MLP (compute-bound) and a small CNN."""
    return [
        Case("mlp-digits", "quickstart MLP on digits: 64-128-64-10, batch 64",
             {"name": "digits"}, {"name": "mlp", "hidden": [128, 64], "activation": "relu"}, 64,
             steps=pick(2000, 200, 40, quick), rounds=pick(11, 3, 1, quick)),
        Case("mlp-512x512", "MLP on synthetic data: 256-512-512-10, batch 256",
             {"name": "synthetic", "samples": 8192, "features": 256, "classes": 10, "noise": 8.0},
             {"name": "mlp", "hidden": [512, 512], "activation": "relu"}, 256,
             steps=pick(400, 60, 40, quick), rounds=pick(9, 3, 1, quick)),
        Case("cnn-digits", "CNN on digits: conv 16, conv 32 (3x3), dense 64, batch 64",
             {"name": "digits"}, {"name": "cnn", "channels": [16, 32], "kernel_size": 3,
                                                    "hidden": 64, "activation": "relu"}, 64,
             steps=pick(400, 60, 40, quick), rounds=pick(9, 3, 1, quick)),
    ]


# --------------------------------------------------------------------------- timing points


@dataclass
class Times:
    """The three timing points of one loop, and the loss logged last."""

    start: float = math.nan
    first_log: float = math.nan
    end: float = math.nan
    final_loss: float = math.nan

    def steady_rate(self, steps: int) -> float:
        """Steps per second after the first log (compiled, warm)."""
        return (steps - LOG_EVERY) / (self.end - self.first_log)

    @property
    def first_window(self) -> float:
        """Seconds from the start to the first log: trace + compile + ``LOG_EVERY`` steps."""
        return self.first_log - self.start


# --------------------------------------------------------------------------- crossframe side


def crossframe_config(case: Case, output_dir: Path, name: str) -> dict[str, Any]:
    """The run config of ``case``: no intermediate eval or checkpoint, logging every ``LOG_EVERY``."""
    return mlp_run_config("jax", name, output_dir, case.data, case.model, case.steps, case.batch_size, CLOCK,
                          optimizer={"betas": list(BETAS), "eps": EPS})


def crossframe_round(case: Case, clock: RunClock, output_dir: Path, name: str) -> tuple[Times, Path | None]:
    """Run ``crossframe.run`` once; the clock plugin times its training loop."""
    result = crossframe.run(crossframe_config(case, output_dir, name), quiet=True)
    times = Times(clock.start, clock.first_log, clock.end, clock.final_loss)
    if result.steps != case.steps or math.isnan(times.end) or math.isnan(times.first_log):
        raise RuntimeError(f"{case.name}: crossframe run stopped at step {result.steps} of {case.steps}")
    return times, result.checkpoint


# --------------------------------------------------------------------------- shared setup


@dataclass
class Problem:
    """What both sides start from (built untimed): the training split, the spec and initial weights."""

    x: np.ndarray
    y: np.ndarray
    spec: Any
    weights: dict[str, np.ndarray]


def problem(case: Case) -> Problem:
    """The same training split and canonical initial weights ``crossframe.run`` starts from."""
    start = canonical_start(case.data, case.model)
    return Problem(start.x, start.y, start.spec, start.weights)


class BatchOrder:
    """The sorted example indices of each step: a seeded permutation per epoch (cached), sliced in order."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.steps_per_epoch = n // batch_size
        self.epoch = -1
        self.order = np.empty(0, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        """Example indices of 0-based ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch != self.epoch:
            self.order = np.random.default_rng([SEED, epoch]).permutation(self.n)
            self.epoch = epoch
        return np.sort(self.order[within * self.batch_size:(within + 1) * self.batch_size])


# --------------------------------------------------------------------------- native side


def native_forward(model: dict[str, Any]) -> Callable[[dict[str, Any], Any], Any]:
    """A hand-written pure forward pass (the same math as crossframe's mlp / cnn)."""
    import jax
    import jax.numpy as jnp

    if model["name"] == "mlp":
        n_layers = len(model["hidden"]) + 1

        def mlp(params: dict[str, Any], x: Any) -> Any:
            h = x.reshape(x.shape[0], -1)
            for i in range(n_layers):
                h = h @ params[f"layers.{i}.weight"] + params[f"layers.{i}.bias"]
                if i < n_layers - 1:
                    h = jax.nn.relu(h)
            return h

        return mlp

    n_conv = len(model["channels"])

    def cnn(params: dict[str, Any], x: Any) -> Any:
        h = x
        for i in range(n_conv):
            h = jax.lax.conv_general_dilated(h, params[f"conv.{i}.weight"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(h + params[f"conv.{i}.bias"])
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(h @ params["fc.0.weight"] + params["fc.0.bias"])
        return h @ params["fc.1.weight"] + params["fc.1.bias"]

    return cnn


def native_step(prob: Problem, model: dict[str, Any]) -> tuple[Callable[..., Any], Any, Any]:
    """A freshly jitted native train step, its initial params and optax state."""
    import jax
    import optax

    forward = native_forward(model)
    mask = {p.name: p.decay for p in prob.spec.table}
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=LR, b1=BETAS[0], b2=BETAS[1], eps=EPS,
                                               weight_decay=WEIGHT_DECAY, mask=mask)

    def loss_fn(params: dict[str, Any], x: Any, y: Any) -> Any:
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params: dict[str, Any], opt_state: Any, x: Any, y: Any, lr: Any) -> tuple[Any, Any, Any]:
        opt_state.hyperparams["learning_rate"] = lr
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    cpu = jax.devices("cpu")[0]
    params = jax.device_put({k: np.array(v, copy=True) for k, v in prob.weights.items()}, cpu)
    # committed like the params: a mix of committed and uncommitted inputs makes the second call recompile
    return step, params, jax.device_put(tx.init(params), cpu)


def native_loop(prob: Problem, case: Case) -> tuple[Times, dict[str, np.ndarray]]:
    """Train ``case.steps`` steps by hand from a fresh jit; returns its timing points and final weights."""
    import jax

    step_fn, params, opt_state = native_step(prob, case.model)
    steps = case.steps
    order = BatchOrder(len(prob.x), case.batch_size)
    times = Times()
    times.start = time.perf_counter()
    for step in range(steps):
        idx = order.indices(step)
        params, opt_state, loss = step_fn(params, opt_state, prob.x[idx], prob.y[idx],
                                          np.float32(learning_rate(step, steps)))
        done = step + 1
        if done % LOG_EVERY == 0 or done == steps:
            times.final_loss = float(loss)
            if done == LOG_EVERY:
                times.first_log = time.perf_counter()
    times.end = time.perf_counter()
    host = jax.device_get(params)
    return times, {k: np.asarray(v) for k, v in host.items()}


# --------------------------------------------------------------------------- first steps (compile)


def crossframe_first_step(prob: Problem, case: Case) -> float:
    """Seconds of a fresh crossframe state's first ``train_step`` until its outputs are on the host."""
    from crossframe.backend import TrainSetup
    from crossframe.train.runner import make_backend

    backend = make_backend("jax")
    opt = {"lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WEIGHT_DECAY}
    state = backend.create_state(TrainSetup(prob.spec, prob.weights, "adamw", opt, "cpu"))
    idx = BatchOrder(len(prob.x), case.batch_size).indices(0)
    batch = {"x": prob.x[idx], "y": prob.y[idx]}
    start = time.perf_counter()
    state, out = backend.train_step(state, batch, learning_rate(0, case.steps))
    backend.fetch(out)
    return time.perf_counter() - start


def native_first_step(prob: Problem, case: Case) -> float:
    """Seconds of a freshly jitted native step's first call until its loss is on the host."""
    step_fn, params, opt_state = native_step(prob, case.model)
    idx = BatchOrder(len(prob.x), case.batch_size).indices(0)
    start = time.perf_counter()
    _, _, loss = step_fn(params, opt_state, prob.x[idx], prob.y[idx], np.float32(learning_rate(0, case.steps)))
    float(loss)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- same work


def lockstep_diff(prob: Problem, case: Case, steps: int = LOG_EVERY) -> tuple[float, float]:
    """Both sides stepped side by side on the same batches: max |weight| and |loss| differences.

    Over a long run the two programs drift apart: XLA fuses them differently (e.g. where it forms
    fused multiply-adds), so their updates differ in the last bit, and Adam, which divides by the
    root of tiny second moments, amplifies such differences. Over the first ``steps`` steps they
    must agree to rounding.
    """
    import jax

    from crossframe.backend import TrainSetup
    from crossframe.train.runner import make_backend

    backend = make_backend("jax")
    opt = {"lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WEIGHT_DECAY}
    state = backend.create_state(TrainSetup(prob.spec, prob.weights, "adamw", opt, "cpu"))
    step_fn, params, opt_state = native_step(prob, case.model)
    loss_diff = 0.0
    order = BatchOrder(len(prob.x), case.batch_size)
    for step in range(steps):
        idx = order.indices(step)
        lr = learning_rate(step, case.steps)
        state, out = backend.train_step(state, {"x": prob.x[idx], "y": prob.y[idx]}, lr)
        params, opt_state, loss = step_fn(params, opt_state, prob.x[idx], prob.y[idx], np.float32(lr))
        loss_diff = max(loss_diff, abs(float(backend.fetch(out)["loss"]) - float(loss)))
    ours, theirs = backend.export_state(state)[0], jax.device_get(params)
    return max(float(np.max(np.abs(ours[k] - np.asarray(theirs[k])))) for k in ours), loss_diff


# --------------------------------------------------------------------------- the benchmark


def _max_diff(checkpoint: Path | None, native: dict[str, np.ndarray], case: Case) -> float:
    from crossframe.checkpoint import load_checkpoint

    if checkpoint is None:
        raise RuntimeError(f"{case.name}: crossframe run wrote no checkpoint to compare against")
    theirs = load_checkpoint(checkpoint).weights
    if set(theirs) != set(native):
        raise RuntimeError(f"{case.name}: parameter names differ: {sorted(theirs)} vs {sorted(native)}")
    return max(float(np.max(np.abs(theirs[k] - native[k]))) for k in native)


def bench_case(case: Case, clock: RunClock, output_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Warm up and check both sides, then time ``case.rounds`` interleaved rounds of each."""
    prob = problem(case)

    # Warm-up (untimed): imports, allocator, caches; it also proves both sides do the same work.
    cf0, checkpoint = crossframe_round(case, clock, output_dir, f"{case.name}-warmup")
    native0, native_weights = native_loop(prob, case)
    diff = _max_diff(checkpoint, native_weights, case)
    lockstep_w, lockstep_loss = lockstep_diff(prob, case)
    log(f"  {case.name}: warmed up; in lockstep for {LOG_EVERY} steps the weights differ by at most "
        f"{lockstep_w:.1e} and the losses by {lockstep_loss:.1e}; after {case.steps} steps the weights differ by "
        f"{diff:.1e} (last logged loss: crossframe window mean {cf0.final_loss:.4f}, native {native0.final_loss:.4f})")

    cf: list[Times] = []
    native: list[Times] = []
    cf_first: list[float] = []
    native_first: list[float] = []
    for r in range(case.rounds):
        order = ("crossframe", "native") if r % 2 == 0 else ("native", "crossframe")
        for side in order:
            if side == "crossframe":
                cf_first.append(crossframe_first_step(prob, case))
                cf.append(crossframe_round(case, clock, output_dir, f"{case.name}-{r}")[0])
            else:
                native_first.append(native_first_step(prob, case))
                native.append(native_loop(prob, case)[0])
        log(f"  {case.name} round {r + 1}/{case.rounds}: crossframe {cf[-1].steady_rate(case.steps):.1f} steps/s "
            f"(first step {cf_first[-1] * 1e3:.0f} ms), native {native[-1].steady_rate(case.steps):.1f} steps/s "
            f"(first step {native_first[-1] * 1e3:.0f} ms)")

    cf_rates = [t.steady_rate(case.steps) for t in cf]
    native_rates = [t.steady_rate(case.steps) for t in native]
    cf_med, native_med = median(cf_rates), median(native_rates)
    return {
        "case": case.name,
        "description": case.description,
        "model": case.model,
        "params": prob.spec.param_count,
        "batch_size": case.batch_size,
        "steps_per_round": case.steps,
        "rounds": case.rounds,
        "log_every": LOG_EVERY,
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
        "crossframe_first_step_s": median(cf_first),
        "native_first_step_s": median(native_first),
        "crossframe_first_window_s": median(t.first_window for t in cf),
        "native_first_window_s": median(t.first_window for t in native),
        "lockstep_steps": LOG_EVERY,
        "lockstep_weights_max_abs_diff": lockstep_w,
        "lockstep_loss_max_abs_diff": lockstep_loss,
        "warmup_weights_max_abs_diff": diff,
        "warmup_final_loss": {"crossframe_window_mean": cf0.final_loss, "native_last": native0.final_loss},
    }


def versions() -> dict[str, Any]:
    """jax, jaxlib and optax versions and the devices jax sees."""
    import jax
    import jaxlib
    import optax

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__,
            "jax_devices": [str(d) for d in jax.devices()]}


def run(quick: bool = False, log: Callable[[str], None] | None = None, cores: int | None = 1
        ) -> list[dict[str, Any]]:
    """Run every case; one result dict per case. ``cores=1`` (default) pins the process to one core
    for the duration (both sides alike); ``0`` or ``None`` leaves the affinity alone."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    undo, used = pin_to_one_core() if cores == 1 else ((lambda: None), "all")
    info = {**versions(), "cores": used}
    log(f"jax_step: jax {info['jax']}, optax {info['optax']}, devices {info['jax_devices']}, cores: {used}")
    try:
        with RunClock(CLOCK).installed() as clock, tempfile.TemporaryDirectory(prefix="crossframe-jax-bench-") as tmp:
            rows = [bench_case(case, clock, Path(tmp), log) for case in first_if_smoke(cases(quick))]
    finally:
        undo()
    for row in rows:
        row.update(info)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`run`'s results."""
    headers = ["case", "steps x rounds", "crossframe steps/s", "native steps/s", "ratio cf/native",
               "overhead us/step", "first step cf / native ms", "first window cf / native ms"]
    body = [
        [row["description"], f"{row['steps_per_round']} x {row['rounds']}",
         f"{row['crossframe_steps_per_s']:.1f}", f"{row['native_steps_per_s']:.1f}", f"{row['ratio']:.3f}",
         f"{row['overhead_us_per_step']:+.0f}",
         f"{row['crossframe_first_step_s'] * 1e3:.0f} / {row['native_first_step_s'] * 1e3:.0f}",
         f"{row['crossframe_first_window_s'] * 1e3:.0f} / {row['native_first_window_s'] * 1e3:.0f}"]
        for row in rows
    ]
    return markdown_table(headers, body)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.jax_step [--quick] [--out FILE.json]``: print the table, write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jax_step", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="few steps and rounds (a smoke test)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="write the JSON results here")
    parser.add_argument("--cores", type=int, default=1, choices=(0, 1),
                        help="1 (default): pin the process to one core; 0: use every core it may use")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(quick=args.quick, cores=args.cores)
    print(f"### {TITLE}\n\n{table(rows)}")
    if args.out is not None:
        result = {"quick": args.quick, "machine": machine_info(), "seconds": time.perf_counter() - started,
                  "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
