"""Built-in dataset sources: ``digits``, ``synthetic``, ``npz`` and ``csv``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

from crossframe.data.dataset import Dataset
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
        y = archive[params.y_key]
        val = {k: archive[k] for k in ("x_val", "y_val") if k in archive}
        return Dataset(archive[params.x_key], y, _infer_task(y, params.task),
                       x_val=val.get("x_val"), y_val=val.get("y_val"))


class CsvParams(Params):
    """``data: {name: csv, path: data.csv, target: label}``: numeric columns with a header row."""

    path: Path
    target: str = Field(description="name of the target column")
    delimiter: str = ","
    task: Literal["auto", "classification", "regression"] = "auto"


def load_csv(params: CsvParams) -> Dataset:
    """Read a header-row CSV of numbers; the target column is split off."""
    if not params.path.is_file():
        raise DataError(f"data.path: file '{params.path}' not found")
    with params.path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter=params.delimiter))
    if len(rows) < 2:
        raise DataError(f"data.path: '{params.path}' needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if params.target not in header:
        raise DataError(f"data.target: column '{params.target}' not in '{params.path}' (columns: {', '.join(header)})")
    try:
        table = np.array([[float(cell) for cell in row] for row in body], dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"data.path: '{params.path}' has a non-numeric cell ({exc})") from None
    col = header.index(params.target)
    y = table[:, col]
    if params.task == "classification" or (params.task == "auto" and np.all(y == np.round(y))):
        y_out: np.ndarray = y.astype(np.int64)
        task: Literal["classification", "regression"] = "classification"
    else:
        y_out, task = y, "regression"
    return Dataset(np.delete(table, col, axis=1), y_out, task)
