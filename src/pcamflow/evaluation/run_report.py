"""One page for a whole run: ``<run folder>/report.html``.

:func:`write_run_report` reads what the stages left in the run folder (:mod:`.run_files`) and
writes one self-contained HTML page with a section per part of the run:

- **stages**: each stage's status, start, duration, fingerprint, error and the settings it ran
  with;
- **data**: images per split and class, the class balance, a link to the exploration report;
- **tuning**: the trials as a table and a plot;
- **training**: loss and accuracy per epoch from the metric lines (``history.json``);
- **evaluation**: the metrics with their intervals, ROC, precision-recall, calibration and the
  error montages the evaluation drew;
- **endpoint**: where the model is served.

The page loads nothing from the network: pictures are embedded, links point at files in the run
folder. A stage that did not run, failed or is not in the pipeline says so in its section; the
page is written all the same. :class:`RunReport` writes it at the end of every pipeline run.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pcamflow._io import atomic_write
from pcamflow.artifacts import (
    Endpoint,
    Evaluation,
    ImageDataset,
    Manifests,
    ModelArtifact,
    TuningResult,
)
from pcamflow.errors import PcamflowError
from pcamflow.evaluation import plots
from pcamflow.evaluation.report import metrics_rows
from pcamflow.evaluation.run_files import (
    EVALUATION_PLOTS,
    RunFiles,
    StageFiles,
    local_path,
    read_evaluation_document,
    read_history,
)
from pcamflow.pipeline import RunObserver, RunResult
from pcamflow.stages import STAGE_KINDS

__all__ = [
    "FIGURES_DIR",
    "REPORT_FILE",
    "SECTIONS",
    "RunReport",
    "stages_from_settings",
    "write_run_report",
]

log = logging.getLogger("pcamflow")

REPORT_FILE = "report.html"
FIGURES_DIR = "report_files"
"""The folder of the run report's own pictures (training curves, tuning), in the run folder."""
SECTIONS = ("stages", "data", "tuning", "training", "evaluation", "endpoint")
"""The ``id`` of each section of the page, in order."""

