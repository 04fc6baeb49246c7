"""The report: metrics.json, plots, predictions.csv, an offline report.html, the text table."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
from PIL import Image

from pcamflow.evaluation import evaluate_scores, format_metrics_table, write_report
from pcamflow.evaluation.plots import plot_montage, plot_tuning_history


def images(folder, n):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_write_report_makes_an_offline_report(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = np.clip(0.4 * labels + 0.6 * rng.random(40), 0, 1)
    document = evaluate_scores(labels, scores, valid_labels=labels, valid_scores=scores,
                               tta_scores=scores ** 1.1, tta_valid_scores=scores ** 1.1,
                               bootstrap=50, info={"model": "model.tar.gz"})
    report = write_report(tmp_path / "out", labels=labels, scores=scores,
                          image_paths=images(tmp_path, 40), metrics=document,
                          tta_scores=scores ** 1.1, top_errors=4)

    out = tmp_path / "out"
    assert report == out / "report.html"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(document))
    for name in ("roc", "pr", "confusion", "calibration", "false_positives", "false_negatives"):
        with Image.open(out / f"{name}.png") as png:
            assert png.format == "PNG" and png.size[0] > 100
    html = report.read_text()
    # self-contained: every image embedded, nothing fetched from elsewhere
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 6
    assert not re.search(r'(src|href)="(https?:|//)', html)
    for variant in ("plain@0.5", "plain@valid", "tta@0.5", "tta@valid"):
        assert f"<th>{variant}</th>" in html
    assert "model.tar.gz" in html
    with open(out / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 40 and set(table[0]) == {"image", "label", "score", "tta_score"}


def test_report_text_is_escaped(tmp_path):
    labels, scores = np.array([0, 1, 1, 0]), np.array([0.2, 0.8, 0.6, 0.4])
    document = evaluate_scores(labels, scores, bootstrap=0, info={"model": "<script>x</script>"})
    report = write_report(tmp_path, labels=labels, scores=scores, image_paths=None,
                          metrics=document, top_errors=0)
    html = report.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_one_class_report_and_table_say_undefined(tmp_path):
    labels, scores = np.ones(6, dtype=int), np.linspace(0.1, 0.9, 6)
    document = evaluate_scores(labels, scores, bootstrap=20)
    write_report(tmp_path, labels=labels, scores=scores, image_paths=None, metrics=document)
    table = format_metrics_table(document)
    assert re.search(r"^roc_auc\s+undefined$", table, re.MULTILINE)
    assert "note: only positive (1) labels" in table
    assert "undefined" in (tmp_path / "report.html").read_text()


def test_the_table_lines_up_variants_with_intervals():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 100)
    scores = np.clip(0.4 * labels + 0.6 * rng.random(100), 0, 1)
    document = evaluate_scores(labels, scores, tta_scores=scores, bootstrap=30)
    lines = format_metrics_table(document).splitlines()
    assert lines[0].split() == ["metric", "plain@0.5", "tta@0.5"]
    accuracy = next(line for line in lines if line.startswith("accuracy"))
    assert re.fullmatch(r"accuracy\s+0\.\d{4} \[0\.\d{4}, 0\.\d{4}\]\s+0\.\d{4} .*", accuracy)


def test_degenerate_plots_still_draw(tmp_path):
    plot_montage(tmp_path / "none.png", [], "no errors")
    plot_montage(tmp_path / "missing.png", [(str(tmp_path / "gone.jpg"), 0.9, 0)], "missing")
    plot_tuning_history(tmp_path / "empty.png", [])
    plot_tuning_history(tmp_path / "mixed.png", [0.6, None, 0.7, 0.5],
                        states=["COMPLETE", "FAIL", "COMPLETE", "PRUNED"])
    for name in ("none", "missing", "empty", "mixed"):
        with Image.open(tmp_path / f"{name}.png") as png:
            assert png.format == "PNG"


def test_the_table_reads_the_flat_metrics_of_an_evaluation_artifact():
    from pcamflow.evaluation import flatten_metrics

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 80)
    scores = np.clip(0.4 * labels + 0.6 * rng.random(80), 0, 1)
    document = evaluate_scores(labels, scores, valid_labels=labels, valid_scores=scores,
                               tta_scores=scores, tta_valid_scores=scores, bootstrap=30)
    full = format_metrics_table(document).splitlines()
    flat = format_metrics_table(flatten_metrics(document)).splitlines()
    # the same table, less the confusion matrices that the flat metrics do not keep
    assert flat[:12] == [line for line in full if not line.startswith("tn fp")][:12]
