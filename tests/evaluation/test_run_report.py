"""The run report: one page per run, built from what the stages left, checked in Chromium too.

The whole-run tests read the ``full_run`` fixture (tests/conftest.py): a real ``pcamflow run``
of every local stage on tiny synthetic PCam. Their expectations come from elsewhere than the
page: the HDF5 labels, the trainer's checkpoint state, the tuner's CSV, ``metrics.json``.
"""

from __future__ import annotations

import base64
import csv
import html.parser
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h5py
import pytest

from _browser import CHROMIUM, MISSING, load_page
from _stages import pipeline
from pcamflow import Settings
from pcamflow.cli import main
from pcamflow.evaluation.run_report import SECTIONS, RunReport
from pcamflow.pipeline import read_run_record


class Page(html.parser.HTMLParser):
    """Each section's text, table rows, links and embedded images."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, Any]] = {}
        self._current: dict[str, Any] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._current = {"text": [], "rows": [], "links": [], "images": []}
            self.sections[a["id"] or ""] = self._current
        if self._current is None:
            return
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self._current["links"].append(a.get("href"))
        elif tag == "img":
            self._current["images"].append(a.get("src"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._current = None
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._current is not None and self._row is not None:
            self._current["rows"].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current["text"].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def text(self, section: str) -> str:
        return " ".join("".join(self.sections[section]["text"]).split())

    def row(self, section: str, first: str) -> list[str]:
        return next(r for r in self.sections[section]["rows"] if r and r[0] == first)


def read_page(run_dir: Path) -> Page:
    return Page((run_dir / "report.html").read_text(encoding="utf-8"))


# --- a whole run ------------------------------------------------------------------------------


@pytest.mark.slow
def test_pcamflow_run_prints_the_report_and_it_has_every_section(full_run) -> None:
    report = full_run.run_dir / "report.html"
    assert f"report: {report}" in full_run.stdout.splitlines()
    page = read_page(full_run.run_dir)
    assert list(page.sections) == list(SECTIONS)
    records = read_run_record(full_run.run_dir)
    for name, record in records.items():
        row = page.row("stages", name)
        assert record.kind in row and "completed" in row and record.fingerprint in row
        assert f"settings of {name}" in page.text("stages")
    assert "[train]" in page.text("stages") and "extensions.num_workers" in page.text("stages")


@pytest.mark.slow
def test_the_data_section_counts_each_split_and_class_as_the_hdf5_labels_do(
    full_run, pcam_dir: Path
) -> None:
    page = read_page(full_run.run_dir)
    for split in ("train", "valid", "test"):
        with h5py.File(pcam_dir / f"camelyonpatch_level_2_split_{split}_y.h5") as labels:
            y = labels["y"][:].reshape(-1).astype(int)
        ones, total = int(y.sum()), len(y)
        assert page.row("data", split)[:5] == [
            split, str(total - ones), str(ones), str(total), f"{ones / total:.1%}"]
    explore = [link for link in page.sections["data"]["links"] if "explore" in link]
    assert explore == ["explore/index.html"]
    assert (full_run.run_dir / explore[0]).exists()


@pytest.mark.slow
def test_the_tuning_section_shows_every_trial_of_the_tuners_table_and_a_plot(full_run) -> None:
    page = read_page(full_run.run_dir)
    with open(full_run.run_dir / "tune" / "trials.csv", newline="") as handle:
        trials = list(csv.DictReader(handle))
    assert len(trials) == 2  # [tune] max_jobs
    for trial in trials:
        row = page.row("tuning", trial["trial"])
        assert trial["learning_rate"] in row and trial["validation:accuracy"] in row
    assert len(page.sections["tuning"]["images"]) == 1
    assert "Trials (2)" in page.text("tuning")


@pytest.mark.slow
def test_the_training_section_draws_the_metric_lines_of_every_epoch(full_run) -> None:
    train = full_run.run_dir / "train"
    history = json.loads((train / "history.json").read_text())
    # the engine's own record of each epoch, in its checkpoint
    state = json.loads((train / "checkpoints" / "state.json").read_text())["history"]
    assert [e["epoch"] for e in history] == [e["epoch"] for e in state] == [0, 1]
    for parsed, kept in zip(history, state, strict=True):
        for name in ("train:accuracy", "train:cross_entropy", "validation:accuracy"):
            assert parsed[name] == round(kept[name], 6)
    page = read_page(full_run.run_dir)
    for entry in history:
        cells = page.row("training", str(entry["epoch"]))
        assert [float(c) for c in cells[1:4]] == pytest.approx(
            [entry["train:accuracy"], entry["train:cross_entropy"], entry["validation:accuracy"]],
            rel=1e-5)
    assert "The metric lines give no validation loss." in page.text("training")
    assert len(page.sections["training"]["images"]) == 1
    assert (full_run.run_dir / "report_files" / "training.png").exists()


@pytest.mark.slow
def test_the_evaluation_section_shows_the_metrics_and_the_evaluations_own_plots(full_run) -> None:
    page = read_page(full_run.run_dir)
    evaluate = full_run.run_dir / "evaluate"
    document = json.loads((evaluate / "metrics.json").read_text())
    plain = document["results"]["plain@0.5"]
    low, high = plain["roc_auc_ci95"]
    assert page.row("evaluation", "roc_auc")[1] == f"{plain['roc_auc']:.4f} [{low:.4f}, {high:.4f}]"
    embedded = [base64.b64decode(src.split(",", 1)[1])
                for src in page.sections["evaluation"]["images"]]
    for name in ("roc.png", "pr.png", "calibration.png", "false_positives.png",
                 "false_negatives.png"):
        assert (evaluate / name).read_bytes() in embedded, f"{name} is not on the page"
    assert "evaluate/report.html" in page.sections["evaluation"]["links"]


@pytest.mark.slow
def test_the_endpoint_section_names_the_endpoint(full_run) -> None:
    page = read_page(full_run.run_dir)
    deployed = read_run_record(full_run.run_dir)["deploy"].load_artifact()
    assert page.row("endpoint", "name")[1] == "run-report-test" == deployed.name
    assert page.row("endpoint", "url")[1] == deployed.url
    assert f"pcamflow teardown {full_run.run_dir}" in page.text("endpoint")


@pytest.mark.slow
def test_pcamflow_report_rebuilds_the_same_page(full_run, capsys) -> None:
    report = full_run.run_dir / "report.html"

    def body(text: str) -> str:
        return re.sub(r"page written [^;<]*", "", text)

    before = body(report.read_text())
    for target in (full_run.run_dir, full_run.settings):
        report.unlink()
        assert main(["report", str(target)]) == 0
        assert capsys.readouterr().out.strip() == f"report: {report}"
        assert body(report.read_text()) == before


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)
def test_the_page_loads_offline_in_chromium_with_no_console_errors(full_run) -> None:
    report = full_run.run_dir / "report.html"
    shown = load_page(report.as_uri(), """JSON.stringify([...document.querySelectorAll('section')]
        .map(s => ({id: s.id, heading: s.querySelector('h2').textContent,
                    text: s.innerText.length, visible: s.getBoundingClientRect().height > 0,
                    images: [...s.querySelectorAll('img')].map(i => i.complete &&
                                                                   i.naturalWidth > 0)})))""")
    assert shown.console_errors == []
    schemes = {unquote(url).split(":", 1)[0] for url in shown.requested}
    assert schemes <= {"file", "data"}, shown.requested
    sections = json.loads(shown.value)
    assert [s["id"] for s in sections] == list(SECTIONS)
    for section in sections:
        assert section["visible"] and section["text"] > 50, section
        assert all(section["images"]), f"an image of {section['id']} did not decode"
    counts = {s["id"]: len(s["images"]) for s in sections}
    assert counts["tuning"] == 1 and counts["training"] == 1 and counts["evaluation"] >= 5


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)
def test_the_browser_check_sees_console_errors_and_failed_loads(tmp_path) -> None:
    # the check above is only worth something if it would see a broken page
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><title>t</title></head><body>'
                    '<img src="missing.png"><script>console.error("boom")</script></body></html>')
    shown = load_page(page.as_uri(), "document.title")
    assert shown.value == "t"
    assert any("boom" in e for e in shown.console_errors)
    assert any("missing.png" in e for e in shown.console_errors)


# --- runs that stopped early ------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_dict({"pipeline": {"run_dir": str(tmp_path / "run")}})


def test_a_failed_stage_shows_its_error_and_the_page_is_written_all_the_same(settings) -> None:
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "fail-train").touch()
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline().run(settings, observers=[RunReport()])
    page = read_page(settings.run_dir)
    assert list(page.sections) == list(SECTIONS)
    assert "failed" in page.row("stages", "train")
    assert "disk full halfway through the model" in page.text("training")
    assert page.row("data", "train")[:2] == ["train", "1"]  # what the converter made
    for section, what in (("tuning", "tuning"), ("evaluation", "evaluation"),
                          ("endpoint", "deployment")):
        assert f"No {what} stage in this run." in page.text(section)


def test_stages_the_settings_name_that_never_ran_show_as_not_run(tmp_path, pcam_dir) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[pipeline]\nrun_dir = "{tmp_path / "run"}"\nevaluator = "none"\n'
                        f'[data]\nsource = "{pcam_dir}"\n[convert]\nworkers = 1\n')
    assert main(["-q", "run", str(settings), "--only", "convert"]) == 0
    page = read_page(tmp_path / "run")
    assert page.row("stages", "manifests")[:4] == ["manifests", "manifest_builder", "-", "not run"]
    assert "Stage train: not run." in page.text("training")
    assert main(["report", str(tmp_path / "run")]) == 0  # the folder alone: what run.json says
    alone = read_page(tmp_path / "run")
    assert "completed" in alone.row("stages", "convert")
    assert "not run" not in alone.text("stages") and "No training stage" in alone.text("training")


def test_an_unreadable_training_history_is_named_on_the_page(settings) -> None:
    pipeline().run(settings, observers=[RunReport()])
    assert "No training history" in read_page(settings.run_dir).text("training")
    (settings.run_dir / "train" / "history.json").write_text("{not json")
    assert main(["report", str(settings.run_dir)]) == 0
    text = read_page(settings.run_dir).text("training")
    assert f"training history: {settings.run_dir / 'train' / 'history.json'}: not JSON" in text


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: d.mkdir(), "no run.json; is this a pcamflow run folder?"),
        (lambda d: None, "expected a run folder or a settings file (.toml)"),
    ],
    ids=["no-run-json", "missing"],
)
def test_report_refuses_what_is_not_a_run(tmp_path, capsys, make, words) -> None:
    target = tmp_path / "somewhere"
    make(target)
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and words in err


def test_report_names_a_run_json_that_is_not_a_run_record(settings, capsys) -> None:
    pipeline().run(settings)
    (settings.run_dir / "run.json").write_text("[1, 2")
    assert main(["report", str(settings.run_dir)]) == 1
    err = capsys.readouterr().err
    assert f"{settings.run_dir / 'run.json'}: not a pcamflow run record" in err
