"""optax update rules for crossframe's optimizer names, and their state in canonical form.

Each rule is an ``optax.chain`` that produces the update *direction* without the learning rate;
the compiled step applies ``params - lr * direction`` itself, so ``lr`` is a traced argument and a
new rate never recompiles. The chains (``mask`` is ``TrainSetup.decay_mask``):

- ``sgd``: ``add_decayed_weights(wd, mask)`` (L2 into the gradient), then ``trace(momentum, nesterov)``
  (plain ``g`` without momentum)
- ``adam``: ``add_decayed_weights(wd, mask)``, then ``scale_by_adam(b1, b2, eps)``
- ``adamw``: ``scale_by_adam(b1, b2, eps)``, then ``add_decayed_weights(wd, mask)`` (decoupled: times
  ``lr`` it is ``lr * wd * p``)

``scale_by_adam`` is :func:`scale_by_adam` below: optax's, with the same ``ScaleByAdamState``, but
with bias corrections that do not lose precision in float32.

A zero weight decay (or zero momentum) puts ``optax.identity()`` in that place, so each chain
always has two links and the stateful one sits at a fixed position (:data:`STATEFUL_LINK`).
Canonical state: ``momentum/<param>`` is ``TraceState.trace``; ``exp_avg/<param>`` and
``exp_avg_sq/<param>`` are ``ScaleByAdamState.mu`` and ``.nu``; ``step`` is the number of updates
applied (``ScaleByAdamState.count`` for adam and adamw, a counter of our own for every optimizer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from crossframe.backend import TrainSetup
from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec, Params
from crossframe.optimizers import STATE_SLOTS, state_step
from crossframe_jax import more_optim
from crossframe_jax.models import host_copy, place, to_canonical, to_native

SUPPORTED = tuple(STATE_SLOTS)

#: optimizer name -> index, in its two-link chain, of the link that holds the slots
STATEFUL_LINK = {"sgd": 1, "adam": 1, "adamw": 0, **more_optim.STATEFUL_LINK}


class OptState(NamedTuple):
    """The optimizer state the compiled step takes and returns (a pytree): optax's, and the step."""

    inner: Any  # the optax chain's state (a tuple, one entry per link)
    step: jax.Array  # int32 scalar: updates applied


def _one_minus_pow(b: float, count: jax.Array) -> jax.Array:
    """``1 - b ** count`` in float32 without cancellation: ``-expm1(count * log(b))``, ``log`` on the host."""
    if b == 0.0:
        return jnp.ones((), jnp.float32)
    return -jnp.expm1(count.astype(jnp.float32) * jnp.float32(math.log(b)))


def scale_by_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """``optax.scale_by_adam(b1, b2, eps, eps_root=0)`` (same state, same update) with exact bias corrections.

    optax computes ``1 - b2 ** t`` in float32: ``b2 = 0.999`` rounds to ``0.99900001``, so at
    step 1 the correction is off by 1.3e-5 (relative) and every update by about 6e-6, which makes
    jax drift away from torch (which computes the corrections in float64 on the host) and from the
    numpy reference. Here the corrections are ``-expm1(t * log(b))`` with ``log(b)`` in float64:
    about 1e-7 relative at every step.
    """
    base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=0.0)

    def update(updates: Any, state: optax.ScaleByAdamState, params: Any = None) -> tuple[Any, Any]:
        del params
        mu = jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, updates, state.mu)
        nu = jax.tree.map(lambda g, v: (1 - b2) * (g * g) + b2 * v, updates, state.nu)
        count = optax.safe_increment(state.count)
        c1, c2 = _one_minus_pow(b1, count), _one_minus_pow(b2, count)
        direction = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
        return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(base.init, update)


def build_transform(setup: TrainSetup) -> optax.GradientTransformation:
    """The optax chain giving the update direction (no learning rate) for ``setup.optimizer``; with frozen
    weights (``train.freeze``, LoRA) it sees the trainable ones only (:func:`trainable_only`)."""
    chain = _chain(setup)
    return trainable_only(chain, frozenset(setup.frozen)) if setup.frozen else chain


def trainable_only(tx: optax.GradientTransformation, frozen: frozenset[str]) -> optax.GradientTransformation:
    """``tx`` over the weights not in ``frozen``: its state holds no slot for a frozen weight, and its
    direction has no entry for one (the step leaves those weights as they are)."""

    def part(tree: Mapping[str, Any]) -> dict[str, Any]:
        return {n: v for n, v in tree.items() if n not in frozen}

    def init(params: Any) -> Any:
        return tx.init(part(params))

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return tx.update(part(updates), state, None if params is None else part(params))

    return optax.GradientTransformation(init, update)


