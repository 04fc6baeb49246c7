"""Binary classification metrics from labels and positive-class probabilities.

Everything here works on plain arrays, so the local and the SageMaker evaluators share it
whatever made the predictions (a PyTorch model, a batch transform job, an endpoint)::

    >>> m = compute_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], bootstrap=0)
    >>> m["accuracy"], m["roc_auc"]
    (0.5, 0.75)

A value that is undefined for the data (ROC AUC of a one-class set, precision when nothing is
predicted positive) is ``None``, and ``notes`` says why: undefined is reported, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pcamflow.errors import DataError

__all__ = [
    "METRIC_NAMES",
    "choose_threshold",
    "compute_metrics",
    "evaluate_scores",
    "flatten_metrics",
]

METRIC_NAMES = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
    "average_precision",
    "log_loss",
    "brier",
)
"""The scalar metrics :func:`compute_metrics` returns, in the order tables show them."""

_EPS = 1e-15  # log-loss clip: scikit-learn's old default (it now clips at float epsilon)


def _as_arrays(labels: Any, scores: Any, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(scores, dtype=np.float64)
    where = f" ({what})" if what else ""
    if y.ndim != 1 or p.ndim != 1:
        raise DataError(f"labels and scores{where} must be 1-D; got shapes {y.shape} and {p.shape}")
    if y.shape != p.shape:
        raise DataError(f"labels and scores{where} differ in length: {len(y)} and {len(p)}")
    if len(y) == 0:
        raise DataError(f"no predictions to score{where}: the label list is empty")
    if not np.all(np.isin(y, (0, 1))):
        bad = sorted({str(v) for v in np.unique(y)} - {"0", "1"})[:5]
        raise DataError(f"labels{where} must be 0 or 1; found {', '.join(bad)}")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise DataError(f"scores{where} must be probabilities in [0, 1] (finite)")
    return y.astype(np.int64), p


def _auc_from_groups(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """ROC AUC from per-score-group positive and negative weights (scores ascending).

    It is the Mann-Whitney statistic: the chance that a random positive scores above a random
    negative, ties counting half. Weighted, so bootstrap resamples need no re-sorting: far
    faster than calling :func:`sklearn.metrics.roc_auc_score` on each resample.
    """
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return None
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (total_pos * total_neg))


def _defined(value: float) -> float | None:
    """scikit-learn's NaN for a division by zero (``zero_division=nan``) as ``None``."""
    return None if np.isnan(value) else float(value)


