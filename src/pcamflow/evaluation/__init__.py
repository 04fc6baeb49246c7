"""Scoring predictions and writing the evaluation report (no PyTorch, no AWS).

The local and the SageMaker evaluators both turn their predictions into labels and
positive-class probabilities and hand them to :func:`evaluate_scores` (or
:func:`compute_metrics`) and :func:`write_report`.
"""

from pcamflow.evaluation.metrics import (
    METRIC_NAMES,
    choose_threshold,
    compute_metrics,
    evaluate_scores,
    flatten_metrics,
)
from pcamflow.evaluation.report import format_metrics_table, write_predictions, write_report

__all__ = [
    "METRIC_NAMES",
    "choose_threshold",
    "compute_metrics",
    "evaluate_scores",
    "flatten_metrics",
    "format_metrics_table",
    "write_predictions",
    "write_report",
]