esc = html.escape

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.8em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
td.text{text-align:left}section{margin-top:2.2em}figure{display:inline-block;margin:.6em}
img{max-width:100%}.status-completed{color:#1a7f37}.status-failed,.status-interrupted{color:#b42318}
.absent{color:#666;font-style:italic}.error{color:#b42318;white-space:pre-wrap}
details{margin:.2em 0}summary{cursor:pointer}code{font-size:95%}.scroll{overflow-x:auto}
"""


def _link(target: Path, base: Path, text: str | None = None) -> str:
    """A link to a local file, relative to the page when it lies under the run folder."""
    try:
        href = os.path.relpath(target, base)
    except ValueError:  # another drive
        href = target.resolve().as_uri()
    href = href.replace(os.sep, "/")
    return f'<a href="{esc(href, quote=True)}">{esc(text or str(target))}</a>'


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(caption, quote=True)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>')


def _table(header: list[str], rows: list[list[str]], *, text_columns: int = 1) -> str:
    """An HTML table of already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="text">{c}</td>' if i < text_columns else f"<td>{c}</td>"
            for i, c in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _pairs(mapping: Mapping[str, Any]) -> str:
    return _table(["key", "value"], [[esc(str(k)), esc(_text(v))] for k, v in mapping.items()],
                  text_columns=2)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _when(stamp: str | None) -> str:
    """``2026-01-02T03:04:05+00:00`` -> ``2026-01-02 03:04:05 UTC``."""
    if not stamp:
        return "-"
    return stamp.replace("T", " ").replace("+00:00", " UTC")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"extensions": {"dihedral": true}}`` -> ``{"extensions.dihedral": true}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _absent(stage: StageFiles | None, what: str) -> str | None:
    """The note for a section whose stage made nothing, or None when it completed."""
    if stage is None:
        return f'<p class="absent">No {esc(what)} stage in this run.</p>'
    if stage.status == "completed":
        return None
    note = f'<p class="absent">Stage <code>{esc(stage.name)}</code>: {esc(stage.status)}.</p>'
    if stage.record is not None and stage.record.error:
        note += f'<p class="error">{esc(stage.record.error)}</p>'
    return note


def _problem(what: str, error: PcamflowError) -> str:
    return f'<p class="error">{esc(what)}: {esc(str(error))}</p>'


# --- sections -------------------------------------------------------------------------------


def _stages_section(run: RunFiles) -> str:
    rows, details = [], []
    for stage in run.stages:
        record = stage.record
        status = f'<span class="status-{esc(stage.status.replace(" ", "-"))}">' \
                 f"{esc(stage.status)}</span>"
        duration = f"{record.duration_s:.1f} s" if record and record.duration_s is not None \
            else "-"
        rows.append([
            f"<code>{esc(stage.name)}</code>", esc(stage.kind or "-"),
            esc(record.stage if record else "-"), status,
            esc(_when(record.started if record else None)), duration,
            f"<code>{esc(record.fingerprint or '-')}</code>" if record else "-",
        ])
        if record is not None and record.error:
            details.append(f'<p><code>{esc(stage.name)}</code>: '
                           f'<span class="error">{esc(record.error)}</span></p>')
        if record is not None and record.settings:
            tables = "".join(
                f"<h4>[{esc(name)}]</h4>" + (_pairs(_flatten(value)) if isinstance(value, dict)
                                            else f"<p>{esc(_text(value))}</p>")
                for name, value in record.settings.items()
            )
            details.append(f"<details><summary>settings of <code>{esc(stage.name)}</code>"
                           f"</summary>{tables}</details>")
    if not rows:
        return '<p class="absent">No stage has run yet.</p>'
    header = ["stage", "kind", "class", "status", "started", "duration", "fingerprint"]
    return _table(header, rows, text_columns=5) + "".join(details)


def _data_section(run: RunFiles) -> str:
    converter = run.of_kind("converter")
    found = run.latest(ImageDataset)
    parts = []
    if found is None:
        parts.append(_absent(converter, "data conversion") or "")
    else:
        stage, dataset = found
        manifests = run.latest(Manifests)
        in_manifests = manifests[1].counts if manifests else {}
        labels = sorted({label for counts in dataset.counts.values() for label in counts})
        rows = []
        for split, counts in dataset.counts.items():
            total = sum(counts.values())
            share = counts.get("1", 0) / total if total else float("nan")
            rows.append([esc(split), *(str(counts.get(label, 0)) for label in labels),
                         str(total), f"{share:.1%}" if total else "-",
                         str(in_manifests.get(split, "-"))])
        header = ["split", *(f"class {esc(label)}" for label in labels), "images",
                  "class 1 share", "in manifests"]
        parts.append(_table(header, rows))
        parts.append(f"<p>Images: <code>{esc(dataset.root)}</code> "
                     f"(stage <code>{esc(stage.name)}</code>).</p>")
    explore = run.explore_report
    if explore is not None:
        parts.append(f"<p>Exploration report: {_link(explore, run.run_dir)}</p>")
    else:
        parts.append('<p class="absent">No exploration report in this run folder '
                     f"(<code>pcamflow explore SOURCE {esc(str(run.run_dir / 'explore'))}</code> "
                     "writes one).</p>")
    return "".join(parts)


def _tuning_section(run: RunFiles, figures: Path) -> str:
    tuner = run.of_kind("tuner")
    found = run.latest(TuningResult)
    if found is None:
        return _absent(tuner, "tuning") or ""
    _, result = found
    parts = [f"<p>Objective <code>{esc(result.objective)}</code>; best "
             f"{esc(_text(result.best_value))}"
             + (f"; tuning job <code>{esc(result.job_name)}</code>" if result.job_name else "")
             + ".</p>", "<h3>Best hyperparameters</h3>", _pairs(result.best_hyperparameters)]
    try:
        trials = run.trials()
    except PcamflowError as error:
        return "".join(parts) + _problem("trials", error)
    if trials is None:
        parts.append(f'<p class="absent">No local trials table ({esc(str(result.trials))}).</p>')
        return "".join(parts)
    picture = plots.plot_tuning_history(figures / "tuning.png", trials.values(),
                                        objective=trials.objective, states=trials.states())
    parts.append(_image(picture, "Objective by trial and best so far"))
    parts.append(f"<h3>Trials ({len(trials.rows)})</h3>")
    parts.append(_table([esc(h) for h in trials.header],
                        [[esc(row.get(h) or "") for h in trials.header] for row in trials.rows],
                        text_columns=2))
    parts.append(f"<p>{_link(trials.path, run.run_dir)}</p>")
    return "".join(parts)


def _training_section(run: RunFiles, figures: Path) -> str:
    trainer = run.of_kind("trainer")
    found = run.latest(ModelArtifact)
    if found is None:
        return _absent(trainer, "training") or ""
    stage, model = found
    parts = [f"<p>Model: <code>{esc(model.uri)}</code>"
             + (f" (training job <code>{esc(model.job_name)}</code>)" if model.job_name else "")
             + ".</p>"]
    try:
        history = read_history(stage.folder)
    except PcamflowError as error:
        history = None
        parts.append(_problem("training history", error))
    if history is None:
        parts.append(f'<p class="absent">No training history ({esc(str(stage.folder))}'
                     "/history.json).</p>")
    else:
        picture = plots.plot_training_curves(figures / "training.png", history)
        parts.append(_image(picture, "Loss and accuracy per epoch"))
        names = list(dict.fromkeys(k for e in history for k in e if k != "epoch"))
        if not any(n.startswith("validation:") and "cross_entropy" in n for n in names):
            parts.append('<p class="absent">The metric lines give no validation loss.</p>')
        rows = [[str(e["epoch"]), *(esc(_text(e.get(n))) for n in names)] for e in history]
        parts.append(_table(["epoch", *(esc(n) for n in names)], rows))
    if model.metrics:
        parts.append("<h3>Kept model</h3>" + _pairs(model.metrics))
    parts.append("<details><summary>hyperparameters the model was trained with</summary>"
                 + _pairs(model.hyperparameters) + "</details>")
    return "".join(parts)


def _evaluation_section(run: RunFiles) -> str:
    evaluator = run.of_kind("evaluator")
    found = run.latest(Evaluation)
    if found is None:
        return _absent(evaluator, "evaluation") or ""
    _, evaluation = found
    parts = []
    try:
        header, rows = metrics_rows(read_evaluation_document(evaluation))
        parts.append(_table([esc(h) for h in header], [[esc(c) for c in r] for r in rows]))
        parts.append("<p>Intervals: bootstrap 95% percentile intervals. <em>@valid</em>: at "
                     "the threshold chosen on the validation split; <em>tta</em>: mean over "
                     "the 8 dihedral views.</p>")
    except PcamflowError as error:
        parts.append(_problem("metrics", error))
    report = local_path(evaluation.report)
    folder = report.parent if report is not None and report.suffix == ".html" else report
    if folder is not None:
        for name, caption in EVALUATION_PLOTS:
            if (folder / name).exists():
                parts.append(_image(folder / name, caption))
        if report is not None and report.exists():
            parts.append(f"<p>Evaluation report: {_link(report, run.run_dir)}</p>")
    return "".join(parts)


def _endpoint_section(run: RunFiles) -> str:
    deployer = run.of_kind("deployer")
    found = run.latest(Endpoint)
    if found is None:
        return _absent(deployer, "deployment") or ""
    _, endpoint = found
    facts: dict[str, Any] = {"name": endpoint.name, "backend": endpoint.backend}
    if endpoint.url:
        facts["url"] = endpoint.url
    for key in ("region", "pid"):
        if getattr(endpoint, key) is not None:
            facts[key] = getattr(endpoint, key)
    facts.update(endpoint.resources)
    parts = [_pairs(facts)]
    if endpoint.backend == "local" and endpoint.url:
        page = endpoint.url.rstrip("/") + "/"
        parts.append(f'<p>Web page (while the server runs): <a href="{esc(page, quote=True)}">'
                     f"{esc(page)}</a></p>")
    parts.append(f"<p>Stop it with <code>pcamflow teardown {esc(str(run.run_dir))}</code>.</p>")
    return "".join(parts)


# --- the page -------------------------------------------------------------------------------


def write_run_report(
    run_dir: str | Path, *, stages: Mapping[str, str] | None = None, title: str | None = None
) -> Path:
    """Write ``run_dir/report.html`` from what the run's stages left; return its path.

    Args:
        run_dir: the run folder (it holds ``run.json``).
        stages: stage name -> kind of every stage of the pipeline, so that one that never ran
            shows as such (None: the stages ``run.json`` records).
        title: the page's heading (default: ``pcamflow run <folder name>``).

    Raises:
        ConfigError: the folder holds no ``run.json``.
    """
    run = RunFiles.read(run_dir, stages)
    figures = run.run_dir / FIGURES_DIR
    title = title or f"pcamflow run {run.run_dir.resolve().name}"
    bodies = {
        "stages": ("Stages", _stages_section(run)),
        "data": ("Data", _data_section(run)),
        "tuning": ("Tuning", _tuning_section(run, figures)),
        "training": ("Training", _training_section(run, figures)),
        "evaluation": ("Evaluation", _evaluation_section(run)),
        "endpoint": ("Endpoint", _endpoint_section(run)),
    }
    from pcamflow import __version__

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    nav = "".join(f'<a href="#{key}">{esc(heading)}</a>' for key, (heading, _) in bodies.items())
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Run folder <code>{esc(str(run.run_dir))}</code>; run.json updated "
        f"{esc(run.updated or '-')}; page written {esc(now)} by pcamflow {esc(__version__)}.</p>",
        f"<nav>{nav}</nav>",
    ]
    for key, (heading, body) in bodies.items():
        parts.append(f'<section id="{key}"><h2>{esc(heading)}</h2>{body}</section>')
    parts.append("</body></html>\n")
    path = run.run_dir / REPORT_FILE
    with atomic_write(path, encoding="utf-8") as handle:
        handle.write("\n".join(parts))
    return path


def stages_from_settings(settings: Any) -> dict[str, str]:
    """Stage name -> kind of the pipeline a settings file describes (default stage names)."""
    return {STAGE_KINDS[kind].default_name: kind for kind in settings.pipeline.stage_names()}


class RunReport(RunObserver):
    """Writes ``report.html`` in the run folder when a pipeline run ends, failed or not."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._stages: dict[str, str] = {}

    def run_started(self, run_dir: Path, settings: Any, stages: Mapping[str, str]) -> None:
        self._stages = dict(stages)

    def run_ended(self, result: RunResult, error: BaseException | None) -> None:
        self.path = write_run_report(result.run_dir, stages=self._stages)
        log.info("run report: %s", self.path)

    def summary(self) -> str | None:
        return f"report: {self.path}" if self.path is not None else None
