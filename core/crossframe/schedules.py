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
