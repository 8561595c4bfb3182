"""Every metric equals scikit-learn's on random predictions and scores, absent classes included;
the loop gathers scores once per evaluation on every backend; a plugin adds a metric of each kind."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve

from crossframe import hookimpl
from crossframe import metrics as m
from crossframe.errors import ConfigError
from crossframe.metrics import EvalTotals, ScoreSet

# float64 sums of at most a few hundred terms of values in [0, 1]: a few ulps apart at most
TOL = 1e-12


@st.composite
def predictions(draw: Any) -> tuple[int, np.ndarray, np.ndarray]:
    """Classes, true labels and predicted labels, each drawn from a random subset of the classes
    (so classes go missing from the truth, the predictions, or both)."""
    classes = draw(st.integers(2, 6))
    n = draw(st.integers(1, 60))
    seen_true = draw(st.lists(st.integers(0, classes - 1), min_size=1, max_size=classes, unique=True))
    seen_pred = draw(st.lists(st.integers(0, classes - 1), min_size=1, max_size=classes, unique=True))
    y = np.array(draw(st.lists(st.sampled_from(seen_true), min_size=n, max_size=n)), np.int64)
    pred = np.array(draw(st.lists(st.sampled_from(seen_pred), min_size=n, max_size=n)), np.int64)
    return classes, y, pred


@st.composite
def score_sets(draw: Any) -> ScoreSet:
    """Labels from a random subset of the classes, and logits with ties (drawn from a coarse grid)."""
    classes = draw(st.integers(2, 6))
    n = draw(st.integers(1, 60))
    seen = draw(st.lists(st.integers(0, classes - 1), min_size=1, max_size=classes, unique=True))
    y = draw(st.lists(st.sampled_from(seen), min_size=n, max_size=n))
    grid = draw(st.sampled_from([0.5, 0.01]))  # coarse: many ties; fine: few
    logits = draw(st.lists(st.lists(st.integers(-400, 400), min_size=classes, max_size=classes),
                           min_size=n, max_size=n))
    return ScoreSet(np.array(y), np.array(logits, np.float64) * grid)


def totals_of(classes: int, y: np.ndarray, pred: np.ndarray) -> EvalTotals:
    cm = np.zeros((classes, classes), np.int64)
    np.add.at(cm, (y, pred), 1)
    return EvalTotals(loss_sum=0.0, count=len(y), confusion=cm)


@given(predictions())
def test_confusion_metrics_equal_sklearn(case: tuple[int, np.ndarray, np.ndarray]) -> None:
    classes, y, pred = case
    t = totals_of(classes, y, pred)
    assert m.accuracy(t) == pytest.approx(skm.accuracy_score(y, pred), abs=TOL)
    for ours, theirs in ((m.macro_precision, skm.precision_score), (m.macro_recall, skm.recall_score),
                         (m.macro_f1, skm.f1_score)):
        assert ours(t) == pytest.approx(theirs(y, pred, average="macro", zero_division=0), abs=TOL), ours.__name__
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=list(range(classes)), zero_division=0)
    np.testing.assert_allclose(m.per_class(t), np.stack([p, r, f, s], axis=1), atol=TOL)
    np.testing.assert_array_equal(m.confusion_matrix(t), skm.confusion_matrix(y, pred, labels=list(range(classes))))


def test_a_predicted_class_absent_from_the_truth_counts_as_scikit_learn_counts_it() -> None:
    """The issue's case: class 2 is predicted but never true, so its precision (0) joins the mean."""
    y, pred = np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2])
    t = totals_of(3, y, pred)
    assert m.macro_precision(t) == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert m.macro_f1(t) == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m.macro_precision(t) == pytest.approx(2 / 3)  # (1 + 1 + 0) / 3, not (1 + 1) / 2


def _present_mean(fn: Any, s: ScoreSet, need_negatives: bool) -> float:
    probs, values = s.probs, []
    for c in range(s.classes):
        pos = s.labels == c
        if pos.any() and (not need_negatives or not pos.all()):
            values.append(fn(pos, probs[:, c]))
    return float(np.mean(values)) if values else math.nan


