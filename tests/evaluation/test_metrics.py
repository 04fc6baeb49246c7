"""Metrics from labels and scores: agreement with scikit-learn, intervals, undefined values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from pcamflow.errors import DataError
from pcamflow.evaluation import (
    METRIC_NAMES,
    choose_threshold,
    compute_metrics,
    evaluate_scores,
    flatten_metrics,
)


def noisy_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(0.35 * labels + 0.65 * rng.random(n), 0, 1).round(3)  # ties on purpose
    return labels, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_point_metrics_agree_with_scikit_learn(seed, threshold):
    labels, scores = noisy_scores(500, seed)
    predicted = (scores >= threshold).astype(int)
    m = compute_metrics(labels, scores, threshold=threshold, bootstrap=0)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert m["precision"] == pytest.approx(skm.precision_score(labels, predicted))
    assert m["recall"] == pytest.approx(skm.recall_score(labels, predicted))
    assert m["specificity"] == pytest.approx(skm.recall_score(labels, predicted, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(labels, predicted))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(labels, scores))
    assert m["log_loss"] == pytest.approx(skm.log_loss(labels, scores))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(labels, scores))
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, predicted).tolist()
    assert m["n"] == 500 and m["n_positive"] == int(labels.sum())


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_data():
    small = compute_metrics(*noisy_scores(200, 0), bootstrap=300, seed=1)
    large = compute_metrics(*noisy_scores(5000, 0), bootstrap=300, seed=1)
    for m in (small, large):
        for name in ("accuracy", "roc_auc"):
            low, high = m[f"{name}_ci95"]
            assert low <= m[name] <= high
    width = lambda m, k: m[f"{k}_ci95"][1] - m[f"{k}_ci95"][0]  # noqa: E731
    assert width(large, "accuracy") < width(small, "accuracy")
    assert width(large, "roc_auc") < width(small, "roc_auc")
    assert small["bootstrap"] == 300


def test_the_accuracy_interval_is_the_95_percent_one_of_its_binomial():
    """Resampling a fixed 1600-of-2000 correct set draws Binomial(2000, 0.8) / 2000: its 2.5%
    and 97.5% quantiles are 0.7825 and 0.8175 (90% would give 0.785 and 0.8145)."""
    labels = np.array([1, 0] * 1000)
    correct = np.zeros(2000, bool)
    correct[:1600] = True
    np.random.default_rng(3).shuffle(correct)
    scores = np.where(correct, np.where(labels == 1, 0.8, 0.2), np.where(labels == 1, 0.3, 0.7))
    m = compute_metrics(labels, scores, bootstrap=4000, seed=0)
    assert m["accuracy"] == 0.8
    assert m["accuracy_ci95"] == pytest.approx([0.7825, 0.8175], abs=0.001)


def _rank_auc(labels, scores, axis=-1):
    """ROC AUC as the Mann-Whitney U statistic (ties get mean ranks), over ``axis``."""
    from scipy import stats

    ranks = stats.rankdata(scores, axis=axis)
    n1 = labels.sum(axis=axis)
    n0 = labels.shape[axis] - n1
    return ((ranks * labels).sum(axis=axis) - n1 * (n1 + 1) / 2) / (n1 * n0)


def test_the_auc_interval_agrees_with_scipys_percentile_bootstrap():
    from scipy import stats

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 1000)
    scores = np.clip(0.3 * labels + 0.7 * rng.random(1000), 0, 1)
    m = compute_metrics(labels, scores, bootstrap=2000, seed=0)
    reference = stats.bootstrap(
        (labels, scores), _rank_auc, paired=True, vectorized=True, n_resamples=2000,
        method="percentile", confidence_level=0.95, random_state=5).confidence_interval
    # resampling noise is about 0.001 here; a 90% interval would sit 0.004 inside
    assert m["roc_auc_ci95"] == pytest.approx([reference.low, reference.high], abs=0.002)


def test_the_fast_bootstrap_auc_agrees_with_scikit_learn_on_resamples():
    from pcamflow.evaluation.metrics import _auc_from_groups

    labels, scores = noisy_scores(400, 5)  # rounded scores: many ties
    uniques, group = np.unique(scores, return_inverse=True)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.integers(0, len(labels), len(labels))
        pos = np.bincount(group[idx], weights=labels[idx], minlength=len(uniques))
        neg = np.bincount(group[idx], weights=1 - labels[idx], minlength=len(uniques))
        expected = skm.roc_auc_score(labels[idx], scores[idx])
        assert _auc_from_groups(pos, neg) == pytest.approx(expected, rel=1e-12)
    assert _auc_from_groups(np.array([2.0, 1.0]), np.zeros(2)) is None


def test_bootstrap_is_repeatable_with_its_seed():
    labels, scores = noisy_scores(300, 4)
    first = compute_metrics(labels, scores, bootstrap=100, seed=7)
    again = compute_metrics(labels, scores, bootstrap=100, seed=7)
    assert first["roc_auc_ci95"] == again["roc_auc_ci95"]


@pytest.mark.parametrize("only", [0, 1])
def test_one_class_leaves_auc_undefined_without_crashing(only):
    labels = np.full(20, only)
    scores = np.linspace(0.05, 0.95, 20)
    m = compute_metrics(labels, scores, bootstrap=50)
    assert m["roc_auc"] is None and m["roc_auc_ci95"] is None
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["accuracy_ci95"] is not None
    assert any("roc_auc" in note and "undefined" in note for note in m["notes"])
    if only == 0:
        assert m["recall"] is None and m["average_precision"] is None
    else:
        assert m["specificity"] is None
    assert all(m[name] is None or isinstance(m[name], float) for name in METRIC_NAMES)


def test_a_score_of_exactly_zero_or_one_costs_a_bounded_log_loss():
    # clipped at 1e-15: a confident miss costs -ln(1e-15) per sample, not infinity
    m = compute_metrics([1, 0], [0.0, 0.0], bootstrap=0)
    assert m["log_loss"] == pytest.approx(-np.log(1e-15) / 2)
    assert m["accuracy"] == 0.5 and m["brier"] == 0.5


def test_nothing_predicted_positive_leaves_precision_undefined():
    m = compute_metrics([0, 1, 1], [0.1, 0.2, 0.3], bootstrap=0)
    assert m["precision"] is None and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["specificity"] == 1.0 and m["confusion_matrix"] == [[1, 0], [2, 0]]
    assert any("precision is undefined" in note for note in m["notes"])


@pytest.mark.parametrize(("labels", "scores", "pattern"), [
    ([0, 1], [0.5], "differ in length"),
    ([], [], "empty"),
    ([0, 2], [0.1, 0.2], "must be 0 or 1; found 2"),
    ([0, 1], [0.1, 1.2], r"probabilities in \[0, 1\]"),
    ([0, 1], [0.1, float("nan")], "probabilities"),
])
def test_bad_input_is_a_data_error(labels, scores, pattern):
    with pytest.raises(DataError, match=pattern):
        compute_metrics(labels, scores)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_threshold_maximises_youdens_j(seed):
    labels, scores = noisy_scores(300, seed)
    chosen, _ = choose_threshold(labels, scores)

    def youden(t):
        predicted = scores >= t
        return (predicted & (labels == 1)).sum() / labels.sum() - (
            predicted & (labels == 0)).sum() / (labels == 0).sum()

    assert youden(chosen) == pytest.approx(max(youden(t) for t in np.unique(scores)))


def test_one_class_validation_keeps_the_threshold_at_one_half():
    assert choose_threshold([1, 1, 1], [0.2, 0.4, 0.9])[0] == 0.5


def test_the_document_sets_variants_side_by_side_and_flattens():
    labels, scores = noisy_scores(200, 0)
    valid_labels, valid_scores = noisy_scores(100, 1)
    document = evaluate_scores(labels, scores, valid_labels=valid_labels,
                               valid_scores=valid_scores, tta_scores=scores * 0.9,
                               tta_valid_scores=valid_scores * 0.9, bootstrap=50,
                               info={"split": "test"})
    assert list(document["results"]) == ["plain@0.5", "plain@valid", "tta@0.5", "tta@valid"]
    threshold = document["thresholds"]["plain"]["value"]
    assert document["results"]["plain@valid"]["threshold"] == threshold
    flat = flatten_metrics(document)
    assert set(METRIC_NAMES) <= set(flat)
    assert flat["plain@valid/accuracy"] == document["results"]["plain@valid"]["accuracy"]
    assert flat["threshold/tta"] == document["thresholds"]["tta"]["value"]
    assert flat["accuracy_ci95_low"] == document["results"]["plain@0.5"]["accuracy_ci95"][0]
    assert all(v is None or isinstance(v, float) for v in flat.values())
    assert document["info"] == {"split": "test"}
