"""What a run folder holds, read from the files its stages leave (never a backend's internals).

:class:`RunFiles` reads ``run.json`` and, through it, each stage's artifact and the files beside
it: the tuner's ``trials.csv``, the trainer's ``history.json`` (see
:mod:`pcamflow.metric_lines`), the evaluation's ``metrics.json`` and plots. The run report
(:mod:`pcamflow.evaluation.run_report`) and experiment tracking (:mod:`pcamflow.tracking`) both
read a run through it, so they show the same things for either backend.

Every reader answers None (or an empty list) for what is not there, and raises
:class:`~pcamflow.errors.DataError` naming the file for what is there but unreadable.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from pcamflow._io import RUN_FILE, StageRecord, read_run_record
from pcamflow.artifacts import Artifact, Evaluation, TuningResult
from pcamflow.errors import ConfigError, DataError
from pcamflow.metric_lines import HISTORY_FILE
from pcamflow.stages import STAGE_KINDS, stage_output_dir

__all__ = [
    "EVALUATION_PLOTS",
    "EXPLORE_REPORT",
    "RunFiles",
    "StageFiles",
    "Trials",
    "local_path",
    "read_evaluation_document",
    "read_history",
    "read_trials",
]

EXPLORE_REPORT = Path("explore") / "index.html"
"""Where in a run folder the exploration report lies when there is one
(``pcamflow explore SOURCE RUN/explore``; the demo writes it there)."""

EVALUATION_PLOTS = (
    ("roc.png", "ROC curve"),
    ("pr.png", "Precision-recall curve"),
    ("calibration.png", "Calibration"),
    ("confusion.png", "Confusion matrices"),
    ("false_positives.png", "Most confident false positives"),
    ("false_negatives.png", "Most confident false negatives"),
)
"""The evaluation report's pictures (file name, caption), as
:func:`~pcamflow.evaluation.report.write_report` names them."""

_A = TypeVar("_A", bound=Artifact)


def local_path(location: str | None) -> Path | None:
    """The local file a location names (a path or ``file://`` URI); None for remote URIs."""
    if not location:
        return None
    if location.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(location).path))
    if "://" in location:
        return None
    return Path(location)


@attrs.frozen
class StageFiles:
    """One stage of a run: its record (None: named by the pipeline, never run) and folder."""

    name: str
    folder: Path
    record: StageRecord | None = None
    kind: str | None = None

    @property
    def status(self) -> str:
        """``completed``, ``failed``, ``interrupted``, ``running``, or ``not run``."""
        return self.record.status if self.record is not None else "not run"

    @property
    def artifact(self) -> Artifact | None:
        """The artifact of a completed stage, else None."""
        if self.record is None or self.record.status != "completed":
            return None
        return self.record.load_artifact()


