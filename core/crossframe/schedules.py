"""Learning-rate schedules as pure functions of the 0-based optimizer step.

Every schedule takes ``warmup_steps``: for ``step < warmup_steps`` the rate rises linearly,
``lr(step) = base_lr * (step + 1) / warmup_steps``, and the schedule proper starts after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

Schedule = Callable[[int], float]


class WarmupParams(BaseModel):
    """Params every schedule shares."""

    model_config = ConfigDict(extra="forbid")
    warmup_steps: NonNegativeInt = 0


class StepParams(WarmupParams):
    """``step``: multiply by ``gamma`` every ``step_size`` steps."""

    step_size: PositiveInt = 100
    gamma: float = Field(0.1, gt=0.0, le=1.0)


class ExponentialParams(WarmupParams):
    """``exponential``: multiply by ``gamma`` every step."""

    gamma: float = Field(0.999, gt=0.0, le=1.0)


class DecayParams(WarmupParams):
    """Params of schedules that decay over a horizon."""

    decay_steps: PositiveInt | None = Field(None, description="default: train.steps")

    @model_validator(mode="after")
    def _fits(self) -> DecayParams:
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise ValueError("decay_steps must be larger than warmup_steps")
        return self


class CosineParams(DecayParams):
    """``cosine``: half a cosine from ``base_lr`` to ``base_lr * min_lr_ratio`` over ``decay_steps``."""

    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)


class LinearParams(DecayParams):
    """``linear``: straight from ``base_lr`` to ``base_lr * end_factor`` over ``decay_steps``."""

    end_factor: float = Field(0.0, ge=0.0, le=1.0)


def with_warmup(warmup_steps: int, base_lr: float, after: Schedule) -> Schedule:
    """Linear warmup to ``base_lr`` over ``warmup_steps``, then ``after(step - warmup_steps)``."""
    if warmup_steps <= 0:
        return after

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        return after(step - warmup_steps)

    return schedule


def constant(params: WarmupParams, base_lr: float, total_steps: int) -> Schedule:
    """``base_lr`` throughout (after warmup)."""
    return with_warmup(params.warmup_steps, base_lr, lambda step: base_lr)


def step_decay(params: StepParams, base_lr: float, total_steps: int) -> Schedule:
    """``base_lr * gamma ** (step // step_size)`` (counted after warmup)."""
    return with_warmup(params.warmup_steps, base_lr,
                       lambda step: base_lr * params.gamma ** (step // params.step_size))


def exponential(params: ExponentialParams, base_lr: float, total_steps: int) -> Schedule:
    """``base_lr * gamma ** step`` (counted after warmup)."""
    return with_warmup(params.warmup_steps, base_lr, lambda step: base_lr * params.gamma**step)


def cosine(params: CosineParams, base_lr: float, total_steps: int) -> Schedule:
    """Cosine decay to ``base_lr * min_lr_ratio`` at ``decay_steps``, flat after it."""
    span = max((params.decay_steps or total_steps) - params.warmup_steps, 1)
    floor = base_lr * params.min_lr_ratio

    def after(step: int) -> float:
        progress = min(step / span, 1.0)
        return floor + 0.5 * (base_lr - floor) * (1.0 + math.cos(math.pi * progress))

    return with_warmup(params.warmup_steps, base_lr, after)


def linear(params: LinearParams, base_lr: float, total_steps: int) -> Schedule:
    """Linear decay to ``base_lr * end_factor`` at ``decay_steps``, flat after it."""
    span = max((params.decay_steps or total_steps) - params.warmup_steps, 1)
    end = base_lr * params.end_factor
    return with_warmup(params.warmup_steps, base_lr,
                       lambda step: base_lr + (end - base_lr) * min(step / span, 1.0))


class OneCycleParams(WarmupParams):
    """``one_cycle``: up from ``base_lr / div_factor`` to ``base_lr``, then down to ``base_lr / (div_factor *
    final_div_factor)``, both halves cosine-shaped (``warmup_steps`` is not used: the cycle warms up)."""

    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="share of the steps spent rising")
    div_factor: float = Field(25.0, ge=1.0)
    final_div_factor: float = Field(1e4, ge=1.0)
    total_steps: PositiveInt | None = Field(None, description="default: train.steps")


def one_cycle(params: OneCycleParams, base_lr: float, total_steps: int) -> Schedule:
    """The one-cycle policy (Smith & Topin): a cosine rise over ``pct_start`` of the steps, a cosine fall after."""
    total = params.total_steps or total_steps
    up = max(params.pct_start * total, 1.0)
    down = max(total - 1 - up, 1.0)  # the last step (total - 1) reaches the final rate
    start, end = base_lr / params.div_factor, base_lr / (params.div_factor * params.final_div_factor)

    def cos_between(a: float, b: float, progress: float) -> float:
        return b + 0.5 * (a - b) * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def schedule(step: int) -> float:
        if step < up:
            return cos_between(start, base_lr, step / up)
        return cos_between(base_lr, end, (step - up) / down)

    return schedule


class PlateauParams(WarmupParams):
    """``plateau``: multiply by ``factor`` when ``monitor`` has not improved for ``patience`` evaluations."""

    monitor: str = "val/loss"
    mode: str = Field("auto", pattern="^(min|max|auto)$", description="auto: max for accuracy-like names")
    factor: float = Field(0.5, gt=0.0, lt=1.0)
    patience: NonNegativeInt = 2
    threshold: float = Field(0.0, ge=0.0, description="an improvement must beat the best by more than this")
    min_lr: float = Field(0.0, ge=0.0)


class Plateau:
    """Reduce-on-plateau: the loop calls :meth:`observe` after each evaluation; the rate is a value.

    It is still a function of the step for the loop (``schedule(step)``), so the backends get the
    rate as an argument of each step and nothing recompiles when it drops. Its state (best value,
    evaluations without improvement, reductions so far) goes into checkpoints and back on resume.
    """

    def __init__(self, params: PlateauParams, base_lr: float) -> None:
        self.params, self.base_lr = params, base_lr
        mode = params.mode
        if mode == "auto":
            mode = "max" if any(k in params.monitor for k in ("acc", "f1", "precision", "recall", "auc")) else "min"
        self.mode = mode
        self.best: float | None = None
        self.bad_evals = 0
        self.reductions = 0
        self._warm = with_warmup(params.warmup_steps, base_lr, lambda step: base_lr)

    @property
    def lr(self) -> float:
        """The current (reduced) rate."""
        return max(self.base_lr * self.params.factor ** self.reductions, self.params.min_lr)

    def __call__(self, step: int) -> float:
        """The rate at ``step``: warmup, then the current plateau rate."""
        if step < self.params.warmup_steps:
            return min(self._warm(step), self.lr)
        return self.lr

    def observe(self, metrics: dict) -> None:
        """Update with an evaluation's metrics (a missing monitor is ignored: nothing to compare)."""
        value = metrics.get(self.params.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.params.threshold:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.params.patience:
            self.reductions += 1
            self.bad_evals = 0

    def state(self) -> dict:
        """JSON-ready state for checkpoints."""
        return {"best": self.best, "bad_evals": self.bad_evals, "reductions": self.reductions}

    def restore(self, state: dict) -> None:
        """Inverse of :meth:`state`."""
        self.best, self.bad_evals = state.get("best"), int(state.get("bad_evals", 0))
        self.reductions = int(state.get("reductions", 0))


def plateau(params: PlateauParams, base_lr: float, total_steps: int) -> Plateau:
    """A :class:`Plateau` schedule (``total_steps`` is not used)."""
    return Plateau(params, base_lr)
