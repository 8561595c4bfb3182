"""Metrics of every example's scores: ROC-AUC, PR-AUC, top-k accuracy, log-loss and ECE.

Each takes a :class:`~crossframe.metrics.totals.ScoreSet` (true classes and float64 logits of
the whole evaluation) and matches scikit-learn's definition:

- ``roc_auc``: two classes, the AUC of class 1's probability (``roc_auc_score(y, p[:, 1])``);
  more, the unweighted mean over classes of the one-vs-rest AUC of that class's probability
  (``multi_class="ovr", average="macro"``). A class absent from the truth (or the only one
  present) has no AUC and is left out of the mean (scikit-learn refuses such data); NaN when no
  class has one.
- ``pr_auc``: average precision, ``sum_k (R_k - R_{k-1}) P_k`` over descending score thresholds
  (``average_precision_score``; no interpolation); binary on class 1, else the macro mean over
  the classes present in the truth.
- ``top_k`` (k = 5) and ``top_3``: the true class is among the k highest scores
  (``top_k_accuracy_score``, whose tie order this keeps).
- ``log_loss``: mean ``-log p(true class)``, probabilities clipped to ``[eps, 1 - eps]`` with the
  float64 ``eps`` (``log_loss``).
- ``ece``: expected calibration error of the top class (confidence = the highest probability,
  correct = its arg-max is the truth), 15 equal-width bins ``[0, 1/15], (1/15, 2/15], ...,
  (14/15, 1]`` (``calibration_curve``'s ``searchsorted`` binning: a value on an edge falls in the
  lower bin): ``sum_b n_b / N * |accuracy_b - mean confidence_b|``.
"""

from __future__ import annotations

import numpy as np

from crossframe.metrics.totals import ScoreSet

ECE_BINS = 15


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def binary_roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """The area under the ROC curve (Mann-Whitney U, ties counted half); NaN without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """Average precision (area under the step precision-recall curve); NaN without positives."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    s, p = np.asarray(score, dtype=np.float64)[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last example of each distinct score
    tps = np.cumsum(p)[last].astype(np.float64)
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _per_class_mean(scores: ScoreSet, fn: object) -> float:
    probs = scores.probs
    if scores.classes == 2:
        return fn(scores.labels == 1, probs[:, 1])  # type: ignore[operator]
    values = [fn(scores.labels == c, probs[:, c]) for c in range(scores.classes)]  # type: ignore[operator]
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def roc_auc(scores: ScoreSet) -> float:
    """ROC-AUC: binary on class 1, else the one-vs-rest macro mean over classes that have one."""
    return _per_class_mean(scores, binary_roc_auc)


def pr_auc(scores: ScoreSet) -> float:
    """Average precision: binary on class 1, else the macro mean over classes present in the truth."""
    return _per_class_mean(scores, binary_average_precision)


def top_k_accuracy(scores: ScoreSet, k: int) -> float:
    """Fraction of examples whose true class is among the ``k`` highest scores."""
    if len(scores.labels) == 0:
        return 0.0
    probs = scores.probs
    if k >= scores.classes:
        return 1.0
    if scores.classes == 2:  # k == 1: scikit-learn thresholds class 1's probability at 0.5
        return float(np.mean((probs[:, 1] > 0.5).astype(np.int64) == scores.labels))
    best = np.argsort(probs, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float(np.mean((best == scores.labels[:, None]).any(axis=1)))


def top_5(scores: ScoreSet) -> float:
    """Top-5 accuracy (1.0 with five classes or fewer)."""
    return top_k_accuracy(scores, 5)


def top_3(scores: ScoreSet) -> float:
    """Top-3 accuracy."""
    return top_k_accuracy(scores, 3)


def log_loss(scores: ScoreSet) -> float:
    """Mean negative log-probability of the true class (clipped to ``[eps, 1 - eps]``)."""
    if len(scores.labels) == 0:
        return 0.0
    eps = np.finfo(np.float64).eps
    p = np.clip(scores.probs, eps, 1 - eps)
    return float(-np.mean(np.log(p[np.arange(len(p)), scores.labels])))


def expected_calibration_error(scores: ScoreSet, bins: int = ECE_BINS) -> float:
    """Top-class expected calibration error over ``bins`` equal-width confidence bins."""
    n = len(scores.labels)
    if n == 0:
        return 0.0
    probs = scores.probs
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == scores.labels).astype(np.float64)
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], confidence)
    gap = np.abs(np.bincount(which, weights=correct, minlength=bins)
                 - np.bincount(which, weights=confidence, minlength=bins))
    return float(gap.sum() / n)  # sum_b n_b/N * |acc_b - conf_b| = sum_b |sum correct - sum conf| / N
