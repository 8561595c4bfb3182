"""Tabular sources (``csv``, ``parquet``, ``arrow``) and the transform a run saves with itself.

A table has a header of column names; one column is the target, the rest are features (or the
``columns`` listed). Numeric features pass through; ``categorical`` ones are one-hot encoded
(one 0/1 input per level) or index-encoded (one input, the level's position); the levels are the
sorted distinct values of the whole file, and a value not among them (at serving time) encodes
as all zeros (one-hot) or -1 (index). Numeric features are then standardised with a mean and
standard deviation fitted on the **training split only** (``normalize``); the fitted
:class:`TabularTransform` is saved in the run as ``preprocess.json``, which ``crossframe eval``
and ``crossframe serve`` apply, so every consumer sees the same inputs.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from crossframe.data.dataset import Dataset
from crossframe.errors import DataError

#: the fitted transform, in the run directory
TRANSFORM_FILE = "preprocess.json"


class TabularParams(BaseModel):
    """``data: {name: csv|parquet|arrow, path: FILE, target: COLUMN, ...}``."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    target: str = Field(description="name of the target column")
    columns: list[str] | None = Field(None, description="feature columns (default: all but target and group)")
    categorical: list[str] = Field(default_factory=list, description="columns of labels to encode")
    encoding: Literal["onehot", "index"] = "onehot"
    normalize: bool = Field(True, description="standardise numeric features with training-split statistics")
    task: Literal["auto", "classification", "regression"] = "auto"
    group: str | None = Field(None, description="set from data.split.group: the column of group ids")


class CsvParams(TabularParams):
    """``data: {name: csv, path: data.csv, target: label}``: a CSV file with a header row."""

    delimiter: str = Field(",", min_length=1, max_length=1)


@dataclass(frozen=True)
class Feature:
    """One source column as the model sees it."""

    name: str
    kind: Literal["numeric", "categorical"]
    levels: tuple[str, ...] = ()

    def width(self, encoding: str) -> int:
        """Model inputs this column becomes."""
        return len(self.levels) if self.kind == "categorical" and encoding == "onehot" else 1


