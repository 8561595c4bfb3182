"""Built-in dataset sources: ``digits``, ``synthetic`` and ``npz`` (tabular files: :mod:`crossframe.data.tabular`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

from crossframe.data.dataset import Dataset
from crossframe.data.tabular import CsvParams, load_csv
from crossframe.errors import DataError


class Params(BaseModel):
    """Base of source params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class DigitsParams(Params):
    """``data: {name: digits}``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes)."""

    flatten: bool = Field(False, description="give 64 features instead of 8x8x1 images")


def load_digits(params: DigitsParams) -> Dataset:
    """The digits as float32 NHWC images scaled to [0, 1] (no download: scikit-learn ships them)."""
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    x = (raw.images.astype(np.float32) / 16.0)[..., None]
    if params.flatten:
        x = x.reshape(len(x), -1)
    return Dataset(x, raw.target, "classification", class_names=tuple(str(c) for c in raw.target_names))


class SyntheticParams(Params):
    """``data: {name: synthetic}``: seeded Gaussian classes or a noisy linear regression."""

    task: Literal["classification", "regression"] = "classification"
    samples: PositiveInt = 1024
    features: PositiveInt = 16
    classes: int = Field(4, ge=2, description="classification only")
    targets: PositiveInt = Field(1, description="regression only")
    noise: NonNegativeFloat = 0.5
    seed: int = 0


def load_synthetic(params: SyntheticParams) -> Dataset:
    """Generate the data; the same params give the same arrays on every machine."""
    rng = np.random.default_rng([params.seed, 4242])
    if params.task == "classification":
        centres = rng.normal(0.0, 2.0, (params.classes, params.features))
        y = rng.integers(0, params.classes, params.samples)
        x = centres[y] + rng.normal(0.0, params.noise + 1e-12, (params.samples, params.features))
        return Dataset(x, y, "classification")
    weights = rng.normal(0.0, 1.0, (params.features, params.targets))
    x = rng.normal(0.0, 1.0, (params.samples, params.features))
    y = x @ weights + rng.normal(0.0, params.noise + 1e-12, (params.samples, params.targets))
    return Dataset(x, y, "regression")


class NpzParams(Params):
    """``data: {name: npz, path: data.npz}``: arrays ``x`` and ``y`` (and optionally ``x_val``, ``y_val``)."""

    path: Path
    x_key: str = "x"
    y_key: str = "y"
    task: Literal["auto", "classification", "regression"] = "auto"
    group: str | None = Field(None, description="set from data.split.group: the array of group ids")


def _infer_task(y: np.ndarray, task: str) -> Literal["classification", "regression"]:
    if task != "auto":
        return task  # type: ignore[return-value]
    integral = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)
    return "classification" if integral and y.ndim == 1 else "regression"


def load_npz(params: NpzParams) -> Dataset:
    """Read the arrays; errors name the file and the missing key."""
    if not params.path.is_file():
        raise DataError(f"data.path: file '{params.path}' not found")
    try:
        archive = np.load(params.path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"data.path: '{params.path}' is not a readable .npz file ({exc})") from None
    with archive:
        for key in (params.x_key, params.y_key):
            if key not in archive:
                raise DataError(f"data: '{params.path}' has no array '{key}' (it has: {', '.join(archive.files)})")
        if params.group is not None and params.group not in archive:
            raise DataError(f"data.split.group: '{params.path}' has no array '{params.group}' "
                            f"(it has: {', '.join(archive.files)})")
        y = archive[params.y_key]
        val = {k: archive[k] for k in ("x_val", "y_val") if k in archive}
        return Dataset(archive[params.x_key], y, _infer_task(y, params.task),
                       x_val=val.get("x_val"), y_val=val.get("y_val"),
                       groups=None if params.group is None else archive[params.group])


__all__ = ["CsvParams", "DigitsParams", "NpzParams", "SyntheticParams", "load_csv", "load_digits", "load_npz",
           "load_synthetic"]
