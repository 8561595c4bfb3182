"""Neutral optimizer descriptions: names and param schemas. Backends map them to native optimizers.

The update rules are the usual ones, written here so every backend agrees:

- ``sgd``: ``v = momentum * v + g`` (``v = g`` without momentum; ``nesterov`` uses ``g + momentum * v``),
  ``p -= lr * v``; ``weight_decay`` adds ``weight_decay * p`` to ``g``.
- ``adam``: Adam with bias correction, ``p -= lr * m_hat / (sqrt(v_hat) + eps)``; ``weight_decay``
  is L2 (added to ``g``).
- ``adamw``: Adam with decoupled weight decay, ``p -= lr * weight_decay * p`` as well.
- ``rmsprop``: ``v = alpha * v + (1 - alpha) * g^2``, ``p -= lr * g / (sqrt(v) + eps)`` (torch's rule:
  ``eps`` outside the root, no momentum); ``weight_decay`` is L2.
- ``adagrad``: ``s += g^2``, ``p -= lr * g / (sqrt(s) + eps)``; ``weight_decay`` is L2.
- ``lion``: ``c = b1 * m + (1 - b1) * g``, ``p -= lr * (sign(c) + weight_decay * p)`` (decoupled), then
  ``m = b2 * m + (1 - b2) * g`` (Chen et al., 2023).

Weight decay never touches parameters whose :class:`~crossframe.models.ParamSpec` says
``decay=False`` (biases, norms). Optimizer state is saved in canonical layout under
``<slot>/<param>`` (slots: ``momentum`` for sgd, ``exp_avg`` / ``exp_avg_sq`` for adam and
adamw, ``square_avg`` for rmsprop, ``sum`` for adagrad, ``exp_avg`` for lion) plus a ``step`` count.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, model_validator


class SGDParams(BaseModel):
    """``train.optimizer: {name: sgd}``."""

    model_config = ConfigDict(extra="forbid")
    lr: PositiveFloat = 0.01
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDParams:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class AdamParams(BaseModel):
    """``train.optimizer: {name: adam | adamw}``."""

    model_config = ConfigDict(extra="forbid")
    lr: PositiveFloat = 1e-3
    betas: tuple[float, float] = Field((0.9, 0.999), description="each in [0, 1)")
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


    @model_validator(mode="after")
    def _betas_in_range(self) -> AdamParams:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
        return self


class AdamWParams(AdamParams):
    """``train.optimizer: {name: adamw}`` (decoupled weight decay, 0.01 by default)."""

    weight_decay: NonNegativeFloat = 0.01


class RMSpropParams(BaseModel):
    """``train.optimizer: {name: rmsprop}``."""

    model_config = ConfigDict(extra="forbid")
    lr: PositiveFloat = 0.01
    alpha: float = Field(0.99, ge=0.0, lt=1.0, description="decay of the squared-gradient average")
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


class AdagradParams(BaseModel):
    """``train.optimizer: {name: adagrad}``."""

    model_config = ConfigDict(extra="forbid")
    lr: PositiveFloat = 0.01
    eps: PositiveFloat = 1e-10
    weight_decay: NonNegativeFloat = 0.0


class LionParams(BaseModel):
    """``train.optimizer: {name: lion}`` (use a rate 3-10x below AdamW's; decay is decoupled)."""

    model_config = ConfigDict(extra="forbid")
    lr: PositiveFloat = 1e-4
    betas: tuple[float, float] = Field((0.9, 0.99), description="each in [0, 1)")
    weight_decay: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _betas_in_range(self) -> LionParams:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
        return self


#: optimizer name -> its state slots, in canonical naming
STATE_SLOTS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg",),
    "adagrad": ("sum",),
    "lion": ("exp_avg",),
}


def state_step(state: dict) -> int:
    """The update count stored in canonical optimizer state (0 when absent)."""
    import numpy as np

    value = state.get("step")
    return 0 if value is None else int(np.asarray(value).reshape(-1)[0])