@attrs.frozen
class Trials:
    """A tuner's ``trials.csv``: both tuners write one, with different columns.

    Attributes:
        path: the file.
        header: its columns.
        rows: one dict per trial, the CSV's text.
        objective: the objective's column (``validation:accuracy``).
        id_column: the column naming each trial (``trial`` locally, ``training_job`` on
            SageMaker).
        hyperparameters: the columns holding tuned hyperparameters.
    """

    path: Path
    header: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    objective: str
    id_column: str
    hyperparameters: tuple[str, ...]

    def values(self) -> list[float | None]:
        """Each trial's objective (None where it has none)."""
        return [_number(row.get(self.objective, "")) for row in self.rows]

    def states(self) -> list[str]:
        """Each trial's state in Optuna's words: ``COMPLETE``, ``PRUNED``, ``FAIL``, ...

        SageMaker's training-job statuses map onto them: ``Completed`` -> ``COMPLETE``,
        ``Stopped`` (early stopping) -> ``PRUNED``, ``Failed`` -> ``FAIL``.
        """
        words = {"completed": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL"}
        column = "state" if "state" in self.header else "status"
        out = []
        for row in self.rows:
            text = row.get(column, "")
            out.append(words.get(text.lower(), text.upper()))
        return out


_TRIAL_COLUMNS = {"trial", "state", "training_job", "status", "epochs", "duration_s", "source",
                  "note"}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_trials(path: str | Path, objective: str = "validation:accuracy") -> Trials:
    """Read a tuner's ``trials.csv``.

    Raises:
        DataError: the file is missing, not CSV or has no objective column.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = tuple(dict(row) for row in reader)
            header = tuple(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read the trials ({error})") from None
    if objective not in header:
        raise DataError(f"{path}: no {objective!r} column (columns: {', '.join(header)})")
    id_column = "trial" if "trial" in header else header[0]
    tuned = tuple(c for c in header if c not in _TRIAL_COLUMNS and c != objective)
    return Trials(path=path, header=header, rows=rows, objective=objective,
                  id_column=id_column, hyperparameters=tuned)


def read_history(folder: str | Path) -> list[dict[str, Any]] | None:
    """A Trainer stage's ``history.json`` (one dict per epoch), or None when there is none.

    Raises:
        DataError: the file is not a JSON list of objects each with an integer ``epoch``.
    """
    path = Path(folder) / HISTORY_FILE
    if not path.exists():
        return None
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not JSON ({error})") from None
    if not isinstance(history, list) or not all(
        isinstance(e, dict) and isinstance(e.get("epoch"), int) for e in history
    ):
        raise DataError(f"{path}: expected a list of objects with an integer 'epoch' each")
    return history


def read_evaluation_document(evaluation: Evaluation) -> dict[str, Any]:
    """The evaluation's ``metrics.json`` document, or its flat metrics where the file is not
    local (both are accepted by :func:`~pcamflow.evaluation.report.metrics_rows`).

    Raises:
        DataError: ``metrics.json`` is there but not a JSON object.
    """
    path = local_path(evaluation.metrics_file)
    if path is None or not path.exists():
        return dict(evaluation.metrics)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not JSON ({error})") from None
    if not isinstance(document, dict):
        raise DataError(f"{path}: expected a JSON object")
    return document


@attrs.frozen
class RunFiles:
    """A run folder's stages, in pipeline order, with their records.

    Attributes:
        run_dir: the run folder.
        stages: every stage ``run.json`` records, then those the pipeline names that never ran.
        updated: when ``run.json`` was last written.
    """

    run_dir: Path
    stages: tuple[StageFiles, ...]
    updated: str | None = None

    @classmethod
    def read(cls, run_dir: str | Path, names: Mapping[str, str] | None = None) -> RunFiles:
        """Read ``run_dir/run.json``.

        Args:
            run_dir: the run folder.
            names: stage name -> kind of the stages the pipeline has (from its settings), so
                that a stage that never ran shows as such.

        Raises:
            ConfigError: the folder holds no ``run.json``.
            PcamflowError: ``run.json`` is not a run record.
        """
        run_dir = Path(run_dir)
        if not (run_dir / RUN_FILE).exists():
            raise ConfigError(f"{run_dir}: no {RUN_FILE}; is this a pcamflow run folder?")
        records = read_run_record(run_dir)
        stages = [
            StageFiles(name=n, folder=stage_output_dir(run_dir, n), record=r,
                       kind=r.kind or _kind_of(r))
            for n, r in records.items()
        ]
        for name, kind in (names or {}).items():
            if name not in records:
                stages.append(StageFiles(name=name, folder=stage_output_dir(run_dir, name),
                                         kind=kind))
        order = list(names or {})
        stages.sort(key=lambda s: order.index(s.name) if s.name in order else len(order))
        try:
            updated = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")).get("updated")
        except (OSError, ValueError, AttributeError):
            updated = None
        return cls(run_dir=run_dir, stages=tuple(stages), updated=updated)

    def of_kind(self, kind: str) -> StageFiles | None:
        """The last stage of ``kind`` (``trainer``, ...), whatever its status."""
        found = [s for s in self.stages if s.kind == kind]
        return found[-1] if found else None

    def latest(self, kind: type[_A]) -> tuple[StageFiles, _A] | None:
        """The last completed stage that made a ``kind`` artifact, with it."""
        for stage in reversed(self.stages):
            artifact = stage.artifact
            if isinstance(artifact, kind):
                return stage, artifact
        return None

    @property
    def explore_report(self) -> Path | None:
        """The exploration report in the run folder, if there is one."""
        path = self.run_dir / EXPLORE_REPORT
        return path if path.exists() else None

    def trials(self) -> Trials | None:
        """The latest tuning's trials, if its ``trials.csv`` is a local file."""
        found = self.latest(TuningResult)
        if found is None:
            return None
        path = local_path(found[1].trials)
        if path is None or not path.exists():
            return None
        return read_trials(path, found[1].objective)


def _kind_of(record: StageRecord) -> str | None:
    """A record without ``kind`` (written by an older pcamflow): the kind of its artifact."""
    artifact = record.load_artifact() if record.artifact else None
    for kind, stage_cls in STAGE_KINDS.items():
        if artifact is not None and isinstance(artifact, stage_cls.produces):
            return kind
    return None