@dataclass(frozen=True)
class TabularTransform:
    """Raw rows to model inputs: encoding, then numeric standardisation (once :meth:`fit`)."""

    features: tuple[Feature, ...]
    encoding: str = "onehot"
    normalize: bool = True
    target: str = ""
    mean: tuple[float, ...] | None = None  # per numeric feature, in order
    std: tuple[float, ...] | None = None
    source: str = field(default="", compare=False)

    @property
    def width(self) -> int:
        """Inputs per example."""
        return sum(f.width(self.encoding) for f in self.features)

    def _numeric_positions(self) -> list[int]:
        positions, at = [], 0
        for f in self.features:
            if f.kind == "numeric":
                positions.append(at)
            at += f.width(self.encoding)
        return positions

    def encode(self, columns: dict[str, Any]) -> np.ndarray:
        """Encoded but not standardised float64 ``[N, width]`` from raw columns by name."""
        parts = []
        for f in self.features:
            if f.name not in columns:
                raise DataError(f"data: column '{f.name}' is missing")
            values = columns[f.name]
            if f.kind == "numeric":
                parts.append(_numbers(values, f.name, self.source)[:, None])
                continue
            index = {level: i for i, level in enumerate(f.levels)}
            codes = np.array([index.get(_label(v), -1) for v in values], dtype=np.int64)
            if self.encoding == "index":
                parts.append(codes[:, None].astype(np.float64))
            else:
                onehot = np.zeros((len(codes), len(f.levels)))
                known = codes >= 0
                onehot[np.flatnonzero(known), codes[known]] = 1.0
                parts.append(onehot)
        n = len(next(iter(columns.values()))) if columns else 0
        return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))

    def fit(self, x: np.ndarray) -> TabularTransform:
        """A copy whose numeric statistics come from ``x`` (the encoded training split)."""
        if not self.normalize:
            return self
        cols = np.asarray(x, dtype=np.float64)[:, self._numeric_positions()]
        std = cols.std(axis=0) if len(cols) else np.ones(cols.shape[1])
        return replace(self, mean=tuple(float(v) for v in (cols.mean(axis=0) if len(cols) else std * 0)),
                       std=tuple(float(s) if s > 0 else 1.0 for s in std))

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Standardise the numeric inputs of encoded ``x`` (float32 out)."""
        out = np.array(x, dtype=np.float64)
        if self.normalize:
            if self.mean is None or self.std is None:
                raise ValueError("transform: normalise before fit")
            pos = self._numeric_positions()
            out[:, pos] = (out[:, pos] - np.array(self.mean)) / np.array(self.std)
        return out.astype(np.float32)

    def rows(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Model inputs for raw records (``{column: value}``), as served: encode then standardise."""
        columns = {f.name: [r.get(f.name) for r in records] for f in self.features}
        for f in self.features:
            if f.kind == "numeric" and any(v is None for v in columns[f.name]):
                missing = next(i for i, v in enumerate(columns[f.name]) if v is None)
                raise DataError(f"rows.{missing}: numeric column '{f.name}' is missing")
        return self.normalise(self.encode(columns))

    def to_json(self) -> dict[str, Any]:
        """The fitted transform as JSON-ready data (``preprocess.json``)."""
        return {"kind": "tabular", "target": self.target, "encoding": self.encoding, "normalize": self.normalize,
                "features": [{"name": f.name, "kind": f.kind, **({"levels": list(f.levels)} if f.levels else {})}
                             for f in self.features],
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TabularTransform:
        """Inverse of :meth:`to_json`."""
        return cls(tuple(Feature(f["name"], f["kind"], tuple(f.get("levels", ()))) for f in data["features"]),
                   data["encoding"], bool(data["normalize"]), data.get("target", ""),
                   None if data.get("mean") is None else tuple(data["mean"]),
                   None if data.get("std") is None else tuple(data["std"]))


def save_transform(run_dir: Path, transform: TabularTransform) -> None:
    """Write ``preprocess.json`` atomically."""
    from crossframe.files import atomic_write_text

    atomic_write_text(Path(run_dir) / TRANSFORM_FILE, json.dumps(transform.to_json(), indent=1) + "\n")


def load_transform(run_dir: Path) -> TabularTransform | None:
    """The run's saved transform, or ``None`` when it trained on non-tabular data."""
    path = Path(run_dir) / TRANSFORM_FILE
    if not path.is_file():
        return None
    try:
        return TabularTransform.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a crossframe transform ({type(exc).__name__}: {exc})") from None


def normalised(ds: Dataset | None, transform: TabularTransform) -> Dataset | None:
    """``ds`` with its inputs standardised by ``transform`` (float32: what the model sees)."""
    if ds is None:
        return None
    return Dataset(transform.normalise(ds.x), ds.y, ds.task, class_names=ds.class_names, groups=ds.groups)


# --------------------------------------------------------------------------- reading


def _label(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _numbers(values: Any, column: str, source: str) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        out = values.astype(np.float64)
    else:
        out = np.empty(len(values))
        for i, v in enumerate(values):
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                where = f"'{source}' " if source else ""
                raise DataError(f"data.path: {where}has a non-numeric cell {v!r} in column '{column}' (row {i + 1}); "
                                f"list the column under data.categorical to encode it") from None
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):
        where = f"'{source}' " if source else ""
        raise DataError(f"data.path: {where}column '{column}' has a missing or non-finite value (row {bad[0] + 1})")
    return out


def read_csv_columns(path: Path, delimiter: str) -> dict[str, list[str]]:
    """The columns of a header-row CSV file, as strings."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"data.path: '{path}' is not a readable CSV file ({exc})") from None
    if len(rows) < 2:
        raise DataError(f"data.path: '{path}' needs a header row and at least one data row")
    header = rows[0]
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise DataError(f"data.path: '{path}' has two columns named '{dup}'")
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"data.path: '{path}' line {i} has {len(row)} cells; the header has {len(header)}")
    return {name: [row[j] for row in rows[1:]] for j, name in enumerate(header)}


def read_arrow_columns(path: Path, kind: str) -> dict[str, Any]:
    """The columns of a Parquet or Arrow IPC (Feather) file: numbers as numpy, the rest as lists."""
    try:
        import pyarrow as pa
        import pyarrow.feather as feather
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"data.name: '{kind}' reads files through pyarrow; install crossframe[tabular]") from None
    try:
        table = pq.read_table(path) if kind == "parquet" else feather.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"data.path: '{path}' is not a readable {kind} file ({exc})") from None
    out: dict[str, Any] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        typ = column.type
        numeric = pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
        if numeric and column.null_count == 0:
            out[name] = column.to_numpy().astype(np.float64)
        elif numeric:
            out[name] = [None if v is None else float(v) for v in column.to_pylist()]
        else:
            out[name] = column.to_pylist()
    return out


def tabular_dataset(columns: dict[str, Any], params: TabularParams) -> Dataset:
    """A :class:`Dataset` of the encoded (not yet standardised) table, carrying its transform."""
    source = str(params.path)
    names = list(columns)
    for role, wanted in (("target", [params.target]), ("categorical", params.categorical),
                         ("columns", params.columns or []), ("split.group", [params.group] if params.group else [])):
        for col in wanted:
            if col not in columns:
                raise DataError(f"data.{role}: column '{col}' not in '{source}' (columns: {', '.join(names)})")
    skip = {params.target, params.group}
    chosen = params.columns if params.columns is not None else [c for c in names if c not in skip]
    if params.target in chosen:
        raise DataError(f"data.columns: '{params.target}' is the target; it cannot be a feature too")
    if not chosen:
        raise DataError(f"data.columns: '{source}' has no feature columns besides the target")
    features = tuple(Feature(c, "categorical", tuple(sorted({_label(v) for v in columns[c]})))
                     if c in params.categorical else Feature(c, "numeric") for c in chosen)
    transform = TabularTransform(features, params.encoding, params.normalize, params.target, source=source)
    x = transform.encode(columns)
    y, task, class_names = _target(columns[params.target], params, source)
    groups = None if params.group is None else np.array([_label(v) for v in columns[params.group]])
    return Dataset(x, y, task, class_names=class_names, groups=groups, transform=transform)


def _target(values: Any, params: TabularParams, source: str) -> tuple[np.ndarray, Any, tuple[str, ...]]:
    labels = [_label(v) for v in values]
    try:
        numbers = _numbers(values, params.target, source)
    except DataError:
        numbers = None
    integral = numbers is not None and bool(np.all(numbers == np.round(numbers)))
    if numbers is not None and (params.task == "regression" or (params.task == "auto" and not integral)):
        return numbers, "regression", ()
    if numbers is None and params.task == "regression":
        raise DataError(f"data.target: column '{params.target}' of '{source}' is not numeric; regression needs numbers")
    if numbers is not None and integral and np.all(numbers >= 0):
        return numbers.astype(np.int64), "classification", ()
    names = tuple(sorted(set(labels)))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in labels], np.int64), "classification", names


def load_csv(params: CsvParams) -> Dataset:
    """Read a header-row CSV; categorical columns are encoded, the target split off."""
    if not params.path.is_file():
        raise DataError(f"data.path: file '{params.path}' not found")
    return tabular_dataset(read_csv_columns(params.path, params.delimiter), params)


def load_parquet(params: TabularParams) -> Dataset:
    """Read a Parquet file through pyarrow."""
    if not params.path.is_file():
        raise DataError(f"data.path: file '{params.path}' not found")
    return tabular_dataset(read_arrow_columns(params.path, "parquet"), params)


def load_arrow(params: TabularParams) -> Dataset:
    """Read an Arrow IPC (Feather v2) file through pyarrow."""
    if not params.path.is_file():
        raise DataError(f"data.path: file '{params.path}' not found")
    return tabular_dataset(read_arrow_columns(params.path, "arrow"), params)
