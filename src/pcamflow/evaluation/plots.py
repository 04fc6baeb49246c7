"""The report's plots, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes plain arrays and writes one PNG. Figures are built with
:class:`matplotlib.figure.Figure` rather than ``pyplot``, so nothing global changes and plots
can be drawn from any thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "plot_calibration",
    "plot_confusion",
    "plot_montage",
    "plot_pr",
    "plot_roc",
    "plot_training_curves",
    "plot_tuning_history",
]

Curves = Mapping[str, tuple[Any, Any]]
"""Curve label -> (labels, positive-class scores)."""


def _figure(width: float = 5.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _undefined(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)


def _both_classes(labels: Any) -> bool:
    y = np.asarray(labels)
    return bool((y == 1).any() and (y == 0).any())


def plot_roc(path: str | Path, curves: Curves) -> Path:
    """ROC curves (true vs false positive rate), one line per entry of ``curves``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = _figure()
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    drawn = False
    for name, (labels, scores) in curves.items():
        if not _both_classes(labels):
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.4f})")
        drawn = True
    if drawn:
        ax.legend(loc="lower right")
    else:
        _undefined(ax, "ROC undefined: the labels hold one class only")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve",
           xlim=(0, 1), ylim=(0, 1.01))
    return _save(figure, path)


