"""The one training loop: every backend trains through it.

It owns the data order, the learning-rate schedule, evaluation, early stopping, logging,
checkpoints and lifecycle hooks; a backend supplies only compiled steps (see
:mod:`crossframe.backend`). Device values are fetched only on log steps and evaluations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossframe import __version__
from crossframe.backend import Backend, WorldInfo
from crossframe.checkpoint import remove_stale_temporaries, save_checkpoint
from crossframe.config.schema import RunConfig
from crossframe.errors import ConfigError, RunError
from crossframe.metrics import MAX_SCORE_VALUES, EvalTotals, loss, needs_scores
from crossframe.models.spec import ModelSpec
from crossframe.perf import peak_host_memory_mb, raise_peak
from crossframe.train.early_stopping import EarlyStopping
from crossframe.train.interrupts import DeferredSignals, RunInterrupted
from crossframe.train.monitor import ResourceMonitor
from crossframe.train.observers import Observers
from crossframe.train.profile import ProfileWindow
from crossframe.train.progress import Progress


def evaluate_dataset(backend: Backend, state: Any, dataset: Any, batch_size: int,
                     metric_fns: dict[str, Callable[[EvalTotals], Any]], prefix: str = "val/") -> dict[str, Any]:
    """Loss and metrics of ``state`` over all of ``dataset`` (anything with ``eval_batches``),
    fetched from the device once (with score metrics, the logits too; see :func:`gather_eval`)."""
    totals = gather_eval(backend, state, dataset, batch_size, needs_scores(metric_fns))
    metrics: dict[str, Any] = {f"{prefix}loss": loss(totals)}
    for name, fn in metric_fns.items():
        metrics[f"{prefix}{name}"] = fn(totals)
    return metrics


def gather_eval(backend: Backend, state: Any, dataset: Any, batch_size: int, scores: bool) -> EvalTotals:
    """Every batch's device sums, fetched once. With ``scores``, each batch's ``logits`` stay on the
    device until that fetch (a backend whose ``eval_step`` gives none has them from ``predict``) and
    the host labels join them, at most :data:`~crossframe.metrics.MAX_SCORE_VALUES` values."""
    outs: list[dict[str, Any]] = []
    labels: list[np.ndarray] = []
    kept = 0
    for batch in dataset.eval_batches(batch_size):
        out = backend.eval_step(state, batch)
        if not scores:
            out.pop("logits", None)  # frees the device buffer now
        else:
            if "logits" not in out:
                out["logits"] = backend.predict(state, batch["x"])
            labels.append(batch["y"])
            kept += math.prod(int(d) for d in out["logits"].shape)
            if kept > MAX_SCORE_VALUES:
                raise ConfigError(f"train.metrics: score metrics keep every example's scores, and this evaluation "
                                  f"has more than {MAX_SCORE_VALUES} (examples x classes); evaluate a smaller "
                                  "split or use confusion metrics only")
        outs.append(out)
    return EvalTotals.from_batches(backend.fetch(outs), labels if scores else None)


def _mean(values: list[Any]) -> float:
    """The mean of a window's fetched scalars as a Python float (``np.mean`` costs tens of microseconds
    at a log step, inside the timed loop; this a few)."""
    try:
        return sum(map(float, values)) / len(values)
    except (TypeError, ValueError):  # a plugin's extra that is not a scalar
        return float(np.mean(values))


@dataclass
class Run:
    """A live run, as lifecycle hooks see it. Set ``should_stop`` to end it after this step."""

    config: RunConfig
    run_dir: Path
    backend: Backend
    spec: ModelSpec
    total_steps: int
    device: str
    step: int = 0
    should_stop: bool = False
    status: str = "running"
    last_eval: dict[str, Any] = field(default_factory=dict)
    last_checkpoint: Path | None = None
    flops_per_step: float | None = None  # model FLOPs of one optimizer step, when known
    peak_flops: float | None = None  # the device's measured matmul peak
    peak_source: str | None = None  # where peak_flops comes from (see crossframe.perf.Peak)
    peak_key: str | None = None  # the peak cache's key for this framework, device, precision and threads
    world: WorldInfo | None = None  # this process's place in a multi-worker job (None: one process)
    privacy: Any = None  # DP-SGD: a crossframe.privacy.accounting.PrivacyLedger (epsilon at each eval)
    lora_base: dict[str, Any] | None = None  # LoRA: the base's reference; checkpoints then hold adapters only

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (rank 0, or the only process)."""
        return self.world is None or self.world.is_main

    @property
    def backend_name(self) -> str:
        """The backend's registered name."""
        return self.config.backend