def _chain(setup: TrainSetup) -> optax.GradientTransformation:
    o = dict(setup.optimizer_params)
    wd = float(o.get("weight_decay", 0.0))
    mask = {n: m for n, m in setup.decay_mask.items() if n not in setup.frozen}
    decay = optax.add_decayed_weights(wd, mask=mask) if wd > 0 else optax.identity()
    if setup.optimizer == "sgd":
        momentum = float(o.get("momentum", 0.0))
        direction = (optax.trace(decay=momentum, nesterov=bool(o.get("nesterov", False)))
                     if momentum > 0 else optax.identity())
        return optax.chain(decay, direction)
    if setup.optimizer in ("adam", "adamw"):
        b1, b2 = (float(b) for b in o.get("betas", (0.9, 0.999)))
        adam = scale_by_adam(b1, b2, float(o.get("eps", 1e-8)))
        return optax.chain(decay, adam) if setup.optimizer == "adam" else optax.chain(adam, decay)
    other = more_optim.build(setup.optimizer, o, decay)
    if other is not None:
        return other
    raise CapabilityError(f"train.optimizer.name: backend 'jax' does not support '{setup.optimizer}'")


def init_state(tx: optax.GradientTransformation, params: Mapping[str, jax.Array], device: Any) -> OptState:
    """Fresh optimizer state on the parameters' device."""
    inner = jax.device_put(tx.init(dict(params)), device)
    return OptState(inner, jax.device_put(np.int32(0), device))


def _slots(name: str, link: Any) -> dict[str, Mapping[str, jax.Array]]:
    """The canonical slots of one stateful link: slot name -> {param: array}."""
    if isinstance(link, optax.TraceState):
        return {"momentum": link.trace}
    if isinstance(link, optax.ScaleByAdamState):
        return {"exp_avg": link.mu, "exp_avg_sq": link.nu}
    if isinstance(link, more_optim.Slots):
        return dict(link.values)
    return {}  # sgd without momentum keeps no state


def export_optimizer_state(name: str, state: OptState, spec: ModelSpec) -> Params:
    """Canonical optimizer state: ``<slot>/<param>`` arrays and the scalar ``step`` (float32)."""
    link = state.inner[STATEFUL_LINK[name]]
    slots = {slot: host_copy(values) for slot, values in _slots(name, link).items()}
    out: Params = {}
    for p in spec.table:
        for slot in STATE_SLOTS[name]:
            held = slots.get(slot, {})  # a frozen weight has no slot: zeros, as a weight that never moved
            value = held[p.name] if p.name in held else np.zeros(p.shape, np.float32)
            out[f"{slot}/{p.name}"] = to_canonical(p.layout, value)
    out["step"] = np.asarray(float(jax.device_get(state.step)), np.float32)
    return out


def load_optimizer_state(name: str, tx: optax.GradientTransformation, params: Mapping[str, jax.Array],
                         spec: ModelSpec, state: Params, device: Any) -> OptState:
    """Optimizer state from canonical arrays (written by any backend), on ``device``.

    A ``step`` of 0 means no update was applied: the slots start from zero, as in a fresh state
    (torch.optim does the same; SGD's first momentum buffer is the gradient itself).
    """
    step = state_step(state)
    fresh = init_state(tx, params, device)
    if step == 0:
        return fresh
    wanted = {}
    held = {n for values in _slots(name, fresh.inner[STATEFUL_LINK[name]]).values() for n in values}
    for slot in STATE_SLOTS[name]:
        for p in spec.table:
            if p.name not in held:  # a frozen weight: no state (see trainable_only)
                continue
            key = f"{slot}/{p.name}"
            if key not in state:
                raise CapabilityError(f"checkpoint: optimizer state has no '{key}' for '{name}'")
            if tuple(state[key].shape) != tuple(p.shape):
                raise CapabilityError(f"checkpoint: optimizer state '{key}' has shape {tuple(state[key].shape)}, "
                                      f"the model expects {tuple(p.shape)}")
            wanted.setdefault(slot, {})[p.name] = to_native(p.layout, state[key])
    index = STATEFUL_LINK[name]
    link = fresh.inner[index]
    if isinstance(link, optax.TraceState):
        link = optax.TraceState(trace=place(wanted["momentum"], device))
    elif isinstance(link, optax.ScaleByAdamState):
        link = optax.ScaleByAdamState(count=jax.device_put(np.int32(step), device), mu=place(wanted["exp_avg"], device),
                                      nu=place(wanted["exp_avg_sq"], device))
    elif isinstance(link, more_optim.Slots):
        link = more_optim.Slots({slot: place(wanted[slot], device) for slot in link.values})
    inner = tuple(link if i == index else s for i, s in enumerate(fresh.inner))
    return OptState(inner, jax.device_put(np.int32(step), device))  # its own buffer: both are donated
