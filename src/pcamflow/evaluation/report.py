"""The evaluation report: ``metrics.json``, PNG plots, ``predictions.csv`` and ``report.html``.

:func:`write_report` takes labels, scores and the metrics document of
:func:`~pcamflow.evaluation.metrics.evaluate_scores`; it does not care how the predictions
were made, so the local and the SageMaker evaluators both use it. ``report.html`` embeds its
images, so the one file reads offline and can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pcamflow._io import atomic_write
from pcamflow.evaluation import plots
from pcamflow.evaluation.metrics import METRIC_NAMES

__all__ = ["format_metrics_table", "metrics_rows", "write_predictions", "write_report"]

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"


def _document(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Accept a full document, one :func:`compute_metrics` result, or the flat metrics of an
    ``Evaluation`` artifact (:func:`~pcamflow.evaluation.metrics.flatten_metrics`)."""
    if "results" in metrics:
        return dict(metrics)
    if "confusion_matrix" in metrics:
        return {"format": 1, "n": metrics.get("n"), "thresholds": {}, "info": {},
                "results": {"plain@0.5": dict(metrics)}}
    results: dict[str, dict[str, Any]] = {}
    thresholds: dict[str, Any] = {}
    for key, value in metrics.items():
        variant, _, name = key.rpartition("/")
        if variant == "threshold":
            thresholds[name] = {"value": value, "note": "chosen on the validation split"}
            continue
        results.setdefault(variant or "plain@0.5", {})[name] = value
    for variant, result in results.items():
        for name in ("accuracy_ci95", "roc_auc_ci95"):
            low, high = result.pop(f"{name}_low", None), result.pop(f"{name}_high", None)
            result[name] = [low, high] if low is not None and high is not None else None
        base = variant.split("@")[0]
        at_valid = variant.endswith("@valid") and base in thresholds
        result["threshold"] = thresholds[base]["value"] if at_valid else 0.5
    n = results.get("plain@0.5", {}).pop("n", None)
    return {"format": 1, "n": int(n) if n is not None else None, "thresholds": thresholds,
            "info": {}, "results": results}


