"""Helpers the benchmarks share: statistics, a Markdown table, the machine, smoke mode, the MLP step
benchmarks' settings and config, a clock inside ``crossframe.run``, and pinning to one core."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import crossframe


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (they must not be empty)."""
    return float(statistics.median(list(values)))


def spread(values: Sequence[float]) -> float:
    """Relative spread of ``values``: (max - min) / median, a quick read on how noisy they were."""
    mid = median(values)
    return float((max(values) - min(values)) / mid) if mid else 0.0


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    numeric = [all(isinstance(row[i], (int, float)) or _looks_numeric(row[i]) for row in rows) if rows else False
               for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _looks_numeric(value: Any) -> bool:
    text = str(value).strip().rstrip("x%").replace(",", "").replace("+", "", 1)
    if text == "-":  # a missing figure in a numeric column
        return True
    try:
        float(text.split()[0] if text else "nan")
    except ValueError:
        return False
    return True


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or :func:`platform.processor` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken: CPU, cores, OS, Python, torch (if installed) and the date."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_default_threads"] = torch.get_num_threads()  # in this process; benchmarks may set their own
    except ImportError:
        info["torch"] = None
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover - numpy is a core dependency
        info["numpy"] = None
    return info


# --------------------------------------------------------------------------- smoke mode

#: set by ``python -m benchmarks --smoke`` for its children: ``--quick`` made smaller still (one
#: round, a few steps): every code path runs, the numbers mean little. CI runs it.
SMOKE_ENV = "CROSSFRAME_BENCH_SMOKE"


def smoke() -> bool:
    """Whether this process runs in smoke mode (see :data:`SMOKE_ENV`)."""
    return os.environ.get(SMOKE_ENV, "") == "1"


def pick(full: int, quick: int, smoke_value: int, is_quick: bool) -> int:
    """A size for the mode: ``full``, ``quick`` or (quick under :func:`smoke`) ``smoke_value``."""
    if not is_quick:
        return full
    return smoke_value if smoke() else quick


# --------------------------------------------------------------------------- the MLP step benchmarks

#: shared by torch_step, jax_step and tensorflow_step: both sides train with these
SEED = 0
LR = 3e-3
WEIGHT_DECAY = 1e-4
WARMUP_STEPS = 30
MIN_LR_RATIO = 0.1  # the cosine schedule's default
LOG_EVERY = 20
VAL_FRACTION = 0.2


def learning_rate(step: int, steps: int) -> float:
    """Warmup then cosine to ``LR * MIN_LR_RATIO``: crossframe's ``cosine`` schedule, written out."""
    if step < WARMUP_STEPS:
        return LR * (step + 1) / WARMUP_STEPS
    span = max(steps - WARMUP_STEPS, 1)
    floor = LR * MIN_LR_RATIO
    return floor + 0.5 * (LR - floor) * (1.0 + math.cos(math.pi * min((step - WARMUP_STEPS) / span, 1.0)))


def mlp_run_config(backend: str, name: str, output_dir: Any, data: dict[str, Any], model: dict[str, Any],
                   steps: int, batch_size: int, clock: str, optimizer: dict[str, Any] | None = None,
                   log_every: int = LOG_EVERY, **train: Any) -> dict[str, Any]:
    """The ``crossframe.run`` config of an MLP step benchmark: AdamW, warmup + cosine, no intermediate
    eval or checkpoint, logging every ``log_every`` steps to the benchmark's clock logger."""
    return {
        "name": name,
        "backend": backend,
        "device": "cpu",
        "precision": "fp32",
        "seed": SEED,
        "output_dir": str(output_dir),
        "data": {**data, "val_fraction": VAL_FRACTION},
        "model": model,
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "optimizer": {"name": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY, **(optimizer or {})},
            "schedule": {"name": "cosine", "warmup_steps": WARMUP_STEPS},
            "eval_every": 0,
            "checkpoint_every": 0,
            "keep_checkpoints": 1,
            "log_every": log_every,
            **train,
        },
        "loggers": [{"name": clock}],
    }


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


# --------------------------------------------------------------------------- timing crossframe.run