def plot_pr(path: str | Path, curves: Curves) -> Path:
    """Precision-recall curves, one line per entry of ``curves``."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    figure = _figure()
    ax = figure.add_subplot()
    drawn = False
    for name, (labels, scores) in curves.items():
        if not np.asarray(labels).any():
            continue
        precision, recall, _ = precision_recall_curve(labels, scores)
        ap = average_precision_score(labels, scores)
        ax.plot(recall, precision, label=f"{name} (AP {ap:.4f})")
        drawn = True
    if drawn:
        ax.legend(loc="lower left")
    else:
        _undefined(ax, "precision-recall undefined: no positive labels")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve",
           xlim=(0, 1), ylim=(0, 1.01))
    return _save(figure, path)


def plot_confusion(path: str | Path, matrices: Mapping[str, Sequence[Sequence[int]]]) -> Path:
    """Confusion matrices (``[[tn, fp], [fn, tp]]``) side by side, titled by their keys."""
    figure = _figure(3.6 * max(1, len(matrices)), 3.6)
    axes = figure.subplots(1, max(1, len(matrices)), squeeze=False)[0]
    for ax, (title, matrix) in zip(axes, matrices.items(), strict=False):
        values = np.asarray(matrix, dtype=np.int64)
        ax.imshow(values, cmap="Blues", vmin=0, vmax=max(1, int(values.max())))
        for (row, col), count in np.ndenumerate(values):
            dark = count > values.max() / 2
            ax.text(col, row, str(count), ha="center", va="center",
                    color="white" if dark else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["0", "1"], yticklabels=["0", "1"],
               xlabel="predicted", ylabel="true", title=title)
    return _save(figure, path)


def plot_calibration(path: str | Path, curves: Curves, bins: int = 10) -> Path:
    """Reliability curves (observed positive rate per score bin) and the score histogram."""
    figure = _figure(5.0, 6.0)
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfect")
    edges = np.linspace(0.0, 1.0, bins + 1)
    for name, (labels, scores) in curves.items():
        y = np.asarray(labels, dtype=np.float64)
        p = np.asarray(scores, dtype=np.float64)
        which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        filled = counts > 0
        mean_score = np.bincount(which, weights=p, minlength=bins)[filled] / counts[filled]
        observed = np.bincount(which, weights=y, minlength=bins)[filled] / counts[filled]
        top.plot(mean_score, observed, marker="o", label=name)
        bottom.hist(p, bins=edges, histtype="step", label=name)
    top.set(ylabel="observed positive rate", title="Calibration (reliability)",
            xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left")
    bottom.set(xlabel="predicted probability of class 1", ylabel="images")
    return _save(figure, path)


def plot_montage(
    path: str | Path,
    items: Sequence[tuple[str | Path, float, int]],
    title: str,
    *,
    columns: int = 8,
) -> Path:
    """A grid of images, each captioned with its score and true label.

    Args:
        path: the PNG to write.
        items: ``(image path, score, label)`` triples, in the order to show.
        title: the figure's title.
        columns: images per row.
    """
    from PIL import Image

    rows = max(1, math.ceil(len(items) / columns))
    cols = max(1, min(columns, len(items)))
    figure = _figure(1.5 * cols + 0.2, 1.7 * rows + 0.5)
    figure.suptitle(title)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not items:
        _undefined(axes[0][0], "none")
    for ax, (image_path, score, label) in zip(axes.flat, items, strict=False):
        try:
            with Image.open(image_path) as image:
                ax.imshow(np.asarray(image.convert("RGB")))
        except OSError:
            _undefined(ax, "image\nunreadable")
        ax.set_title(f"p={score:.3f} y={label}", fontsize=8)
    return _save(figure, path)


def plot_tuning_history(
    path: str | Path,
    values: Sequence[float | None],
    *,
    objective: str = "validation:accuracy",
    states: Sequence[str] | None = None,
) -> Path:
    """The objective of each trial, in trial order, and the best value so far.

    Args:
        path: the PNG to write.
        values: each trial's objective (``None`` for a trial without one, e.g. failed).
        objective: the metric's name, for the axis label.
        states: each trial's state (``COMPLETE``, ``PRUNED``, ``FAIL``), for the markers.
    """
    figure = _figure(6.0, 4.0)
    ax = figure.add_subplot()
    numbers = np.arange(len(values))
    states = list(states or ["COMPLETE"] * len(values))
    for state, marker, color in (("COMPLETE", "o", "C0"), ("PRUNED", "x", "C1")):
        chosen = [i for i, v in enumerate(values) if v is not None and states[i] == state]
        if chosen:
            ax.scatter(numbers[chosen], [values[i] for i in chosen], marker=marker,
                       color=color, label=state.lower())
    best, running = [], -math.inf
    for value, state in zip(values, states, strict=False):
        if value is not None and state == "COMPLETE":
            running = max(running, value)
        best.append(running if running > -math.inf else np.nan)
    if any(not math.isnan(b) for b in best):
        ax.step(numbers, best, where="post", color="C2", label="best so far")
    if not len(values):
        _undefined(ax, "no trials")
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel=objective, title="Tuning: objective by trial")
    return _save(figure, path)


def plot_training_curves(path: str | Path, history: Sequence[Mapping[str, Any]]) -> Path:
    """Loss and accuracy per epoch, train and validation, from the parsed metric lines.

    Args:
        path: the PNG to write.
        history: one mapping per epoch, as :func:`pcamflow.metric_lines.parse_metric_lines`
            returns them (``{"epoch": 0, "train:accuracy": ..., "validation:accuracy": ...}``).
            A metric missing from every epoch (the algorithm prints no validation loss) is
            left out; one missing from some epochs leaves a gap.
    """
    figure = _figure(9.0, 3.8)
    loss_ax, accuracy_ax = figure.subplots(1, 2)
    epochs = [int(entry["epoch"]) for entry in history]
    names = list(dict.fromkeys(k for entry in history for k in entry if k != "epoch"))
    panels = (
        (loss_ax, [n for n in names if "cross_entropy" in n or "loss" in n], "loss"),
        (accuracy_ax, [n for n in names if "accuracy" in n], "accuracy"),
    )
    for ax, chosen, label in panels:
        for name in chosen:
            values = [float(entry.get(name, np.nan)) for entry in history]
            style = "--" if name.startswith("train") else "-"
            ax.plot(epochs, values, style, marker="o", label=name)
        if chosen:
            ax.legend(loc="best")
        else:
            _undefined(ax, f"no {label} in the metric lines")
        ax.set(xlabel="epoch", ylabel=label, title=f"Training: {label} per epoch")
        if epochs:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(figure, path)
