"""What an evaluation gathers: confusion totals from the device, and optionally every example's scores.

A backend's ``eval_step`` returns, per batch, device values for ``loss_sum`` and ``count`` and
either ``confusion`` (classification, ``[C, C]`` counts, rows = truth), ``abs_err_sum`` /
``sq_err_sum`` (regression), or nothing more (language modelling: ``count`` is the number of
counted target tokens). Classifiers also return ``logits`` ``[B, C]``; the loop keeps them only
when a score metric (ROC-AUC, log-loss, ...) is asked for, and fetches everything once per
evaluation. Confusion totals are summed into :class:`EvalTotals`; kept logits and the host labels
become its :class:`ScoreSet`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: per-batch keys that are not sums: kept (``outputs``) or concatenated (``logits``)
NOT_SUMMED = ("outputs", "logits")
#: the most score values (examples x classes) an evaluation may keep: 2**27 float32 = 512 MiB
MAX_SCORE_VALUES = 1 << 27


@dataclass
class ScoreSet:
    """Every evaluated example's true class and float64 logits, in evaluation order."""

    labels: np.ndarray  # int64 [N]
    logits: np.ndarray  # float64 [N, C]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.logits = np.asarray(self.logits, dtype=np.float64)
        if self.logits.ndim != 2 or len(self.logits) != len(self.labels):
            raise ValueError(f"scores: logits of shape {self.logits.shape} for {len(self.labels)} labels")

    @property
    def classes(self) -> int:
        """The number of classes (columns of the logits)."""
        return int(self.logits.shape[1])

    @property
    def probs(self) -> np.ndarray:
        """Softmax probabilities ``[N, C]`` in float64 (rows sum to 1)."""
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)


@dataclass
class EvalTotals:
    """Sums over a whole evaluation, and the scores when a score metric asked for them."""

    loss_sum: float
    count: int
    confusion: np.ndarray | None = None
    abs_err_sum: float = 0.0
    sq_err_sum: float = 0.0
    outputs: int = 1
    scores: ScoreSet | None = None

    @classmethod
    def from_batches(cls, batches: Iterable[Mapping[str, np.ndarray]],
                     labels: Iterable[np.ndarray] | None = None) -> EvalTotals:
        """Sum per-batch host values (as returned by a backend's ``eval_step``, fetched).

        With ``labels`` (the batches' host ``y``, in order), the batches' ``logits`` become
        :attr:`scores`; without, any ``logits`` are ignored.
        """
        totals: dict[str, np.ndarray] = {}
        logits: list[np.ndarray] = []
        for batch in batches:
            for key, value in batch.items():
                if key == "logits":
                    logits.append(np.asarray(value))
                    continue
                value = np.asarray(value, dtype=np.float64)
                if key == "outputs":  # a property of the model, the same in every batch
                    totals[key] = value
                    continue
                totals[key] = totals[key] + value if key in totals else value
        confusion = totals.get("confusion")
        scores = None
        if labels is not None:
            ys = [np.asarray(y) for y in labels]
            if len(logits) != len(ys):
                raise ValueError(f"scores: {len(logits)} batches of logits for {len(ys)} batches of labels")
            scores = ScoreSet(np.concatenate(ys) if ys else np.zeros(0, np.int64),
                              np.concatenate(logits) if logits else np.zeros((0, 1)))
        return cls(
            loss_sum=float(totals.get("loss_sum", 0.0)),
            count=int(totals.get("count", 0)),
            confusion=None if confusion is None else confusion.astype(np.int64),
            abs_err_sum=float(totals.get("abs_err_sum", 0.0)),
            sq_err_sum=float(totals.get("sq_err_sum", 0.0)),
            outputs=int(totals.get("outputs", 1)) if "outputs" in totals else 1,
            scores=scores,
        )


class ScoreMetric:
    """A metric of every example's scores (``fn(ScoreSet)``), callable on :class:`EvalTotals`.

    The loop keeps the evaluation's logits only when one of its metrics is a ``ScoreMetric``.
    """

    needs_scores = True

    def __init__(self, fn: Callable[[ScoreSet], Any]) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __call__(self, totals: EvalTotals) -> Any:
        """``fn`` of the totals' scores."""
        if totals.scores is None:
            raise ValueError("score metric asked of an evaluation that kept no scores")
        return self.fn(totals.scores)


def needs_scores(metric_fns: Mapping[str, Any]) -> bool:
    """Whether any of ``metric_fns`` reads every example's scores."""
    return any(getattr(fn, "needs_scores", False) for fn in metric_fns.values())