@given(score_sets())
def test_roc_auc_equals_sklearn(s: ScoreSet) -> None:
    probs, y = s.probs, s.labels
    ours = m.roc_auc(s)
    if s.classes == 2:
        theirs = skm.roc_auc_score(y, probs[:, 1]) if len(set(y.tolist())) == 2 else math.nan
    elif len(set(y.tolist())) == s.classes:
        theirs = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(s.classes)))
    else:  # scikit-learn refuses absent classes; the mean of its per-class AUCs where one exists
        theirs = _present_mean(skm.roc_auc_score, s, need_negatives=True)
    assert ours == pytest.approx(theirs, abs=1e-9, nan_ok=True)


@given(score_sets())
def test_pr_auc_equals_sklearn(s: ScoreSet) -> None:
    probs, y = s.probs, s.labels
    ours = m.pr_auc(s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if s.classes == 2:
            theirs = skm.average_precision_score(y, probs[:, 1]) if (y == 1).any() else math.nan
        elif len(set(y.tolist())) == s.classes:
            onehot = np.eye(s.classes)[y]
            theirs = skm.average_precision_score(onehot, probs, average="macro")
        else:
            theirs = _present_mean(skm.average_precision_score, s, need_negatives=False)
    assert ours == pytest.approx(theirs, abs=1e-9, nan_ok=True)


@given(score_sets(), st.sampled_from([1, 2, 3, 5]))
def test_top_k_equals_sklearn(s: ScoreSet, k: int) -> None:
    labels = list(range(s.classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k >= classes warns
        if s.classes == 2:
            theirs = skm.top_k_accuracy_score(s.labels, s.probs[:, 1], k=k, labels=labels)
        else:
            theirs = skm.top_k_accuracy_score(s.labels, s.probs, k=k, labels=labels)
    assert m.top_k_accuracy(s, k) == pytest.approx(theirs, abs=TOL)


@given(score_sets())
def test_log_loss_equals_sklearn(s: ScoreSet) -> None:
    theirs = skm.log_loss(s.labels, s.probs, labels=list(range(s.classes)))
    assert m.log_loss(s) == pytest.approx(theirs, rel=1e-12, abs=TOL)


@given(score_sets())
def test_ece_equals_the_calibration_curve_weighted_by_bin_size(s: ScoreSet) -> None:
    probs = s.probs
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == s.labels).astype(np.float64)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=m.ECE_BINS, strategy="uniform")
    edges = np.linspace(0.0, 1.0, m.ECE_BINS + 1)
    sizes = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=m.ECE_BINS)
    sizes = sizes[sizes > 0]  # calibration_curve returns the non-empty bins, in order
    theirs = float(np.sum(sizes / len(confidence) * np.abs(prob_true - prob_pred)))
    assert m.expected_calibration_error(s) == pytest.approx(theirs, abs=1e-12)


def test_a_perfectly_confident_right_model_is_calibrated_and_scores_one() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    s = ScoreSet(y, np.eye(3)[y] * 60.0)
    assert m.roc_auc(s) == 1.0 and m.pr_auc(s) == 1.0 and m.top_k_accuracy(s, 1) == 1.0
    assert m.expected_calibration_error(s) == pytest.approx(0.0, abs=1e-12)
    assert m.log_loss(s) == pytest.approx(2.2e-16, rel=0.1)  # clipped at eps, as scikit-learn does


# --------------------------------------------------------------------------- the loop and the hooks


class _Plugin:
    @hookimpl
    def register_metrics(self, register: Any) -> None:
        register("errors_made", lambda t: float(t.confusion.sum() - np.trace(t.confusion)), description="test")

    @hookimpl
    def register_score_metrics(self, register: Any) -> None:
        register("brier", lambda s: float(np.mean(np.sum((s.probs - np.eye(s.classes)[s.labels]) ** 2, axis=1))),
                 description="test: Brier score")


