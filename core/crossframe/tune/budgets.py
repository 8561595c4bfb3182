"""Budget-aware pruning (``tune.budget: schedule``): a trial trains at increasing step budgets, each
a run of its own whose learning-rate schedule ends at that budget.

Why: with a schedule that decays over ``train.steps`` (cosine, linear, one-cycle), an evaluation at
step ``r`` of a long run measures a model whose rate has barely decayed. A large learning rate is
then worse than the median at every intermediate evaluation and best at the end, so a pruner that
compares the loop's evaluations stops the very trials it should keep. Successive halving and
Hyperband (Jamieson & Talwalkar 2016; Li et al. 2018) compare trials at a budget ``r``; training
each rung with a schedule that ends at ``r`` ("budgeted training", Li, Yumer & Ramanan 2020) makes
the value at ``r`` the value a run of ``r`` steps really reaches, which is what the rung means.

How: the budgets are ``train.steps // factor**k`` for ``k = K, ..., 1`` (down to ``min_steps``,
by default ``train.steps // factor**2``: two budgets below the top), then ``train.steps`` itself.
Each budget below the top is a fresh run of ``r`` steps from the trial's seed, with every
step-counted part of the schedule and the loop's intervals scaled by ``r / train.steps``; its final
``tune.metric`` is reported to the pruner at step ``r``. A trial the pruner keeps trains the next
budget from the start. The top budget is the trial's config unchanged, so a trial that reaches it
gets exactly the value it gets without pruning; the price is the smaller budgets trained again (at
most ``1 / (factor - 1)`` more steps for a trial that reaches the top).

Measured (``benchmarks/tune_search.py``, docs/tune.md): with successive halving this reached the
unpruned best on 2 of 3 seeds with about 2x fewer steps; no pruner reached it on the third, whose
best trial is poor at every smaller budget too.
"""

from __future__ import annotations

import copy
from typing import Any

from crossframe.errors import ConfigError
from crossframe.schedules import ExponentialParams

#: schedule parameters counted in optimizer steps (scaled with the budget)
STEP_PARAMS = ("warmup_steps", "decay_steps", "total_steps", "step_size")
#: loop intervals counted in optimizer steps (scaled with the budget; 0 keeps its meaning "at the end")
INTERVALS = ("eval_every", "log_every")


def budget_steps(total: int, factor: int, min_steps: int | None = None) -> list[int]:
    """The budgets below ``total`` in ascending order: ``total // factor**k`` for ``k = 1, 2, ...`` while
    at least ``min_steps`` (default ``total // factor**2``, so two budgets; at least 1 step).

    Each budget is then at least ``factor`` times the smallest to the power of its rank, so successive
    halving's rungs (``smallest * factor**k``) fall on them.
    """
    if total < 1 or factor < 2:
        raise ValueError(f"budget_steps needs total >= 1 and factor >= 2 (got {total}, {factor})")
    least = max(1, min_steps if min_steps is not None else total // factor**2)
    out = []
    budget = total // factor
    while budget >= least:
        out.append(budget)
        budget //= factor
    return out[::-1]


def _scaled(value: int, ratio: float, least: int) -> int:
    return max(least, round(value * ratio))


def budget_config(data: dict[str, Any], budget: int, total: int) -> dict[str, Any]:
    """A copy of the raw run config ``data`` (of ``total`` steps) that trains ``budget`` steps with its
    schedule ending there.

    ``train.steps`` becomes ``budget``; the schedule's step-counted parameters (``warmup_steps``,
    ``decay_steps``, ``total_steps``, ``step_size``) and the loop's ``eval_every`` and ``log_every``
    are scaled by ``budget / train.steps``; an ``exponential`` schedule's ``gamma`` is raised to
    ``train.steps / budget`` so that its last rate is the same; checkpoints are written only at the end.
    Schedules that decay to ``train.steps`` by default (cosine, linear, one-cycle) follow by themselves.
    """
    out = copy.deepcopy(data)
    train = out.setdefault("train", {})
    ratio = budget / total
    train["steps"] = budget
    for key in INTERVALS:
        if train.get(key):
            train[key] = _scaled(int(train[key]), ratio, 1)
    train["checkpoint_every"] = 0
    schedule = train.get("schedule")
    if isinstance(schedule, dict):
        for key in STEP_PARAMS:
            if schedule.get(key):
                schedule[key] = _scaled(int(schedule[key]), ratio, 0 if key == "warmup_steps" else 1)
        if schedule.get("decay_steps") and schedule["decay_steps"] <= schedule.get("warmup_steps", 0):
            schedule["decay_steps"] = schedule.get("warmup_steps", 0) + 1  # the schedule's own constraint
        if schedule.get("name") == "exponential":
            gamma = schedule.get("gamma", ExponentialParams.model_fields["gamma"].default)
            schedule["gamma"] = float(gamma) ** (1 / ratio)
    return out


def check_budgets(tune: Any, steps: int | None) -> None:
    """Refuse a ``budget: schedule`` study that cannot have a budget below ``train.steps``: no
    ``train.steps`` (epochs instead), or a ``budget_min_steps`` above ``train.steps // budget_factor``."""
    if steps is None:
        raise ConfigError("tune.budget: 'schedule' scales train.steps; give train.steps instead of train.epochs")
    if tune.budget_min_steps is not None and tune.budget_min_steps > steps // tune.budget_factor:
        raise ConfigError(f"tune.budget_min_steps: must be at most train.steps // budget_factor "
                          f"({steps // tune.budget_factor}), got {tune.budget_min_steps}")

