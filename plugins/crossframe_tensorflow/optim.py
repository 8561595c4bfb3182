"""crossframe's optimizer rules written in TensorFlow ops, and their state in canonical form.

No Keras optimizer: Keras' SGD folds the learning rate into its momentum buffer and its Adam
puts epsilon outside the bias correction, so neither reproduces the canonical rules of
:mod:`crossframe.optimizers` (nor would their slots load into another backend). Here each rule
is written out, in the same operation order as ``torch.optim`` (foreach), on slot variables
that already hold the canonical values:

- ``sgd``: ``g += wd * p`` (decaying params), ``v = momentum * v + g`` (``v`` starts at zero,
  so the first step gives ``v = g``), ``g = g + momentum * v`` with nesterov else ``v``,
  ``p -= lr * g``;
- ``adam``: ``g += wd * p``; ``m += (1 - b1) * (g - m)``; ``v = b2 * v + (1 - b2) * g * g``;
  ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``;
- ``adamw``: as adam without the L2 term, and ``p *= 1 - lr * wd`` first (decoupled decay).

The bias corrections ``1 - b^t`` are computed as ``-expm1(t * log b)`` with ``log b`` taken in
double precision on the host: in float32, ``1 - 0.999^t`` would lose five digits at ``t = 1``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crossframe.backend import TrainSetup
from crossframe.errors import CapabilityError
from crossframe.models.spec import Params
from crossframe.optimizers import STATE_SLOTS, state_step
from crossframe_tensorflow.devices import tf

SUPPORTED = tuple(STATE_SLOTS)


class Optimizer(tf.Module):
    """Slot variables (``<slot>/<param>``, canonical layout), a step counter, and the update rule."""

    def __init__(self, setup: TrainSetup, params: dict[str, tf.Variable]) -> None:
        super().__init__(name=setup.optimizer)
        if setup.optimizer not in STATE_SLOTS:
            raise CapabilityError(f"train.optimizer.name: backend 'tensorflow' does not support "
                                  f"'{setup.optimizer}'")
        hp = dict(setup.optimizer_params)
        self.kind = setup.optimizer
        self.params = params  # every weight (exported: a frozen one's slots are zeros)
        # train.freeze / LoRA: frozen weights get no slots and no update
        self.trainable = {name: p for name, p in params.items() if name not in setup.frozen}
        self.weight_decay = float(hp.get("weight_decay", 0.0))
        self.decays = {name: bool(setup.decay_mask[name]) and self.weight_decay > 0 for name in params}
        self.momentum = float(hp.get("momentum", 0.0))
        self.nesterov = bool(hp.get("nesterov", False))
        self.b1, self.b2 = (float(b) for b in hp.get("betas", (0.9, 0.999)))
        self.eps = float(hp.get("eps", 1e-10 if self.kind == "adagrad" else 1e-8))
        self.alpha = float(hp.get("alpha", 0.99))
        if self.kind == "lion":
            self.b1, self.b2 = (float(b) for b in hp.get("betas", (0.9, 0.99)))
        # slots that exist natively: sgd without momentum keeps none (and exports zeros)
        self.slot_names: tuple[str, ...] = () if self.kind == "sgd" and not self.momentum else STATE_SLOTS[self.kind]
        with self.name_scope:
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.slots = {f"{slot}/{name}": tf.Variable(tf.zeros_like(p), trainable=False, name=f"{slot}.{name}")
                          for name, p in self.trainable.items() for slot in self.slot_names}

    # ------------------------------------------------------------------ the rule (traced into the step)

    def apply(self, grads: dict[str, tf.Tensor], lr: tf.Tensor) -> None:
        """One update with float32 ``grads`` by canonical name at rate ``lr`` (a float32 scalar tensor)."""
        step = self.step.assign_add(1)
        if self.kind == "sgd":
            for name, p in self.trainable.items():
                self._sgd(name, p, grads[name], lr)
            return
        if self.kind in ("rmsprop", "adagrad", "lion"):
            for name, p in self.trainable.items():
                self._more(name, p, grads[name], lr)
            return
        t = tf.cast(step, tf.float32)
        step_size = lr / _one_minus_power(self.b1, t)
        bc2_sqrt = tf.sqrt(_one_minus_power(self.b2, t))
        for name, p in self.trainable.items():
            self._adam(name, p, grads[name], lr, step_size, bc2_sqrt)

    def _sgd(self, name: str, p: tf.Variable, g: tf.Tensor, lr: tf.Tensor) -> None:
        if self.decays[name]:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = self.slots[f"momentum/{name}"]
            v = buf.assign(buf * self.momentum + g)
            g = g + self.momentum * v if self.nesterov else v
        p.assign_sub(lr * g)

    def _more(self, name: str, p: tf.Variable, g: tf.Tensor, lr: tf.Tensor) -> None:
        """rmsprop, adagrad (L2 decay into ``g``) and lion (decoupled decay), as :mod:`crossframe.optimizers`."""
        if self.kind == "lion":
            m = self.slots[f"exp_avg/{name}"]
            direction = tf.sign(m * self.b1 + (1.0 - self.b1) * g)
            value = p * (1.0 - lr * self.weight_decay) if self.decays[name] else p
            p.assign(value - lr * direction)
            m.assign(m * self.b2 + (1.0 - self.b2) * g)
            return
        if self.decays[name]:
            g = g + self.weight_decay * p
        if self.kind == "rmsprop":
            v = self.slots[f"square_avg/{name}"]
            avg = v.assign(v * self.alpha + (1.0 - self.alpha) * g * g)
        else:
            v = self.slots[f"sum/{name}"]
            avg = v.assign_add(g * g)
        p.assign_sub(lr * g / (tf.sqrt(avg) + self.eps))

    def _adam(self, name: str, p: tf.Variable, g: tf.Tensor, lr: tf.Tensor, step_size: tf.Tensor,
              bc2_sqrt: tf.Tensor) -> None:
        m, v = self.slots[f"exp_avg/{name}"], self.slots[f"exp_avg_sq/{name}"]
        decays = self.decays[name]
        if decays and self.kind == "adam":
            g = g + self.weight_decay * p
        m_new = m.assign(m + (1.0 - self.b1) * (g - m))
        v_new = v.assign(v * self.b2 + (1.0 - self.b2) * g * g)
        denom = tf.sqrt(v_new) / bc2_sqrt + self.eps
        value = p * (1.0 - lr * self.weight_decay) if decays and self.kind == "adamw" else p
        p.assign(value - step_size * (m_new / denom))

    # ------------------------------------------------------------------ canonical state

    def export(self) -> Params:
        """Canonical state: ``<slot>/<param>`` float32 arrays and ``step`` (updates applied)."""
        out: Params = {}
        for name, p in self.params.items():
            for slot in STATE_SLOTS[self.kind]:
                key = f"{slot}/{name}"
                value = self.slots[key].numpy() if key in self.slots else np.zeros(p.shape, np.float32)
                out[key] = np.array(value, dtype=np.float32, copy=True)
        out["step"] = np.asarray(float(self.step.numpy()), np.float32)
        return out

    def load(self, state: Params) -> int:
        """Assign canonical state to the slots and the counter; returns the step count.

        A state at step 0 resets the slots to zeros (torch starts its buffers afresh then too).
        """
        step = state_step(state)
        values: dict[str, Any] = {}
        for key, var in self.slots.items():
            if step == 0:
                values[key] = np.zeros(var.shape, np.float32)
                continue
            if key not in state:
                raise CapabilityError(f"checkpoint: optimizer state has no '{key}' for '{self.kind}'")
            value = np.asarray(state[key], dtype=np.float32)
            if tuple(value.shape) != tuple(var.shape):
                raise CapabilityError(f"checkpoint: optimizer state '{key}' has shape {tuple(value.shape)}, "
                                      f"expected {tuple(var.shape)}")
            values[key] = value
        for key, value in values.items():
            self.slots[key].assign(value)
        self.step.assign(step)
        return step


def _one_minus_power(beta: float, t: tf.Tensor) -> tf.Tensor:
    """``1 - beta ** t`` in float32 without cancellation (``beta`` a Python float in [0, 1))."""
    if beta == 0.0:
        return tf.ones_like(t)
    return -tf.math.expm1(t * math.log(beta))


def build_optimizer(setup: TrainSetup, params: dict[str, tf.Variable]) -> Optimizer:
    """The optimizer for ``setup`` over ``params`` (create it under the target ``tf.device``)."""
    return Optimizer(setup, params)


class DynamicLossScale(tf.Module):
    """Dynamic loss scaling for fp16, with ``torch.amp.GradScaler`` 's rule and defaults.

    The loss is multiplied by ``scale`` before differentiation and the gradients divided by it
    after. A step whose gradients are not all finite is skipped and halves the scale; after
    ``growth_interval`` finite steps in a row the scale doubles.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_interval: int = 2000) -> None:
        super().__init__(name="loss_scale")
        self.growth_interval = growth_interval
        with self.name_scope:
            self.scale = tf.Variable(init_scale, dtype=tf.float32, trainable=False, name="scale")
            self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")

    def update(self, finite: tf.Tensor) -> None:
        """Adjust the scale after a step whose gradients were (or were not) all finite."""
        good = tf.where(finite, self.good_steps + 1, tf.constant(0, tf.int64))
        grow = good >= self.growth_interval
        scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), self.scale * 0.5)
        self.scale.assign(scale)
        self.good_steps.assign(tf.where(grow, tf.constant(0, tf.int64), good))
