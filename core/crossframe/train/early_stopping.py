"""Early stopping on a monitored eval metric."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from crossframe.config.schema import EarlyStoppingConfig
from crossframe.errors import ConfigError

HIGHER_IS_BETTER = ("accuracy", "precision", "recall", "f1")


@dataclass
class EarlyStopping:
    """Counts evaluations without improvement; ``update`` says when to stop."""

    monitor: str
    mode: str
    patience: int
    min_delta: float
    best: float = math.nan
    best_step: int = 0
    bad_evals: int = 0

    @classmethod
    def from_config(cls, cfg: EarlyStoppingConfig) -> EarlyStopping:
        """Resolve ``mode: auto`` from the metric's name."""
        mode = cfg.mode
        if mode == "auto":
            mode = "max" if cfg.monitor.rsplit("/", 1)[-1] in HIGHER_IS_BETTER else "min"
        return cls(cfg.monitor, mode, cfg.patience, cfg.min_delta)

    def update(self, step: int, metrics: dict) -> bool:
        """Record one evaluation; True when patience has run out."""
        if self.monitor not in metrics:
            raise ConfigError(f"train.early_stopping.monitor: '{self.monitor}' is not an eval metric; "
                              f"available: {', '.join(k for k in metrics if not k.endswith('confusion_matrix'))}")
        value = float(metrics[self.monitor])
        sign = 1.0 if self.mode == "max" else -1.0
        if math.isnan(self.best) or sign * (value - self.best) > self.min_delta:
            self.best, self.best_step, self.bad_evals = value, step, 0
            return False
        self.bad_evals += 1
        return self.bad_evals >= self.patience

    def state(self) -> dict:
        """JSON state for checkpoints."""
        return asdict(self)

    def restore(self, state: dict) -> None:
        """Inverse of :meth:`state`."""
        self.best = float(state["best"]) if state.get("best") is not None else math.nan
        self.best_step = int(state.get("best_step", 0))
        self.bad_evals = int(state.get("bad_evals", 0))