def _fmt(value: Any) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def metrics_rows(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The metrics table as text cells: a header (``metric`` then one column per variant) and
    one row per metric, with the 95% interval beside accuracy and ROC AUC."""
    results = _document(metrics)["results"]
    header = ["metric", *results]
    rows: list[list[str]] = [
        ["threshold", *(_fmt(r.get("threshold")) for r in results.values())]
    ]
    for name in METRIC_NAMES:
        cells = [name]
        for result in results.values():
            text = _fmt(result.get(name))
            interval = result.get(f"{name}_ci95")
            if interval:
                text += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
            cells.append(text)
        rows.append(cells)
    if all("confusion_matrix" in r for r in results.values()):
        rows.append(["tn fp / fn tp", *(
            "{} {} / {} {}".format(*np.asarray(r["confusion_matrix"]).ravel())
            for r in results.values()
        )])
    return header, rows


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """The metrics as an aligned text table for the terminal, notes underneath."""
    document = _document(metrics)
    header, rows = metrics_rows(document)
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"n = {document.get('n')}; intervals are bootstrap 95% percentile intervals")
    for variant, chosen in document.get("thresholds", {}).items():
        lines.append(f"{variant}@valid threshold {chosen['value']:.4f}: {chosen['note']}")
    for note in _notes(document):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _notes(document: Mapping[str, Any]) -> list[str]:
    seen: list[str] = []
    for result in document["results"].values():
        for note in result.get("notes", []):
            if note not in seen:
                seen.append(note)
    return seen


def _top_errors(
    labels: np.ndarray, scores: np.ndarray, image_paths: Sequence[str], count: int
) -> dict[str, list[tuple[str, float, int]]]:
    """The most confident false positives and false negatives at threshold 0.5."""
    fp = np.flatnonzero((labels == 0) & (scores >= 0.5))
    fn = np.flatnonzero((labels == 1) & (scores < 0.5))
    fp = fp[np.argsort(-scores[fp], kind="stable")][:count]
    fn = fn[np.argsort(scores[fn], kind="stable")][:count]
    return {
        "false_positives": [(image_paths[i], float(scores[i]), 0) for i in fp],
        "false_negatives": [(image_paths[i], float(scores[i]), 1) for i in fn],
    }


def write_predictions(
    path: str | Path,
    *,
    labels: Sequence[int],
    scores: Sequence[float],
    image_paths: Sequence[str] | None = None,
    tta_scores: Sequence[float] | None = None,
) -> Path:
    """``predictions.csv``: one row per image with its label and score(s)."""
    path = Path(path)
    with atomic_write(path, newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "score"] + (["tta_score"] if tta_scores is not None
                                                        else []))
        for i, (label, score) in enumerate(zip(labels, scores, strict=True)):
            row = [image_paths[i] if image_paths is not None else "", int(label),
                   f"{float(score):.6f}"]
            if tta_scores is not None:
                row.append(f"{float(tta_scores[i]):.6f}")
            writer.writerow(row)
    return path


def write_report(
    out_dir: str | Path,
    *,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    image_paths: Sequence[str] | None,
    metrics: Mapping[str, Any],
    tta_scores: Sequence[float] | np.ndarray | None = None,
    title: str = "pcamflow evaluation",
    top_errors: int = 16,
) -> Path:
    """Write ``metrics.json``, the plots, ``predictions.csv`` and ``report.html`` to ``out_dir``.

    Args:
        out_dir: the folder to write into (created if needed).
        labels: test labels (0/1).
        scores: test probabilities of class 1 (plain prediction).
        image_paths: local image paths in the order of ``labels`` (None: no montages;
            an unreadable path shows a placeholder).
        metrics: the document of :func:`~pcamflow.evaluation.metrics.evaluate_scores` (or a
            single :func:`~pcamflow.evaluation.metrics.compute_metrics` result).
        tta_scores: test probabilities with test-time augmentation, drawn beside the plain ones.
        title: the report's heading.
        top_errors: how many of the most confident false positives and negatives to show.

    Returns:
        The path of ``report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = _document(metrics)
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
    curves: dict[str, tuple[Any, Any]] = {"plain": (y, p)}
    if tta_scores is not None:
        curves["tta"] = (y, np.asarray(tta_scores, dtype=np.float64))

    with atomic_write(out / METRICS_FILE, encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
    write_predictions(out / PREDICTIONS_FILE, labels=y, scores=p, image_paths=image_paths,
                      tta_scores=tta_scores)
    images: list[tuple[str, Path]] = [
        ("ROC curve", plots.plot_roc(out / "roc.png", curves)),
        ("Precision-recall curve", plots.plot_pr(out / "pr.png", curves)),
        ("Confusion matrices", plots.plot_confusion(out / "confusion.png", {
            name: result["confusion_matrix"] for name, result in document["results"].items()
        })),
        ("Calibration", plots.plot_calibration(out / "calibration.png", curves)),
    ]
    if top_errors > 0 and image_paths is not None:
        errors = _top_errors(y, p, list(image_paths), top_errors)
        for kind, items in errors.items():
            heading = f"Most confident {kind.replace('_', ' ')} (plain, threshold 0.5)"
            images.append((heading, plots.plot_montage(out / f"{kind}.png", items, heading)))
    report = out / REPORT_FILE
    with atomic_write(report, encoding="utf-8") as handle:
        handle.write(_html(title, document, images))
    return report


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
figure{display:inline-block;margin:1em}img{max-width:100%}.notes{color:#844}
"""


def _html(title: str, document: Mapping[str, Any], images: list[tuple[str, Path]]) -> str:
    esc = html.escape
    header, rows = metrics_rows(document)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    info = {**document.get("info", {}), "images": document.get("n"),
            "positives": document.get("n_positive"), "negatives": document.get("n_negative")}
    parts.append("<table>" + "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in info.items()
    ) + "</table>")
    parts.append("<h2>Metrics</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header)
                 + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    parts.append("</table><p>Intervals: bootstrap 95% percentile intervals. "
                 "<em>@valid</em>: at the threshold chosen on the validation split; "
                 "<em>tta</em>: mean over the 8 dihedral views.</p>")
    for variant, chosen in document.get("thresholds", {}).items():
        parts.append(f"<p>{esc(variant)}@valid threshold {chosen['value']:.4f}: "
                     f"{esc(chosen['note'])}</p>")
    notes = _notes(document)
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes)
                     + "</ul>")
    parts.append("<h2>Plots</h2>")
    for caption, path in images:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(caption)} ({esc(path.name)})</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
