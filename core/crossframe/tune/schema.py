"""The ``tune:`` section of a config: what to optimise, how to search and prune, and the space.

```yaml
tune:
  metric: val/loss            # direction inferred for known metrics, or `direction:`
  sampler: tpe                # tpe | random | grid | cmaes
  pruner: median              # none | median | hyperband | successive_halving
  budget: evaluations         # evaluations | schedule (budget-aware rungs, see crossframe.tune.budgets)
  trials: 40
  timeout_s: 1800
  space:
    train.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    train.batch_size: {choice: [16, 32, 64]}
    model.hidden: {choice: [[64], [128, 64]]}
    train.optimizer.weight_decay: {uniform: [0.0, 0.2]}
    train.steps: {int: [100, 400], step: 100}
```
"""

from __future__ import annotations

import builtins
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from crossframe.config.validation import describe
from crossframe.errors import ConfigError

#: metric names (the part after ``val/``) where lower is better, and where higher is better
LOWER_IS_BETTER = ("loss", "perplexity", "mae", "rmse", "mse", "error")
HIGHER_IS_BETTER = ("accuracy", "precision", "recall", "f1", "auc", "r2")

KINDS = ("log_uniform", "uniform", "int", "choice")


class Param(BaseModel):
    """One dimension of the space: exactly one of ``log_uniform``, ``uniform``, ``int`` (``[low, high]``)
    or ``choice`` (a list); ``step`` (int and uniform) and ``log`` (int) refine a range."""

    model_config = ConfigDict(extra="forbid")
    log_uniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None  # the class body's `int` is this field
    choice: list[Any] | None = Field(None, min_length=1)
    step: PositiveFloat | None = None
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Param:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})")
        kind = given[0]
        if kind != "choice":
            low, high = getattr(self, kind)
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise ValueError(f"{kind}: [low, high] needs finite low <= high (got [{low}, {high}])")
            if kind == "log_uniform" and low <= 0:
                raise ValueError(f"log_uniform: low must be > 0 (got {low})")
            if kind == "int" and self.log and low < 1:
                raise ValueError(f"int with log: true needs low >= 1 (got {low})")
        if self.step is not None and kind not in ("int", "uniform"):
            raise ValueError(f"step applies to int and uniform ranges, not {kind}")
        if self.log and kind != "int":
            raise ValueError("log applies to int ranges (use log_uniform for floats)")
        return self

    @property
    def kind(self) -> str:
        """``log_uniform``, ``uniform``, ``int`` or ``choice``."""
        return next(k for k in KINDS if getattr(self, k) is not None)

    def probes(self) -> list[tuple[str, Any]]:
        """``(what, value)`` pairs to check against the config schema: both ends of a range and, for a
        float range, a value inside it (a float range over an integer field fails there), or every choice."""
        if self.choice is not None:
            return [("value", c) for c in self.choice]
        low, high = getattr(self, self.kind)
        out = [("low", low), ("high", high)]
        if self.kind != "int" and high > low:
            inside = math.sqrt(low * high) if self.kind == "log_uniform" else low + 0.382 * (high - low)
            out.append(("value", inside if inside != round(inside) else inside + 1e-3 * (high - low)))
        return out

class TuneConfig(BaseModel):
    """The validated ``tune:`` section."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field("val/loss", min_length=1, description="eval metric to optimise (the final evaluation's)")
    direction: Literal["minimize", "maximize", "auto"] = "auto"
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    sampler_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of Optuna's sampler")
    pruner: Literal["none", "median", "hyperband", "successive_halving"] = "median"
    pruner_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of Optuna's pruner")
    budget: Literal["evaluations", "schedule"] = Field(
        "evaluations", description="what the pruner compares: the loop's evaluations of one run per trial, or "
        "(schedule) runs of increasing step budgets, each with its schedule ending at its budget")
    budget_factor: int = Field(3, ge=2, description="schedule: each budget is this many times the one before "
                               "(and the reduction factor of successive_halving and hyperband)")
    budget_min_steps: PositiveInt | None = Field(None, description="schedule: the smallest budget; default "
                                                 "train.steps // budget_factor**2")
    trials: PositiveInt = Field(20, description="finished (complete or pruned) trials the study reaches")
    timeout_s: PositiveFloat | None = Field(None, description="start no trial after this many seconds")
    seed: int | None = Field(None, description="sampler seed; default: the run config's seed")
    space: dict[str, Param] = Field(min_length=1, description="dotted config key -> distribution")

    def resolved_direction(self) -> str:
        """``minimize`` or ``maximize``: given, or inferred from the metric's name."""
        if self.direction != "auto":
            return self.direction
        name = self.metric.rsplit("/", 1)[-1]
        if name in LOWER_IS_BETTER:
            return "minimize"
        if name in HIGHER_IS_BETTER:
            return "maximize"
        raise ConfigError(f"tune.direction: cannot infer whether '{self.metric}' should go up or down; "
                          "set direction: minimize or maximize")


def parse_tune(section: Any) -> TuneConfig:
    """Validate a raw ``tune:`` mapping; errors are one line naming ``tune.<field>``."""
    if section is None:
        raise ConfigError("tune: the config has no 'tune:' section; add one with at least 'space:' "
                          "(see docs/tune.md)")
    if not isinstance(section, dict):
        raise ConfigError(f"tune: must be a mapping, got {type(section).__name__}")
    try:
        return TuneConfig.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(describe(exc, TuneConfig, "tune")) from None
