"""Evaluation metrics, computed on the host from what a backend gathers on its device.

Two kinds, both registered through hooks (see :mod:`crossframe.hookspecs`):

- **confusion metrics** (``register_metrics``): ``fn(EvalTotals)``, from the summed confusion
  matrix or error sums (:mod:`crossframe.metrics.confusion`);
- **score metrics** (``register_score_metrics``): ``fn(ScoreSet)``, from every example's label and
  logits (:mod:`crossframe.metrics.scores`). The loop keeps the logits only when one is asked for.

Either way the loop fetches from the device once per evaluation, never once per batch.
"""

from __future__ import annotations

from crossframe.metrics.confusion import (
    accuracy,
    confusion_matrix,
    loss,
    macro_f1,
    macro_precision,
    macro_recall,
    mae,
    per_class,
    per_class_counts,
    perplexity,
    rmse,
)
from crossframe.metrics.scores import (
    ECE_BINS,
    binary_average_precision,
    binary_roc_auc,
    expected_calibration_error,
    log_loss,
    pr_auc,
    roc_auc,
    top_3,
    top_5,
    top_k_accuracy,
)
from crossframe.metrics.totals import MAX_SCORE_VALUES, EvalTotals, ScoreMetric, ScoreSet, needs_scores

DEFAULT_METRICS = {
    "classification": ["accuracy", "precision", "recall", "f1"],
    "regression": ["mae", "rmse"],
    "language_modeling": ["perplexity"],
}

__all__ = [
    "DEFAULT_METRICS", "ECE_BINS", "MAX_SCORE_VALUES", "EvalTotals", "ScoreMetric", "ScoreSet", "accuracy",
    "binary_average_precision", "binary_roc_auc", "confusion_matrix", "expected_calibration_error", "log_loss",
    "loss", "macro_f1", "macro_precision", "macro_recall", "mae", "needs_scores", "per_class",
    "per_class_counts", "perplexity", "pr_auc", "rmse", "roc_auc", "top_3", "top_5", "top_k_accuracy",
]
