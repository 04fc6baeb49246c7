"""Metrics worked out by hand on four predictions: the document, its notes and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from pcamflow.errors import DataError
from pcamflow.evaluation import choose_threshold, compute_metrics, evaluate_scores, flatten_metrics

# at 0.5: tn=1 (0.1), fp=1 (0.6), fn=1 (0.4), tp=1 (0.9); AUC: 3 of 4 positive-negative pairs
# ordered (0.4 < 0.6), so 0.75
LABELS, SCORES = [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9]
# on the validation split, t=0.7 separates the classes (J = 1); t=0.3 does not (J = 0)
VALID_LABELS, VALID_SCORES = [0, 1], [0.3, 0.7]
YOUDEN = "maximises Youden's J on the validation split"


def test_the_point_metrics_of_four_predictions() -> None:
    m = compute_metrics(LABELS, SCORES, bootstrap=0)
    assert (m["n"], m["n_positive"], m["n_negative"], m["threshold"]) == (4, 2, 2, 0.5)
    assert [m[k] for k in ("accuracy", "precision", "recall", "specificity", "f1")] == [0.5] * 5
    assert m["roc_auc"] == 0.75 and m["confusion_matrix"] == [[1, 1], [1, 1]]
    # (0.1² + 0.6² + 0.6² + 0.1²) / 4
    assert m["brier"] == pytest.approx(0.185)
    assert m["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.4) + np.log(0.4)
                                            + np.log(0.9)) / 4)
    assert (m["accuracy_ci95"], m["roc_auc_ci95"], m["bootstrap"], m["notes"]) == (
        None, None, 0, [])
    strict = compute_metrics(LABELS, SCORES, threshold=0.6, bootstrap=0)  # >= 0.6 is positive
    assert strict["confusion_matrix"] == [[1, 1], [1, 1]] and strict["threshold"] == 0.6
    assert compute_metrics(LABELS, SCORES, threshold=0.61, bootstrap=0)["confusion_matrix"] == [
        [2, 0], [1, 1]]


def test_the_bootstrap_defaults_to_1000_resamples_with_seed_0() -> None:
    m = compute_metrics(LABELS * 5, SCORES * 5)
    assert m["bootstrap"] == 1000
    assert m["accuracy_ci95"] == compute_metrics(LABELS * 5, SCORES * 5, bootstrap=1000,
                                                 seed=0)["accuracy_ci95"]
    document = evaluate_scores(LABELS * 5, SCORES * 5)
    assert document["results"]["plain@0.5"]["bootstrap"] == 1000
    assert document["results"]["plain@0.5"]["roc_auc_ci95"] == m["roc_auc_ci95"]


def test_the_notes_say_why_a_value_is_undefined() -> None:
    assert compute_metrics([0, 0], [0.2, 0.7], bootstrap=0)["notes"] == [
        "only negative (0) labels: roc_auc, recall, average_precision undefined"]
    assert compute_metrics([1, 1], [0.2, 0.7], bootstrap=0)["notes"] == [
        "only positive (1) labels: roc_auc, specificity undefined"]
    assert compute_metrics([0, 1], [0.2, 0.3], threshold=0.25, bootstrap=0)["notes"] == []
    assert compute_metrics([0, 1], [0.2, 0.3], threshold=0.35, bootstrap=0)["notes"] == [
        "nothing predicted positive at threshold 0.35: precision is undefined"]
    one_class = compute_metrics([1, 1, 1], [0.2, 0.7, 0.9], bootstrap=20)
    assert one_class["roc_auc_ci95"] is None and one_class["notes"] == [
        "only positive (1) labels: roc_auc, specificity undefined"]
    # one positive, one negative: a resample holds both with probability 1/2. The interval
    # needs at least half the resamples to hold both: seed 0 draws fewer, seed 1 exactly 20/40
    rare = compute_metrics([1, 0], [0.9, 0.1], bootstrap=40, seed=0)
    assert rare["roc_auc_ci95"] is None
    assert rare["notes"] == [
        "too few resamples held both classes: the roc_auc interval is undefined"]
    half = compute_metrics([1, 0], [0.9, 0.1], bootstrap=40, seed=1)
    assert half["roc_auc_ci95"] == [1.0, 1.0]
    assert half["notes"] == [
        "20 of 40 resamples held one class only and were left out of the roc_auc interval"]
    every = compute_metrics([1, 1, 1, 0, 0, 0] * 5, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1] * 5,
                            bootstrap=50, seed=0)
    assert every["roc_auc_ci95"] == [1.0, 1.0] and every["notes"] == []


def test_the_threshold_is_chosen_on_validation_and_applied_to_test() -> None:
    assert choose_threshold(VALID_LABELS, VALID_SCORES) == (0.7, YOUDEN)
    assert choose_threshold([0, 0], [0.2, 0.4]) == (
        0.5, "the validation split holds one class only: threshold left at 0.5")
    document = evaluate_scores(LABELS, SCORES, valid_labels=VALID_LABELS,
                               valid_scores=VALID_SCORES, bootstrap=0, info={"model": "m"})
    assert {k: v for k, v in document.items() if k != "results"} == {
        "format": 1, "n": 4, "n_positive": 2, "n_negative": 2,
        "thresholds": {"plain": {"value": 0.7, "note": YOUDEN}}, "info": {"model": "m"}}
    assert list(document["results"]) == ["plain@0.5", "plain@valid"]
    at_valid = document["results"]["plain@valid"]
    assert (at_valid["threshold"], at_valid["accuracy"]) == (0.7, 0.75)
    assert at_valid["confusion_matrix"] == [[2, 0], [1, 1]]
    plain = evaluate_scores(LABELS, SCORES, valid_labels=VALID_LABELS, bootstrap=0)
    assert list(plain["results"]) == ["plain@0.5"] and plain["thresholds"] == {}
    assert plain["info"] == {}
    alone = evaluate_scores(LABELS, SCORES, valid_scores=VALID_SCORES, bootstrap=0)
    assert list(alone["results"]) == ["plain@0.5"]


def test_test_time_augmentation_gets_its_own_rows() -> None:
    document = evaluate_scores(LABELS, SCORES, valid_labels=VALID_LABELS,
                               valid_scores=VALID_SCORES, tta_scores=[0.1, 0.2, 0.8, 0.9],
                               tta_valid_scores=[0.4, 0.6], bootstrap=0)
    assert list(document["results"]) == ["plain@0.5", "plain@valid", "tta@0.5", "tta@valid"]
    assert document["results"]["tta@0.5"]["accuracy"] == 1.0
    assert document["thresholds"]["tta"] == {"value": 0.6, "note": YOUDEN}
    no_valid = evaluate_scores(LABELS, SCORES, valid_labels=VALID_LABELS,
                               valid_scores=VALID_SCORES, tta_scores=[0.1, 0.2, 0.8, 0.9],
                               bootstrap=0)
    assert list(no_valid["results"]) == ["plain@0.5", "plain@valid", "tta@0.5"]


def test_flattening_names_every_value() -> None:
    document = evaluate_scores(LABELS, SCORES, valid_labels=VALID_LABELS,
                               valid_scores=VALID_SCORES, bootstrap=0)
    flat = flatten_metrics(document)
    assert flat["accuracy"] == 0.5 and flat["plain@valid/accuracy"] == 0.75
    assert flat["accuracy_ci95_low"] is None and flat["roc_auc_ci95_high"] is None
    assert flat["threshold/plain"] == 0.7 and flat["n"] == 4.0
    assert len(flat) == 2 * (9 + 4) + 2
    booted = flatten_metrics(evaluate_scores(LABELS * 10, SCORES * 10, bootstrap=30))
    interval = evaluate_scores(LABELS * 10, SCORES * 10, bootstrap=30)["results"]["plain@0.5"]
    assert (booted["accuracy_ci95_low"], booted["accuracy_ci95_high"]) == tuple(
        interval["accuracy_ci95"])
    assert (booted["roc_auc_ci95_low"], booted["roc_auc_ci95_high"]) == tuple(
        interval["roc_auc_ci95"])
    assert flatten_metrics({}) == {"n": 0.0}


@pytest.mark.parametrize(("labels", "scores", "message"), [
    ([0, 1], [0.5], "labels and scores differ in length: 2 and 1"),
    ([[0, 1]], [[0.5, 0.5]], "labels and scores must be 1-D; got shapes (1, 2) and (1, 2)"),
    ([], [], "no predictions to score: the label list is empty"),
    ([0, 2, 3, -1], [0.1, 0.2, 0.3, 0.4], "labels must be 0 or 1; found -1, 2, 3"),
    ([0, 1], [-0.1, 0.5], "scores must be probabilities in [0, 1] (finite)"),
    ([0, 1], [0.1, float("inf")], "scores must be probabilities in [0, 1] (finite)"),
])
def test_bad_input_is_named_exactly(labels, scores, message) -> None:
    with pytest.raises(DataError) as caught:
        compute_metrics(labels, scores)
    assert str(caught.value) == message


def test_bad_validation_input_says_it_is_the_validation_split() -> None:
    with pytest.raises(DataError) as caught:
        choose_threshold([0, 1], [0.5])
    assert str(caught.value) == "labels and scores (validation) differ in length: 2 and 1"
    with pytest.raises(DataError) as caught:
        compute_metrics([0, 1], [0.2, 0.3], threshold=1.5)
    assert str(caught.value) == "threshold: 1.5 is outside [0, 1]"
    assert compute_metrics([0, 1], [0.2, 0.3], threshold=1.0, bootstrap=0)["threshold"] == 1.0
    assert compute_metrics([0, 1], [0.2, 0.3], threshold=0.0, bootstrap=0)["accuracy"] == 0.5
