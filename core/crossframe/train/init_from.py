"""``model.init_from`` (kept here for callers; the code lives in :mod:`crossframe.models.init_from`, a floor
below, so the checkpoint loader can rebuild a LoRA run's base with it)."""

from __future__ import annotations

from crossframe.models.init_from import WHERE, initial_weights, source_weights

__all__ = ["WHERE", "initial_weights", "source_weights"]
