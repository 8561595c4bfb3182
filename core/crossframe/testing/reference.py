"""Numpy references for what every backend must compute: gradients of a linear model and
optimizer steps, in float64.

The optimizer rules are those documented in :mod:`crossframe.optimizers`; clipping is
``g * min(1, clip_norm / (||g|| + 1e-6))`` over all gradients together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from crossframe.optimizers import STATE_SLOTS

CLIP_EPS = 1e-6


def linear_softmax_grads(weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
                         ) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy and its exact gradients for a one-layer ``mlp`` (``hidden: []``)."""
    w = weights["layers.0.weight"].astype(np.float64)
    b = weights["layers.0.bias"].astype(np.float64)
    flat = x.reshape(len(x), -1).astype(np.float64)
    logits = flat @ w + b
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(probs[np.arange(n), y]).mean())
    delta = probs.copy()
    delta[np.arange(n), y] -= 1.0
    delta /= n
    return loss, {"layers.0.weight": flat.T @ delta, "layers.0.bias": delta.sum(axis=0)}


def clip_by_global_norm(grads: Mapping[str, np.ndarray], clip_norm: float | None
                        ) -> tuple[dict[str, np.ndarray], float]:
    """Clipped gradients and the norm before clipping."""
    norm = float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads.values())))
    scale = 1.0 if clip_norm is None else min(1.0, clip_norm / (norm + CLIP_EPS))
    return {k: g * scale for k, g in grads.items()}, norm


def optimizer_step(name: str, hp: Mapping[str, object], params: Mapping[str, np.ndarray],
                   grads: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray], lr: float,
                   decay: Mapping[str, bool]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One update of ``sgd``, ``adam`` or ``adamw`` in canonical state form (``<slot>/<param>``, ``step``)."""
    step = int(np.asarray(state.get("step", 0)).reshape(-1)[0]) + 1
    wd = float(hp.get("weight_decay", 0.0))  # type: ignore[arg-type]
    new_params: dict[str, np.ndarray] = {}
    new_state: dict[str, np.ndarray] = {"step": np.asarray(float(step))}
    for key, p in params.items():
        p = p.astype(np.float64)
        g = grads[key].astype(np.float64)
        decays = decay[key] and wd > 0
        if name == "sgd":
            momentum = float(hp.get("momentum", 0.0))  # type: ignore[arg-type]
            if decays:
                g = g + wd * p
            if momentum:
                buf = state.get(f"momentum/{key}")
                buf = g if buf is None or step == 1 else momentum * buf.astype(np.float64) + g
                new_state[f"momentum/{key}"] = buf
                g = g + momentum * buf if hp.get("nesterov") else buf
            else:
                new_state[f"momentum/{key}"] = np.zeros_like(p)
            new_params[key] = p - lr * g
            continue
        if name in EXTRA_RULES:
            new_params[key], slots = EXTRA_RULES[name](hp, p, g, state, key, lr, decays, wd)
            new_state.update(slots)
            continue
        b1, b2 = (float(v) for v in hp.get("betas", (0.9, 0.999)))  # type: ignore[union-attr]
        eps = float(hp.get("eps", 1e-8))  # type: ignore[arg-type]
        if name == "adam" and decays:
            g = g + wd * p
        m = b1 * state.get(f"exp_avg/{key}", np.zeros_like(p)).astype(np.float64) + (1 - b1) * g
        v = b2 * state.get(f"exp_avg_sq/{key}", np.zeros_like(p)).astype(np.float64) + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**step), v / (1 - b2**step)
        update = m_hat / (np.sqrt(v_hat) + eps)
        if name == "adamw" and decays:
            update = update + wd * p
        new_params[key] = p - lr * update
        new_state[f"exp_avg/{key}"], new_state[f"exp_avg_sq/{key}"] = m, v
    assert set(STATE_SLOTS[name])  # the slots written above are the documented ones
    return new_params, new_state


def _rmsprop(hp: Mapping[str, object], p: np.ndarray, g: np.ndarray, state: Mapping[str, np.ndarray], key: str,
             lr: float, decays: bool, wd: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    alpha, eps = float(hp.get("alpha", 0.99)), float(hp.get("eps", 1e-8))  # type: ignore[arg-type]
    if decays:
        g = g + wd * p
    v = alpha * state.get(f"square_avg/{key}", np.zeros_like(p)).astype(np.float64) + (1 - alpha) * g * g
    return p - lr * g / (np.sqrt(v) + eps), {f"square_avg/{key}": v}


def _adagrad(hp: Mapping[str, object], p: np.ndarray, g: np.ndarray, state: Mapping[str, np.ndarray], key: str,
             lr: float, decays: bool, wd: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    eps = float(hp.get("eps", 1e-10))  # type: ignore[arg-type]
    if decays:
        g = g + wd * p
    s = state.get(f"sum/{key}", np.zeros_like(p)).astype(np.float64) + g * g
    return p - lr * g / (np.sqrt(s) + eps), {f"sum/{key}": s}


def _lion(hp: Mapping[str, object], p: np.ndarray, g: np.ndarray, state: Mapping[str, np.ndarray], key: str,
          lr: float, decays: bool, wd: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    b1, b2 = (float(v) for v in hp.get("betas", (0.9, 0.99)))  # type: ignore[union-attr]
    m = state.get(f"exp_avg/{key}", np.zeros_like(p)).astype(np.float64)
    update = np.sign(b1 * m + (1 - b1) * g)
    if decays:
        update = update + wd * p
    return p - lr * update, {f"exp_avg/{key}": b2 * m + (1 - b2) * g}


#: the rules of rmsprop, adagrad and lion (see :mod:`crossframe.optimizers`)
EXTRA_RULES = {"rmsprop": _rmsprop, "adagrad": _adagrad, "lion": _lion}


def distill_loss(student: np.ndarray, teacher: np.ndarray, temperature: float,
                 mask: np.ndarray | None = None) -> float:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``: mean over examples, or over counted tokens with ``mask``."""
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64) / temperature
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    log_s, log_t = log_softmax(student), log_softmax(teacher)
    per = (np.exp(log_t) * (log_t - log_s)).sum(axis=-1) * temperature**2
    if mask is None:
        return float(per.mean())
    return float((per * mask).sum() / max(float(mask.sum()), 1.0))