class _ClockLogger:
    """A crossframe logger that notes when each train log of the loop arrives."""

    def __init__(self, clock: RunClock) -> None:
        self.clock = clock

    def log_config(self, config: dict) -> None:
        """Nothing to do."""

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Note the time of a train log (the final eval's log comes later, untimed)."""
        if "train/loss" not in metrics:
            return
        now = time.perf_counter()
        clock = self.clock
        clock.logs.setdefault(step, now)
        if step == clock.total and math.isnan(clock.final_loss):
            clock.end_faults = minor_faults()
            clock.final_loss = float(metrics["train/loss"])
            clock.logged_mfu = float(metrics.get("train/mfu", math.nan))

    def close(self) -> None:
        """Nothing to do."""


class RunClock:
    """A plugin timing the training loop of ``crossframe.run`` from inside the real run.

    ``start`` is taken in ``on_run_start`` (the run is set up; ``Trainer.fit`` is next) and
    ``logs[step]`` when each train log reaches the loggers (right after the loop's fetch of that
    window). ``end`` is the last step's log, ``first_log`` the first window's. Register it with
    :meth:`installed`; its logger is named ``name`` and must be in the run's ``loggers``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = math.nan
        self.logs: dict[int, float] = {}
        self.total = 0
        self.log_every = 0
        self.final_loss = math.nan
        self.logged_mfu = math.nan
        self.peak_flops = math.nan
        self.start_faults = self.end_faults = 0

    @crossframe.hookimpl
    def on_run_start(self, run: Any) -> None:
        """Start the clock."""
        self.total, self.log_every = run.total_steps, run.config.train.log_every
        self.peak_flops = float(run.peak_flops or math.nan)
        self.logs, self.final_loss, self.logged_mfu = {}, math.nan, math.nan
        self.start_faults = minor_faults()
        self.start = time.perf_counter()

    @crossframe.hookimpl
    def register_loggers(self, register: Any) -> None:
        """Register the logger that reads the clock."""
        register(self.name, self._make_logger, description="benchmark clock (internal)")

    def _make_logger(self, params: Any, run_dir: Any) -> _ClockLogger:
        return _ClockLogger(self)

    @property
    def end(self) -> float:
        """When the last step's train log arrived (NaN if it did not)."""
        return self.logs.get(self.total, math.nan)

    @property
    def first_log(self) -> float:
        """When the first window's train log arrived (NaN if it did not)."""
        return self.logs.get(self.log_every, math.nan)

    @property
    def seconds(self) -> float:
        """Length of the last timed loop."""
        return self.end - self.start

    @contextlib.contextmanager
    def installed(self) -> Iterator[RunClock]:
        """Register this clock with crossframe's plugin manager for the ``with`` block."""
        from crossframe.plugins import get_plugin_manager

        manager = get_plugin_manager()
        manager.register(self, self.name)
        try:
            yield self
        finally:
            manager.unregister(self.name)


# --------------------------------------------------------------------------- pinning


def _pin_all(cores: set[int]) -> None:
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # the thread may have ended meanwhile
            os.sched_setaffinity(int(tid), cores)


def pin_to_one_core() -> tuple[Callable[[], None], str]:
    """Pin every thread of this process (and those it starts later) to one core; returns an undo.

    XLA's CPU runtime in recent jaxlib ignores ``XLA_FLAGS`` thread settings; CPU affinity is
    what holds. Linux only; elsewhere nothing changes.
    """
    if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
        return (lambda: None), "all (affinity not supported here)"
    allowed = os.sched_getaffinity(0)
    core = min(allowed)
    _pin_all({core})

    def undo() -> None:
        _pin_all(allowed)  # threads started meanwhile inherited the pin: free them too

    return undo, f"1 (core {core} of {len(allowed)})"


def first_if_smoke(items: list[Any]) -> list[Any]:
    """Only the first of ``items`` (a benchmark's first case) in smoke mode; all of them otherwise."""
    return items[:1] if smoke() else items


@dataclass
class Start:
    """What both sides of an MLP step benchmark start from (built untimed): the training split that
    ``crossframe.run`` trains on, the model's spec and its canonical initial weights."""

    x: Any
    y: Any
    spec: Any
    weights: dict[str, Any]

    @property
    def widths(self) -> list[int]:
        """Layer widths of an ``mlp`` spec: inputs, hidden layers, outputs."""
        info = self.spec.data_info
        return [math.prod(info.input_shape), *self.spec.params["hidden"], info.num_outputs]

    @property
    def decays(self) -> dict[str, bool]:
        """Whether weight decay applies, by canonical parameter name."""
        return {p.name: p.decay for p in self.spec.table}


def canonical_start(data: dict[str, Any], model: dict[str, Any]) -> Start:
    """The training split of ``data`` (split as ``crossframe.run`` splits it) and ``model``'s initial weights."""
    from crossframe.config.validation import validate_params
    from crossframe.models import build_model
    from crossframe.plugins import component

    source = component("dataset", data["name"])
    dataset = source.obj(validate_params(source.schema, {k: v for k, v in data.items() if k != "name"}, "data"))
    train, _ = dataset.split(VAL_FRACTION, SEED)
    spec = build_model(model["name"], {k: v for k, v in model.items() if k != "name"}, train.info)
    return Start(train.x, train.y, spec, spec.init(SEED))