class Trainer:
    """Drives one :class:`Run` from its current step to its budget."""

    def __init__(self, run: Run, state: Any, loader: Any, val: Any,
                 schedule: Callable[[int], float], metric_fns: dict[str, Callable[[EvalTotals], Any]],
                 loggers: list[Any], hook: Any, progress: Progress,
                 early_stopping: EarlyStopping | None) -> None:
        self.run, self.state, self.loader, self.val = run, state, loader, val
        self.schedule, self.metric_fns, self.loggers, self.hook = schedule, metric_fns, loggers, hook
        self.progress, self.early_stopping = progress, early_stopping
        cfg = run.config.train
        self.log_every, self.eval_every, self.ckpt_every = cfg.log_every, cfg.eval_every, cfg.checkpoint_every
        # hooks and loggers that raise are disabled, not fatal (the runner passes its own Observers)
        self.observers = hook if isinstance(hook, Observers) else Observers(hook, loggers)
        self.observers.run = run
        self._saved_step: int | None = None
        if run.is_main:
            remove_stale_temporaries(run.run_dir / "checkpoints")  # left by a killed save
        self.monitor = (ResourceMonitor(lambda: run.backend.peak_device_memory_mb(run.device),
                                        lambda: run.backend.device_memory_mb(run.device))
                        if cfg.resource_metrics else None)
        self.profile = (ProfileWindow(run.backend, run.config.backend, run.device, run.run_dir, run.step,
                                      run.total_steps, cfg.profile_steps, cfg.profile_warmup)
                        if cfg.profile_steps and run.is_main else None)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> str:
        """Train until the budget is spent or something asks to stop; returns the status.

        SIGINT and SIGTERM are deferred past the running step (and any eval or save); then the
        loop writes a checkpoint and raises :class:`~crossframe.train.interrupts.RunInterrupted`.
        In a multi-process job the ranks first agree on the step to stop at (see :meth:`_stop_signal`).
        """
        run, backend, total = self.run, self.run.backend, self.run.total_steps
        pending: list[dict[str, Any]] = []
        window = (time.perf_counter(), run.step)
        monitor, clock, profile = self.monitor, time.perf_counter, self.profile
        with DeferredSignals() as signals:
            stop: int | None = None
            while run.step < total and not run.should_stop and (stop := self._stop_signal(signals)) is None:
                if profile is None:
                    quiet_end = self._next_event(run.step) - 1
                    if quiet_end > run.step:
                        self._quiet_steps(quiet_end, pending, signals)
                        continue
                step = run.step
                if profile is not None:
                    profile.before(step)
                started = clock()
                batch = self.loader.batch(step)
                fetched = clock()
                lr = self.schedule(step)
                self.state, out = backend.train_step(self.state, batch, lr)
                if monitor is not None:
                    monitor.record(fetched - started, clock() - started)
                pending.append(out)
                run.step = done = step + 1
                if profile is not None:
                    profile.after(done)
                logs = None
                if done % self.log_every == 0 or done == total:
                    logs, window = self._log(pending, lr, window)
                    pending = []
                self.observers.call("on_step_end", run=run, step=done, batch=batch, logs=logs)
                if logs is None:
                    self.progress.update(done)
                if self.eval_every and done % self.eval_every == 0 and done != total:
                    self.evaluate()
                if self.ckpt_every and done % self.ckpt_every == 0 and done != total:
                    self.save()
            if stop is not None:
                if profile is not None:
                    profile.close()
                run.status = "interrupted"
                path = self.save() if self._saved_step != run.step else run.last_checkpoint
                raise RunInterrupted(run.run_dir, run.step, path, stop)
            run.status = "completed" if run.step >= total else "stopped"
            if run.last_eval.get("step") != run.step:
                self.evaluate()
            self.save()
            if signals.received is not None and not self._multiprocess:  # during the final eval or save
                # (it finished first); in a job the ranks ended together and complete together
                raise RunInterrupted(run.run_dir, run.step, run.last_checkpoint, signals.received)
        if self.observers.fatal is not None:  # strict plugins: checkpointed above, now stop
            raise RunError(f"{self.observers.fatal}; checkpoint written to '{run.last_checkpoint}'")
        return run.status

    def _next_event(self, step: int) -> int:
        """The first step count after ``step`` at which the loop logs, evaluates, saves or ends."""
        def next_multiple(every: int) -> int:
            return (step // every + 1) * every

        events = [self.run.total_steps, next_multiple(self.log_every)]
        events += [next_multiple(every) for every in (self.eval_every, self.ckpt_every) if every]
        return min(events)

    def _quiet_steps(self, end: int, pending: list[dict[str, Any]], signals: DeferredSignals) -> None:
        """Train up to step count ``end``, through steps at which nothing is logged, evaluated or saved.

        The same steps as the loop's general body, with its per-step decisions taken once for the stretch:
        between two log steps the loop's own code is a few lines, so the hooks, the resource monitor and
        the progress bar cost nothing when they are off. An ``on_step_end`` hook still sees every step (and
        may stop the run); a signal stops a single process after the running step.
        """
        run, backend, loader, schedule = self.run, self.run.backend, self.loader, self.schedule
        train_step, batch_of, append, clock = backend.train_step, loader.batch, pending.append, time.perf_counter
        record = self.monitor.record if self.monitor is not None else None
        step_end = self.observers.call if self.observers.implemented("on_step_end") else None
        progress = self.progress.update if self.progress.enabled else None
        watch_signals = not self._multiprocess  # the ranks of a job agree on stopping at log steps only
        state, step = self.state, run.step
        try:
            while step < end:
                started = clock()
                batch = batch_of(step)
                fetched = clock()
                state, out = train_step(state, batch, schedule(step))
                if record is not None:
                    record(fetched - started, clock() - started)
                append(out)
                step += 1
                run.step = step
                if step_end is not None:
                    self.state = state
                    step_end("on_step_end", run=run, step=step, batch=batch, logs=None)
                    if run.should_stop:
                        return
                if progress is not None:
                    progress(step)
                if watch_signals and signals.received is not None:
                    return
        finally:
            self.state = state

    @property
    def _multiprocess(self) -> bool:
        """Whether this loop is one rank of a job of several processes."""
        return self.run.world is not None and self.run.world.world_size > 1

    def _stop_signal(self, signals: DeferredSignals) -> int | None:
        """The signal that stops the loop before the next step, or None to go on.

        One process stops as soon as it has a signal. The ranks of a job must stop at the same step,
        or the ranks still stepping wait in a collective for the ones that stopped (a Ctrl-C reaches
        the launcher, which passes it on, so ranks see it between different steps). So they agree at
        every log boundary (``train.log_every``) through :meth:`Backend.max_over_ranks`, where the loop
        syncs anyway: a job stops at most ``log_every`` steps after the signal, and all ranks save the
        same step.
        """
        if not self._multiprocess:
            return signals.received
        if self.run.step % self.log_every:
            return None
        return self.run.backend.max_over_ranks(signals.received or 0) or None

    def _log(self, pending: list[dict[str, Any]], lr: float,
             window: tuple[float, int]) -> tuple[dict[str, Any], tuple[float, int]]:
        host = self.run.backend.fetch(pending)  # the one sync of this window
        now, done = time.perf_counter(), self.run.step
        steps = done - window[1]
        logs: dict[str, Any] = {
            "train/loss": _mean([h["loss"] for h in host]),
            "train/lr": lr,
            "train/epoch": done / self.loader.steps_per_epoch,
        }
        for key in host[0]:  # grad_norm (with clipping), distill_loss (with a teacher), a plugin's extras
            if key != "loss":
                logs[f"train/{key}"] = _mean([h[key] for h in host])
        if steps > 0 and now > window[0]:
            logs["train/steps_per_sec"] = steps / (now - window[0])
            logs["train/samples_per_sec"] = logs["train/steps_per_sec"] * self.loader.batch_size
            tokens = getattr(self.loader, "tokens_per_step", None)
            if tokens:
                logs["train/tokens_per_sec"] = logs["train/steps_per_sec"] * tokens
            if self.run.flops_per_step and self.run.peak_flops:
                logs["train/mfu"] = self._mfu(self.run.flops_per_step * logs["train/steps_per_sec"])
        if self.monitor is not None:
            logs.update(self.monitor.window())
        if not math.isfinite(logs["train/loss"]):
            raise RunError(f"train loss became {logs['train/loss']} by step {done}; "
                           "lower train.optimizer.lr or set train.clip_norm")
        self._emit(done, logs)
        self.progress.update(done, logs)
        return logs, (now, done)

    def _mfu(self, achieved: float) -> float:
        """Achieved over peak FLOP/s, in (0, 1]: a window faster than the probed peak proves the probe
        low (it ran under load), so the achieved rate becomes the peak, here and in the cache."""
        run = self.run
        assert run.peak_flops is not None
        if achieved > run.peak_flops:
            run.peak_flops, run.peak_source = achieved, "observed"
            if run.peak_key and run.is_main:
                raise_peak(run.peak_key, achieved, "observed")
        return achieved / run.peak_flops

    def _emit(self, step: int, metrics: dict[str, Any]) -> None:
        self.observers.log_metrics(step, metrics)

    # ------------------------------------------------------------------ eval and checkpoints

    def evaluate(self) -> dict[str, Any]:
        """Evaluate on the validation split; one device sync for the whole pass."""
        run = self.run
        metrics = evaluate_dataset(run.backend, self.state, self.val, run.config.train.eval_batch_size,
                                   self.metric_fns)
        if run.privacy is not None:
            metrics["privacy/epsilon"] = run.privacy.epsilon(run.step)
        metrics["sys/peak_host_mb"] = peak_host_memory_mb()
        run.last_eval = {"step": run.step, **metrics}
        self._emit(run.step, metrics)
        scalars = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if np.ndim(v) == 0)
        self.progress.print(f"step {run.step}: {scalars}")
        self.observers.call("on_eval_end", run=run, step=run.step, metrics=metrics)
        if hasattr(self.schedule, "observe"):  # reduce-on-plateau: the next steps get the new rate
            self.schedule.observe(metrics)
        if self.early_stopping and self.early_stopping.update(run.step, metrics):
            es = self.early_stopping
            self.progress.print(f"early stopping: {es.monitor} has not improved for {es.patience} evals "
                                f"(best {es.best:.4f} at step {es.best_step})")
            run.should_stop = True
        return metrics

    def save(self) -> Path | None:
        """Write a checkpoint of the current step and tell the hooks (rank 0 only; every rank
        takes part in gathering the weights)."""
        run = self.run
        weights, opt_state = run.backend.export_state(self.state)
        if not run.is_main:
            return None
        scalars = {k: v for k, v in run.last_eval.items() if np.ndim(v) == 0}
        state = {
            "crossframe_version": __version__,
            "backend": run.config.backend,
            "model": run.spec.to_json(),
            "optimizer": run.config.train.optimizer.name,
            "epoch": run.step / self.loader.steps_per_epoch,
            "status": run.status,
            "last_eval": scalars,
            "early_stopping": self.early_stopping.state() if self.early_stopping else None,
            "schedule": self.schedule.state() if hasattr(self.schedule, "state") else None,
            "time": time.time(),
        }
        if run.privacy is not None:  # the (epsilon, delta) guarantee, stored with the weights
            state["privacy"] = run.privacy.summary(run.step)
        if run.lora_base is not None:  # adapters and their optimizer state, and what rebuilds the base
            from crossframe.nn.lora_checkpoint import STATE_KEY, adapters_only

            weights, opt_state = adapters_only(weights, opt_state)
            state[STATE_KEY] = run.lora_base
        path = save_checkpoint(run.run_dir / "checkpoints", run.step, weights, opt_state, state,
                               run.config.train.keep_checkpoints)
        run.last_checkpoint, self._saved_step = path, run.step
        self.observers.call("on_checkpoint_saved", run=run, step=run.step, path=path)
        return path