def compute_metrics(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    threshold: float = 0.5,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of positive-class probabilities ``scores`` against 0/1 ``labels``.

    Args:
        labels: true labels, 0 or 1.
        scores: probabilities of class 1, in [0, 1].
        threshold: a score at or above it is predicted positive.
        bootstrap: resamples for the 95% percentile intervals of accuracy and ROC AUC (0: none).
        seed: the resampling seed.

    Returns:
        A JSON-ready dict: ``n``, ``n_positive``, ``n_negative``, ``threshold``, the
        :data:`METRIC_NAMES` (``None`` where undefined), ``confusion_matrix``
        (``[[tn, fp], [fn, tp]]``), ``accuracy_ci95`` and ``roc_auc_ci95`` (``[low, high]``
        or ``None``), ``bootstrap`` (resamples used) and ``notes`` (why a value is undefined).

    Raises:
        DataError: labels are not 0/1, scores are not probabilities, or the lengths differ.
    """
    if not 0.0 <= threshold <= 1.0:
        raise DataError(f"threshold: {threshold!r} is outside [0, 1]")
    y, p = _as_arrays(labels, scores)
    from sklearn import metrics as skm

    predicted = (p >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = skm.confusion_matrix(y, predicted, labels=[0, 1]).tolist()
    # per class (0, 1): class 1's precision, recall and F1; class 0's recall is the specificity
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y, predicted, labels=[0, 1], average=None, zero_division=np.nan
    )
    n_pos, n_neg = tp + fn, tn + fp
    notes: list[str] = []
    if n_pos == 0 or n_neg == 0:
        undefined = ["roc_auc"] + (
            ["recall", "average_precision"] if n_pos == 0 else ["specificity"]
        )
        only = "negative (0)" if n_pos == 0 else "positive (1)"
        notes.append(f"only {only} labels: {', '.join(undefined)} undefined")
    if tp + fp == 0:
        notes.append(
            f"nothing predicted positive at threshold {threshold:g}: precision is undefined"
        )
    both_classes = n_pos > 0 and n_neg > 0
    out: dict[str, Any] = {
        "n": len(y),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y, predicted)),
        "precision": _defined(precision[1]),
        "recall": _defined(recall[1]),
        "specificity": _defined(recall[0]),
        "f1": _defined(f1[1]),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both_classes else None,
        "average_precision": float(skm.average_precision_score(y, p)) if n_pos else None,
        # clipped at _EPS first so that a score of exactly 0 or 1 costs what it always has
        "log_loss": float(skm.log_loss(y, np.clip(p, _EPS, 1 - _EPS), labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y, p, pos_label=1)),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "accuracy_ci95": None,
        "roc_auc_ci95": None,
        "bootstrap": 0,
        "notes": notes,
    }
    if bootstrap > 0:
        out.update(_bootstrap(y, p, predicted, bootstrap, seed, notes))
    return out


def _bootstrap(
    y: np.ndarray,
    p: np.ndarray,
    predicted: np.ndarray,
    resamples: int,
    seed: int,
    notes: list[str],
) -> dict[str, Any]:
    """Percentile 95% intervals of accuracy and ROC AUC over ``resamples`` resamples."""
    # one unique-score grouping serves every resample's AUC
    uniques, group = np.unique(p, return_inverse=True)
    n_groups = len(uniques)
    rng = np.random.default_rng(seed)
    correct = (predicted == y).astype(np.float64)
    n = len(y)
    accuracies = np.empty(resamples)
    aucs: list[float] = []
    for i in range(resamples):
        idx = rng.integers(0, n, n)
        accuracies[i] = correct[idx].mean()
        labels = y[idx]
        pos = np.bincount(group[idx], weights=labels, minlength=n_groups)
        neg = np.bincount(group[idx], weights=1 - labels, minlength=n_groups)
        auc = _auc_from_groups(pos, neg)
        if auc is not None:
            aucs.append(auc)
    result: dict[str, Any] = {
        "bootstrap": resamples,
        "accuracy_ci95": [float(v) for v in np.percentile(accuracies, [2.5, 97.5])],
    }
    if len(aucs) >= max(2, resamples // 2):
        result["roc_auc_ci95"] = [float(v) for v in np.percentile(aucs, [2.5, 97.5])]
        if len(aucs) < resamples:
            notes.append(
                f"{resamples - len(aucs)} of {resamples} resamples held one class only and "
                "were left out of the roc_auc interval"
            )
    elif (y == 1).any() and (y == 0).any():
        notes.append("too few resamples held both classes: the roc_auc interval is undefined")
    return result


def choose_threshold(labels: Any, scores: Any) -> tuple[float, str]:
    """The threshold that maximises Youden's J (sensitivity + specificity - 1).

    It is chosen on the validation split and then applied to the test split. Youden's J
    weighs both classes equally, so a skewed split does not pull the threshold to one side.

    Returns:
        ``(threshold, note)``; 0.5 with a note saying why when the labels hold one class.
    """
    y, p = _as_arrays(labels, scores, "validation")
    if y.min() == y.max():
        return 0.5, "the validation split holds one class only: threshold left at 0.5"
    candidates = np.unique(p)
    order = np.argsort(-p, kind="stable")
    sorted_p, sorted_y = p[order], y[order]
    # for each candidate t, predicted positive = scores >= t: counts via searchsorted
    positives_at = np.searchsorted(-sorted_p, -candidates, side="right")
    tp = np.concatenate([[0], np.cumsum(sorted_y)])[positives_at]
    fp = positives_at - tp
    j = tp / y.sum() - fp / (len(y) - y.sum())
    best = int(np.argmax(j))
    return float(candidates[best]), "maximises Youden's J on the validation split"


def evaluate_scores(
    labels: Any,
    scores: Any,
    *,
    valid_labels: Any = None,
    valid_scores: Any = None,
    tta_scores: Any = None,
    tta_valid_scores: Any = None,
    bootstrap: int = 1000,
    seed: int = 0,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full metrics document an evaluator writes to ``metrics.json``.

    It scores the plain predictions (and the test-time-augmented ones, when given) at 0.5 and
    at a threshold chosen on the validation split, side by side under ``results``::

        {"results": {"plain@0.5": {...}, "plain@valid": {...}, "tta@0.5": {...}, ...},
         "thresholds": {"plain": {"value": 0.43, "note": "..."}, ...}, "n": ..., ...}

    Args:
        labels: test labels (0/1).
        scores: test probabilities of class 1.
        valid_labels: validation labels, for choosing the threshold (None: no ``@valid`` rows).
        valid_scores: validation probabilities of class 1.
        tta_scores: test probabilities with test-time augmentation (None: no ``tta`` rows).
        tta_valid_scores: validation probabilities with test-time augmentation.
        bootstrap: resamples for the 95% intervals.
        seed: the resampling seed.
        info: extra facts to record (model, split, ...), copied under ``info``.
    """
    variants = {"plain": (scores, valid_scores)}
    if tta_scores is not None:
        variants["tta"] = (tta_scores, tta_valid_scores)
    results: dict[str, Any] = {}
    thresholds: dict[str, Any] = {}
    for name, (test, valid) in variants.items():
        results[f"{name}@0.5"] = compute_metrics(labels, test, bootstrap=bootstrap, seed=seed)
        if valid_labels is not None and valid is not None:
            value, note = choose_threshold(valid_labels, valid)
            thresholds[name] = {"value": value, "note": note}
            results[f"{name}@valid"] = compute_metrics(
                labels, test, threshold=value, bootstrap=bootstrap, seed=seed
            )
    first = results["plain@0.5"]
    return {
        "format": 1,
        "n": first["n"],
        "n_positive": first["n_positive"],
        "n_negative": first["n_negative"],
        "thresholds": thresholds,
        "results": results,
        "info": dict(info or {}),
    }


def flatten_metrics(document: Mapping[str, Any]) -> dict[str, float | None]:
    """Scalar metrics of an :func:`evaluate_scores` document, for the ``Evaluation`` artifact.

    The plain predictions at 0.5 keep their bare names (``accuracy``, ``roc_auc``); the other
    variants are prefixed (``plain@valid/accuracy``, ``tta@0.5/roc_auc``). Intervals become
    ``accuracy_ci95_low``/``_high``; chosen thresholds ``threshold/plain``.
    """
    flat: dict[str, float | None] = {}
    for variant, result in document.get("results", {}).items():
        prefix = "" if variant == "plain@0.5" else f"{variant}/"
        for name in METRIC_NAMES:
            flat[prefix + name] = result.get(name)
        for name in ("accuracy_ci95", "roc_auc_ci95"):
            interval = result.get(name)
            flat[f"{prefix}{name}_low"] = interval[0] if interval else None
            flat[f"{prefix}{name}_high"] = interval[1] if interval else None
    for variant, chosen in document.get("thresholds", {}).items():
        flat[f"threshold/{variant}"] = chosen["value"]
    flat["n"] = float(document.get("n", 0))
    return flat