def test_a_run_logs_score_metrics_that_equal_sklearn_on_its_predictions(workdir: Any, tiny: Any) -> None:
    """Training on torch with score metrics (two from a plugin): each equals scikit-learn's on the
    checkpoint's own predictions of the validation split."""
    import crossframe
    from crossframe.config.loading import load_config
    from crossframe.plugins import get_plugin_manager
    from crossframe.train.data import load_training_data
    from crossframe.train.runner import make_backend

    get_plugin_manager().register(_Plugin(), "metric-test-plugin")
    names = ["accuracy", "f1", "roc_auc", "pr_auc", "top_k", "log_loss", "ece", "per_class", "errors_made", "brier"]
    result = crossframe.run(tiny(metrics=names, eval_batch_size=7), quiet=True)
    cfg = load_config(result.run_dir / "config.yaml")
    val = load_training_data(cfg).val
    from crossframe.checkpoint import load_checkpoint
    from crossframe.models import spec_from_json

    ckpt = load_checkpoint(result.run_dir)
    backend = make_backend("torch")
    state = backend.inference_state(spec_from_json(ckpt.state["model"]), ckpt.weights)
    s = ScoreSet(val.y, backend.predict(state, val.x))
    got = result.metrics
    # float32 logits from two forward passes of the same weights: the same kernels, the same values
    assert got["val/roc_auc"] == pytest.approx(skm.roc_auc_score(val.y, s.probs, multi_class="ovr"), abs=1e-6)
    assert got["val/log_loss"] == pytest.approx(skm.log_loss(val.y, s.probs, labels=[0, 1, 2]), rel=1e-5)
    assert got["val/log_loss"] == pytest.approx(got["val/loss"], rel=1e-4)  # the same cross-entropy
    assert got["val/top_k"] == 1.0  # three classes
    pred = s.probs.argmax(axis=1)
    assert got["val/errors_made"] == float(np.sum(pred != val.y))
    assert got["val/brier"] == pytest.approx(float(np.mean(np.sum((s.probs - np.eye(3)[val.y]) ** 2, 1))), rel=1e-5)
    assert np.asarray(got["val/per_class"]).shape == (3, 4)


def test_eval_prints_the_per_class_report(workdir: Any, tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import crossframe
    from crossframe.cli.main import main

    run_dir = crossframe.run(tiny(steps=5, metrics=["accuracy"]), quiet=True).run_dir
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--set", "train.metrics=[accuracy, per_class]"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["precision", "recall", "f1-score", "support"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:5]}
    assert set(rows) == {"0", "1", "2"} and sum(int(r[-1]) for r in rows.values()) == int(lines[5].split()[-1])
    assert lines[5].startswith(" " * 3) and "macro avg" in lines[5] and "weighted avg" in lines[6]


@pytest.mark.parametrize("backend_name", ["torch", "jax", pytest.param("tensorflow", marks=pytest.mark.slow)])
def test_scores_are_gathered_in_one_fetch_and_equal_predict(backend_name: str) -> None:
    """Every backend's eval_step gives logits the loop gathers with a single fetch; they equal predict's."""
    from crossframe.data.dataset import Dataset
    from crossframe.models import build_model
    from crossframe.train.loop import gather_eval
    from crossframe.train.runner import make_backend

    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(23, 5)), rng.integers(0, 3, 23), "classification")
    spec = build_model("mlp", {"hidden": [4]}, data.info)
    backend = make_backend(backend_name)
    state = backend.inference_state(spec, spec.init(1))
    fetches, depth = [], [0]
    fetch = backend.fetch

    def counting(values: Any) -> Any:  # fetch recurses through nests: count the outer calls
        fetches.append(depth[0] == 0)
        depth[0] += 1
        try:
            return fetch(values)
        finally:
            depth[0] -= 1

    backend.fetch = counting  # type: ignore[method-assign]
    totals = gather_eval(backend, state, data, 5, scores=True)
    assert sum(fetches) == 1
    assert totals.scores is not None
    np.testing.assert_array_equal(totals.scores.labels, data.y)
    np.testing.assert_allclose(totals.scores.logits, backend.predict(state, data.x), atol=1e-6)
    assert gather_eval(backend, state, data, 5, scores=False).scores is None


def test_an_unknown_metric_is_one_line_listing_both_kinds(workdir: Any, tiny: Any) -> None:
    import crossframe

    with pytest.raises(ConfigError, match=r"train\.metrics\.1: unknown metric 'roc_aux'; did you mean 'roc_auc'"):
        crossframe.run(tiny(metrics=["accuracy", "roc_aux"]), quiet=True)
