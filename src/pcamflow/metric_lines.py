"""The metric lines of the Image Classification algorithm, written and read for both backends.

The algorithm prints one line per metric and epoch to its log (CloudWatch Logs on SageMaker),
``Epoch[3] Train-accuracy=0.912000`` or ``Epoch[3] Validation-accuracy=0.880000``; the local
trainer prints the same lines (:func:`metric_line`), so one parser
(:func:`parse_metric_lines`) reads the training history of either backend.

A Trainer stage of either backend writes what the parser makes of its lines to
:data:`HISTORY_FILE` in its stage folder: a JSON list, one object per epoch, as
:func:`parse_metric_lines` returns them. The run report and experiment tracking read that file.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["HISTORY_FILE", "metric_line", "parse_metric_lines"]

HISTORY_FILE = "history.json"
"""The per-epoch metrics a Trainer stage leaves in its stage folder."""


_METRIC_LINE = re.compile(
    r"Epoch\[(?P<epoch>\d+)\]\s+(?P<phase>Train|Validation)-(?P<name>[\w-]+)="
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
)


def parse_metric_lines(text: str) -> list[dict[str, Any]]:
    """The per-epoch metrics in a training log, as the algorithm (or the local trainer) prints them.

    Lines such as ``Epoch[3] Train-accuracy=0.912000`` and ``Epoch[3]
    Validation-accuracy=0.880000`` become ``{"epoch": 3, "train:accuracy": 0.912,
    "validation:accuracy": 0.88}`` (SageMaker's metric names: ``-`` in a name becomes ``_``).
    Epochs come in the order first seen; a later line for the same epoch and metric (a resumed
    run) replaces the earlier value.

    >>> parse_metric_lines("Epoch[0] Train-accuracy=0.5\\nEpoch[0] Validation-accuracy=0.75")
    [{'epoch': 0, 'train:accuracy': 0.5, 'validation:accuracy': 0.75}]
    """
    epochs: dict[int, dict[str, Any]] = {}
    for match in _METRIC_LINE.finditer(text):
        epoch = int(match["epoch"])
        name = f"{match['phase'].lower()}:{match['name'].replace('-', '_')}"
        epochs.setdefault(epoch, {"epoch": epoch})[name] = float(match["value"])
    return list(epochs.values())


def metric_line(epoch: int, phase: str, name: str, value: float) -> str:
    """One metric line as the algorithm prints it.

    >>> metric_line(3, "Validation", "accuracy", 0.88)
    'Epoch[3] Validation-accuracy=0.880000'
    """
    return f"Epoch[{epoch}] {phase}-{name}={value:.6f}"
