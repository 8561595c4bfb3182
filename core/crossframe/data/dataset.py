"""In-memory datasets of numpy arrays and what a model needs to know about them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from crossframe.errors import DataError

Task = Literal["classification", "regression", "language_modeling"]


@dataclass(frozen=True)
class DataInfo:
    """The shape of one example and the target a model must produce."""

    task: Task
    input_shape: tuple[int, ...]
    num_outputs: int
    class_names: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """A JSON-ready dict (stored with checkpoints so a model can be rebuilt)."""
        return {"task": self.task, "input_shape": list(self.input_shape),
                "num_outputs": self.num_outputs, "class_names": list(self.class_names)}

    @classmethod
    def from_json(cls, data: dict) -> DataInfo:
        """Inverse of :meth:`to_json`."""
        return cls(data["task"], tuple(data["input_shape"]), int(data["num_outputs"]),
                   tuple(data.get("class_names", ())))


@dataclass
class Dataset:
    """Features ``x`` (float32, ``[N, *input_shape]``; float64 while a tabular ``transform`` is unapplied)
    and targets ``y``.

    Classification targets are int64 class ids; regression targets are float32 ``[N, k]``.
    ``x_val`` / ``y_val`` may be given by the source; otherwise the run splits ``x``.
    """

    x: np.ndarray
    y: np.ndarray
    task: Task
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    class_names: tuple[str, ...] = field(default=())
    #: per-example group ids (``data.split.group``): a group never straddles two splits
    groups: np.ndarray | None = None
    #: a transform fitted on the training split only (tabular normalisation), see :mod:`crossframe.data.tabular`
    transform: Any = None

    def __post_init__(self) -> None:
        # raw tabular inputs stay float64 until the training split's statistics standardise them
        self.x = np.ascontiguousarray(self.x, dtype=np.float64 if self.transform is not None else np.float32)
        self.y = self._targets(self.y)
        if len(self.x) != len(self.y):
            raise DataError(f"data: {len(self.x)} inputs but {len(self.y)} targets")
        if self.groups is not None and len(self.groups) != len(self.x):
            raise DataError(f"data: {len(self.groups)} group ids for {len(self.x)} examples")
        if self.x_val is not None and self.y_val is not None:
            self.x_val = np.ascontiguousarray(self.x_val, dtype=np.float32)
            self.y_val = self._targets(self.y_val)

    def _targets(self, y: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            if not np.all(np.equal(np.mod(y, 1), 0)):
                raise DataError("data: classification targets must be integer class ids")
            if len(y) and np.min(y) < 0:
                raise DataError("data: classification targets must be class ids >= 0")
            return np.ascontiguousarray(y, dtype=np.int64).reshape(-1)
        y = np.asarray(y, dtype=np.float32)
        return np.ascontiguousarray(y.reshape(len(y), -1))

    @property
    def info(self) -> DataInfo:
        """The :class:`DataInfo` a model is built from."""
        if self.task == "classification":
            labels = self.y if self.y_val is None else np.concatenate([self.y, self.y_val])
            outputs = max(int(labels.max()) + 1, len(self.class_names))
        else:
            outputs = int(self.y.shape[1])
        return DataInfo(self.task, tuple(int(d) for d in self.x.shape[1:]), outputs, self.class_names)

    def split(self, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """Train and validation parts: the source's own, or a seeded random split."""
        if self.x_val is not None and self.y_val is not None:
            return (Dataset(self.x, self.y, self.task, class_names=self.class_names),
                    Dataset(self.x_val, self.y_val, self.task, class_names=self.class_names))
        order = np.random.default_rng([seed, 7919]).permutation(len(self.x))
        n_val = round(len(self.x) * val_fraction)
        if n_val >= len(self.x):
            raise DataError(f"data.val_fraction: {val_fraction} leaves no training examples")
        val, train = order[:n_val], order[n_val:]
        return self.subset(train), self.subset(val)

    def subset(self, index: np.ndarray) -> Dataset:
        """The examples at ``index`` (their groups too), with the same class names and transform."""
        return Dataset(self.x[index], self.y[index], self.task, class_names=self.class_names,
                       groups=None if self.groups is None else self.groups[index], transform=self.transform)

    def __len__(self) -> int:
        return len(self.x)

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """All examples in order, in batches (the last may be smaller)."""
        for start in range(0, len(self), batch_size):
            yield {"x": self.x[start:start + batch_size], "y": self.y[start:start + batch_size]}