def linear_distill_grads(weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, teacher: np.ndarray,
                         temperature: float, alpha: float) -> tuple[float, dict[str, np.ndarray]]:
    """The distillation loss ``(1 - alpha) * ce + alpha * T^2 * KL`` of a one-layer ``mlp`` and its exact gradients.

    ``teacher`` are the teacher's logits for ``x``. The KD term's gradient with respect to the student's
    logits is ``T * (softmax(s/T) - softmax(t/T)) / n``.
    """
    ce, grads = linear_softmax_grads(weights, x, y)
    flat = x.reshape(len(x), -1).astype(np.float64)
    logits = flat @ weights["layers.0.weight"].astype(np.float64) + weights["layers.0.bias"].astype(np.float64)

    def softmax(z: np.ndarray) -> np.ndarray:
        z = z / temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    delta = temperature * (softmax(logits) - softmax(teacher.astype(np.float64))) / len(x)
    kd_grads = {"layers.0.weight": flat.T @ delta, "layers.0.bias": delta.sum(axis=0)}
    loss = (1 - alpha) * ce + alpha * distill_loss(logits, teacher, temperature)
    return loss, {k: (1 - alpha) * grads[k] + alpha * kd_grads[k] for k in grads}


def input_gradients_fd(forward: Any, weights: Mapping[str, np.ndarray], x: np.ndarray, targets: np.ndarray,
                       objective: str = "output", h: float = 1e-5) -> np.ndarray:
    """Central differences, in float64, of ``sum_i out[i, targets[i]]`` (or of the summed cross-entropy)."""
    w64 = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    rows = np.arange(len(x))

    def value_per_example(inputs: np.ndarray) -> np.ndarray:
        out = np.asarray(forward(w64, inputs), np.float64)
        picked = out[rows, targets]
        if objective == "loss":
            top = out.max(axis=1)
            return top + np.log(np.exp(out - top[:, None]).sum(axis=1)) - picked
        return picked

    base = np.asarray(x, np.float64)
    flat = base.reshape(len(x), -1)
    grad = np.zeros_like(flat)
    for j in range(flat.shape[1]):  # every example moves at once: they do not interact
        up, down = flat.copy(), flat.copy()
        up[:, j] += h
        down[:, j] -= h
        grad[:, j] = (value_per_example(up.reshape(base.shape)) - value_per_example(down.reshape(base.shape))) / (2 * h)
    return grad.reshape(base.shape)


def linear_objective_grads(weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, objective: Any,
                           h: float = 1e-6) -> tuple[float, dict[str, np.ndarray]]:
    """Mean :func:`crossframe.losses.reference_loss` of a one-layer ``mlp`` and its gradients
    (``d loss / d logits`` by float64 central differences, then the chain rule)."""
    from crossframe.losses import reference_loss

    w = weights["layers.0.weight"].astype(np.float64)
    b = weights["layers.0.bias"].astype(np.float64)
    flat = x.reshape(len(x), -1).astype(np.float64)
    z = flat @ w + b
    loss = float(reference_loss(z, y, objective).mean())
    dz = np.zeros_like(z)
    for j in range(z.shape[1]):  # examples are independent: move one logit of every example at once
        up, down = z.copy(), z.copy()
        up[:, j] += h
        down[:, j] -= h
        dz[:, j] = (reference_loss(up, y, objective) - reference_loss(down, y, objective)) / (2 * h)
    dz /= len(y)
    return loss, {"layers.0.weight": flat.T @ dz, "layers.0.bias": dz.sum(axis=0)}
