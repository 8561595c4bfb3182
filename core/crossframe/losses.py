"""Classification training losses beyond plain cross-entropy: class weights, focal loss, label smoothing.

One formula covers all three, so every backend writes it once (``crossframe_<backend>/losses.py``)
and this module's numpy reference checks them. For logits ``z`` of an example with label ``y`` over
``K`` classes, ``log p = log_softmax(z)``, smoothed targets ``q = (1 - eps) * onehot(y) + eps / K``:

    loss = w[y] * -sum_c q_c * (1 - p_c) ** gamma * log p_c

- ``gamma = 0`` (no focal term) and ``eps = 0`` give plain cross-entropy, times ``w[y]``;
- ``w`` is ``train.class_weights`` (``balanced``: ``N / (K * count_c)``, scikit-learn's rule,
  computed on the training split), ones when absent;
- the step's loss is the *mean* over the batch of these per-example values (not divided by the
  sum of weights), so gradient accumulation over micro-batches stays exact.

Only the training step uses it; ``val/loss`` stays plain cross-entropy, comparable across runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from crossframe.errors import ConfigError


class LossConfig(BaseModel):
    """``train.loss``: ``{name: cross_entropy}`` (the default) or ``{name: focal, gamma: 2.0}``."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["cross_entropy", "focal"] = "cross_entropy"
    gamma: NonNegativeFloat = Field(2.0, description="focal only: down-weights confident examples")


@dataclass(frozen=True)
class LossSetup:
    """What the backends' classification loss needs (see the module docstring)."""

    class_weights: tuple[float, ...] | None = None
    gamma: float = 0.0
    label_smoothing: float = 0.0

    @property
    def plain(self) -> bool:
        """Whether this is plain cross-entropy (the backends then keep their fused kernels)."""
        return self.class_weights is None and self.gamma == 0.0 and self.label_smoothing == 0.0


def balanced_weights(y: np.ndarray, classes: int) -> tuple[float, ...]:
    """``N / (K * count_c)`` per class (a class absent from ``y`` gets weight 0: it never appears)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, len(y) / (classes * np.maximum(counts, 1.0)), 0.0)
    return tuple(float(w) for w in weights)


def loss_setup(class_weights: Any, loss: LossConfig | None, label_smoothing: float, y: np.ndarray | None,
               classes: int, task: str) -> LossSetup | None:
    """The :class:`LossSetup` of a run's ``train`` section, or ``None`` for plain cross-entropy.

    ``y`` are the training labels (for ``balanced``). Raises :class:`ConfigError` for a weight list
    of the wrong length or a setting that needs classification on another task.
    """
    gamma = loss.gamma if loss is not None and loss.name == "focal" else 0.0
    if class_weights is None and gamma == 0.0 and label_smoothing == 0.0:
        return None
    if task != "classification":
        raise ConfigError(f"train: class_weights, focal loss and label_smoothing need classification data; "
                          f"this dataset is {task}")
    weights: tuple[float, ...] | None = None
    if class_weights == "balanced":
        if y is None:
            raise ConfigError("train.class_weights: 'balanced' needs the training labels")
        weights = balanced_weights(y, classes)
    elif class_weights is not None:
        weights = tuple(float(w) for w in class_weights)
        if len(weights) != classes:
            raise ConfigError(f"train.class_weights: {len(weights)} weights given, the dataset has {classes} classes")
    return LossSetup(weights, float(gamma), float(label_smoothing))


def reference_loss(logits: np.ndarray, y: np.ndarray, setup: LossSetup) -> np.ndarray:
    """Per-example losses ``[B]`` in float64 (the numpy reference every backend is checked against)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    k = z.shape[1]
    q = np.full(z.shape, setup.label_smoothing / k)
    q[np.arange(len(y)), np.asarray(y, dtype=np.int64)] += 1.0 - setup.label_smoothing
    factor = (1.0 - np.exp(logp)) ** setup.gamma if setup.gamma else 1.0
    per = -(q * factor * logp).sum(axis=1)
    if setup.class_weights is not None:
        per = per * np.asarray(setup.class_weights, dtype=np.float64)[np.asarray(y, dtype=np.int64)]
    return per
