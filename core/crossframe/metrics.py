"""Evaluation metrics, computed on the host from sums a backend accumulates on its device.

A backend's ``eval_step`` returns, per batch, device values for ``loss_sum`` and ``count`` and
either ``confusion`` (classification, ``[C, C]`` counts, rows = truth), ``abs_err_sum`` /
``sq_err_sum`` (regression), or nothing more (language modelling: ``count`` is the number of
counted target tokens). The loop fetches them once per evaluation and sums them into
:class:`EvalTotals`; every metric is a function of those totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

DEFAULT_METRICS = {
    "classification": ["accuracy", "precision", "recall", "f1"],
    "regression": ["mae", "rmse"],
    "language_modeling": ["perplexity"],
}


@dataclass
class EvalTotals:
    """Sums over a whole evaluation."""

    loss_sum: float
    count: int
    confusion: np.ndarray | None = None
    abs_err_sum: float = 0.0
    sq_err_sum: float = 0.0
    outputs: int = 1

    @classmethod
    def from_batches(cls, batches: Iterable[Mapping[str, np.ndarray]]) -> EvalTotals:
        """Sum per-batch host values (as returned by a backend's ``eval_step``, fetched)."""
        totals: dict[str, np.ndarray] = {}
        for batch in batches:
            for key, value in batch.items():
                value = np.asarray(value, dtype=np.float64)
                if key == "outputs":  # a property of the model, the same in every batch
                    totals[key] = value
                    continue
                totals[key] = totals[key] + value if key in totals else value
        confusion = totals.get("confusion")
        return cls(
            loss_sum=float(totals.get("loss_sum", 0.0)),
            count=int(totals.get("count", 0)),
            confusion=None if confusion is None else confusion.astype(np.int64),
            abs_err_sum=float(totals.get("abs_err_sum", 0.0)),
            sq_err_sum=float(totals.get("sq_err_sum", 0.0)),
            outputs=int(totals.get("outputs", 1)) if "outputs" in totals else 1,
        )


def loss(t: EvalTotals) -> float:
    """Mean loss per example (per counted token for language models)."""
    return t.loss_sum / max(t.count, 1)


def perplexity(t: EvalTotals) -> float:
    """``exp`` of the mean per-token cross-entropy."""
    return float(np.exp(min(loss(t), 700.0)))


def accuracy(t: EvalTotals) -> float:
    """Fraction of examples whose arg-max class is right."""
    cm = _confusion(t)
    return float(np.trace(cm) / max(cm.sum(), 1))


def _per_class(t: EvalTotals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = _confusion(t).astype(np.float64)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cm.sum(axis=0) > 0, tp / cm.sum(axis=0), 0.0)
        recall = np.where(cm.sum(axis=1) > 0, tp / cm.sum(axis=1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = cm.sum(axis=1) > 0  # macro averages over classes present in the truth
    return precision[present], recall[present], f1[present]


def macro_precision(t: EvalTotals) -> float:
    """Unweighted mean of per-class precision over the classes present."""
    return float(_per_class(t)[0].mean())


def macro_recall(t: EvalTotals) -> float:
    """Unweighted mean of per-class recall over the classes present."""
    return float(_per_class(t)[1].mean())


def macro_f1(t: EvalTotals) -> float:
    """Unweighted mean of per-class F1 over the classes present."""
    return float(_per_class(t)[2].mean())


def confusion_matrix(t: EvalTotals) -> np.ndarray:
    """``[C, C]`` counts, rows are the true class, columns the predicted one."""
    return _confusion(t)


def mae(t: EvalTotals) -> float:
    """Mean absolute error per target value."""
    return t.abs_err_sum / max(t.count * t.outputs, 1)


def rmse(t: EvalTotals) -> float:
    """Root mean squared error per target value."""
    return float(np.sqrt(t.sq_err_sum / max(t.count * t.outputs, 1)))


def _confusion(t: EvalTotals) -> np.ndarray:
    if t.confusion is None:
        raise ValueError("classification metric asked of a regression evaluation")
    return t.confusion
