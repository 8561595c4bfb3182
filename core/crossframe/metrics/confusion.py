"""Metrics of the confusion totals (classification), error sums (regression) and the loss.

Macro averages follow scikit-learn's definitions (``average="macro"``, ``zero_division=0``): the
classes averaged are those that occur in the truth *or* the predictions; a class never predicted
has precision 0, a class absent from the truth has recall 0, and F1 is ``2tp / (2tp + fp + fn)``.
"""

from __future__ import annotations

import numpy as np

from crossframe.metrics.totals import EvalTotals


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


def per_class_counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``precision, recall, f1, support`` (float64 ``[C]`` each) of a confusion matrix,
    0 where a ratio's denominator is 0 (scikit-learn's ``zero_division=0``)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denominator = predicted + support  # 2tp + fp + fn
        f1 = np.where(denominator > 0, 2 * tp / denominator, 0.0)
    return precision, recall, f1, support


def _macro(t: EvalTotals, which: int) -> float:
    cm = _confusion(t)
    seen = (cm.sum(axis=0) + cm.sum(axis=1)) > 0  # in the truth or the predictions
    if not seen.any():
        return 0.0
    return float(per_class_counts(cm)[which][seen].mean())


def macro_precision(t: EvalTotals) -> float:
    """Unweighted mean of per-class precision over the classes seen in the truth or predictions."""
    return _macro(t, 0)


def macro_recall(t: EvalTotals) -> float:
    """Unweighted mean of per-class recall over the classes seen in the truth or predictions."""
    return _macro(t, 1)


def macro_f1(t: EvalTotals) -> float:
    """Unweighted mean of per-class F1 over the classes seen in the truth or predictions."""
    return _macro(t, 2)


def per_class(t: EvalTotals) -> np.ndarray:
    """The per-class report: ``[C, 4]`` rows of ``precision, recall, f1, support`` for every class
    (scikit-learn's ``precision_recall_fscore_support(labels=range(C), zero_division=0)``)."""
    return np.stack(per_class_counts(_confusion(t)), axis=1)


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
