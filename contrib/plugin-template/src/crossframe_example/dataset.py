"""The dataset `example`: noisy concentric rings, one ring per class.

A classification task no linear model solves and a small MLP does. The same params give the
same arrays on every machine.
"""

from __future__ import annotations

import numpy as np
from crossframe.data import Dataset
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt


class RingsParams(BaseModel):
    """`data: {name: example, ...}`: the keys next to `name`.

    Unknown keys are errors (with a did-you-mean).
    """

    model_config = ConfigDict(extra="forbid")
    samples: PositiveInt = Field(1000, description="number of points")
    classes: int = Field(3, ge=2, le=50, description="number of rings, one per class")
    noise: NonNegativeFloat = Field(0.1, description="std of the radial noise (rings are 1 apart)")
    seed: int = Field(0, description="random seed")


def load_rings(params: RingsParams) -> Dataset:
    """Points on rings of radius 1, 2, ..., `classes`, scaled into the unit disc; label = ring."""
    rng = np.random.default_rng(params.seed)
    y = rng.integers(0, params.classes, params.samples)
    radius = 1.0 + y + rng.normal(0.0, params.noise, params.samples)
    angle = rng.uniform(0.0, 2.0 * np.pi, params.samples)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1) / params.classes
    names = tuple(f"ring {i + 1}" for i in range(params.classes))
    return Dataset(x, y, "classification", class_names=names)
