"""Experiment tracking: each pipeline run logged to MLflow, so runs can be compared there.

With the ``mlflow`` extra and a ``[tracking]`` table naming ``mlflow_uri``, a run logs:

- the settings as params (``train.learning_rate``), the hyperparameters the model was trained
  with as ``model.*`` params (tuned values included), and tags naming the run folder;
- each stage's status (tag ``stage.<name>.status``) and duration (metric);
- the data's image counts per split;
- the metric lines as per-epoch metrics (``train:accuracy``, ``validation:accuracy``, ...,
  step = epoch), read from the Trainer stage's ``history.json``;
- the evaluation metrics (``evaluation:roc_auc``, ...), the evaluation folder, the run report,
  ``run.json`` and the settings file as artifacts, and the model archive under ``model/``;
- each tuning trial as a nested run (its hyperparameters as params, its objective as a metric).

:class:`MlflowTracker` is a :class:`~pcamflow.pipeline.RunObserver`: it logs each stage as it
ends (or is found complete), reading the files the stage left, so stages know nothing of
tracking. MLflow is imported only when a tracker is made; without ``[tracking]`` nothing here
runs, and asking for tracking without the extra is a
:class:`~pcamflow.errors.MissingExtraError` naming it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pcamflow._extras import require
from pcamflow._io import RUN_FILE, StageRecord
from pcamflow.artifacts import Endpoint, Evaluation, ImageDataset, ModelArtifact, TuningResult
from pcamflow.config import TrackingSettings
from pcamflow.errors import TrackingError
from pcamflow.evaluation.run_files import local_path, read_history, read_trials
from pcamflow.evaluation.run_report import FIGURES_DIR, REPORT_FILE, RunReport
from pcamflow.pipeline import RunObserver, RunResult
from pcamflow.stages import stage_output_dir

__all__ = ["MlflowTracker", "metric_name", "observers_for", "settings_params"]

log = logging.getLogger("pcamflow")

_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"
# MLflow's own limits (mlflow/utils/validation.py): entries per log_batch call, param length
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_PARAM_LENGTH = 6000
_TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def metric_name(name: str) -> str:
    """A name MLflow accepts (letters, digits, ``_ - . / :`` and spaces); ``@`` reads ``_at_``.

    >>> metric_name("plain@valid/accuracy")
    'plain_at_valid/accuracy'
    """
    return re.sub(r"[^\w./: -]", "_", name.replace("@", "_at_"))


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:_PARAM_LENGTH]


def settings_params(settings: Any) -> dict[str, str]:
    """The run's settings as MLflow params: dotted key paths -> text.

    >>> from pcamflow.config import Settings
    >>> settings_params(Settings.from_dict({"train": {"epochs": 3}}))["train.epochs"]
    '3'
    """
    out: dict[str, str] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping) and value:
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        else:
            out[metric_name(path)] = _param_value(value)

    walk(settings.to_dict() if callable(getattr(settings, "to_dict", None)) else {}, "")
    return out


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """Let MLflow open its file store for a ``file:`` URI (or a plain path).

    MLflow 3 keeps the file store in maintenance mode and refuses it unless
    ``MLFLOW_ALLOW_FILE_STORE`` is true; a settings file naming a ``file:`` URI asks for it, so
    it is allowed while the tracker works, then the variable is restored.
    """
    if urlparse(uri).scheme not in ("", "file") or _FILE_STORE_ENV in os.environ:
        yield
        return
    os.environ[_FILE_STORE_ENV] = "true"
    try:
        yield
    finally:
        os.environ.pop(_FILE_STORE_ENV, None)


class MlflowTracker(RunObserver):
    """Logs a pipeline run to MLflow as it goes (see the module's docstring for what).

    Args:
        tracking: the ``[tracking]`` settings.
        client: an ``mlflow.MlflowClient`` (default: one for ``tracking.mlflow_uri``).

    Raises:
        MissingExtraError: the ``mlflow`` extra is not installed.
        ConfigError: ``tracking.mlflow_uri`` is unset.
    """

    def __init__(self, tracking: TrackingSettings, *, client: Any = None) -> None:
        require("mlflow", "tracking.mlflow_uri")
        if not tracking.enabled and client is None:
            from pcamflow.errors import ConfigError

            raise ConfigError("tracking.mlflow_uri: unset; nothing to log to")
        self.tracking = tracking
        self.uri = tracking.mlflow_uri or ""
        self._client = client
        self._allowance: contextlib.ExitStack | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._run_dir = Path(".")

    # --- the observer ---------------------------------------------------------------------

    def run_started(self, run_dir: Path, settings: Any, stages: Mapping[str, str]) -> None:
        self._allowance = contextlib.ExitStack()
        self._allowance.enter_context(_file_store_allowed(self.uri))
        self._run_dir = Path(run_dir)
        try:
            client = self._client_for_run()
            experiment = client.get_experiment_by_name(self.tracking.experiment)
            self.experiment_id = (experiment.experiment_id if experiment is not None
                                  else client.create_experiment(self.tracking.experiment))
            from pcamflow import __version__

            tags = {
                "pcamflow.run_dir": str(self._run_dir.resolve()),
                "pcamflow.stages": ", ".join(stages),
                "pcamflow.version": __version__,
                **self.tracking.tags,
            }
            source = getattr(settings, "source", None)
            if source:
                tags["pcamflow.settings_file"] = str(Path(source).resolve())
            run = client.create_run(self.experiment_id, tags=tags,
                                    run_name=self.tracking.run_name or self._run_dir.name)
            self.run_id = run.info.run_id
            self._log(params=settings_params(settings))
            if source and Path(source).is_file():
                client.log_artifact(self.run_id, source)
        except Exception as error:
            if self.run_id is not None:  # opened, then failed: do not leave it RUNNING
                with contextlib.suppress(Exception):
                    self._client_for_run().set_terminated(self.run_id, status="FAILED")
                self.run_id = None
            self._allowance.close()
            raise TrackingError(
                f"tracking.mlflow_uri: cannot start an MLflow run at {self.uri!r} "
                f"(experiment {self.tracking.experiment!r}): {type(error).__name__}: {error}"
            ) from None
        log.info("mlflow: run %s in experiment %r at %s", self.run_id,
                 self.tracking.experiment, self.uri)

    def stage_ended(self, name: str, record: StageRecord, ran: bool) -> None:
        if self.run_id is None:
            return
        metrics = {f"stage.{name}.duration_s": record.duration_s} if record.duration_s else {}
        self._log(tags={f"stage.{name}.status": record.status,
                        f"stage.{name}.ran": "true" if ran else "false (complete earlier)"},
                  metrics=metrics)
        artifact = record.load_artifact() if record.status == "completed" else None
        folder = stage_output_dir(self._run_dir, name)
        if isinstance(artifact, ImageDataset):
            self._log(metrics={
                f"data.{split}.images": sum(counts.values())
                for split, counts in artifact.counts.items()
            })
        elif isinstance(artifact, TuningResult):
            self._log_tuning(artifact)
        elif isinstance(artifact, ModelArtifact):
            self._log_model(artifact, folder)
        elif isinstance(artifact, Evaluation):
            self._log_evaluation(artifact)
        elif isinstance(artifact, Endpoint):
            self._log(tags={f"endpoint.{key}": str(value) for key, value in (
                ("name", artifact.name), ("backend", artifact.backend), ("url", artifact.url),
                ("region", artifact.region)) if value is not None})

    def run_ended(self, result: RunResult, error: BaseException | None) -> None:
        if self.run_id is None:
            return
        try:
            client = self._client_for_run()
            if error is None and not result.ran:
                # every stage was complete already: this call made nothing to compare
                client.delete_run(self.run_id)
                log.info("mlflow: no stage ran; run %s deleted", self.run_id)
                self.run_id = None
                return
            for path in (result.run_dir / REPORT_FILE, result.run_dir / RUN_FILE):
                if path.is_file():
                    client.log_artifact(self.run_id, str(path))
            if (result.run_dir / FIGURES_DIR).is_dir():
                client.log_artifacts(self.run_id, str(result.run_dir / FIGURES_DIR), FIGURES_DIR)
            if error is None:
                status = "FINISHED"
            else:
                status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            client.set_terminated(self.run_id, status=status)
        finally:
            if self._allowance is not None:
                self._allowance.close()

    def summary(self) -> str | None:
        if self.run_id is None:
            return None
        return (f"mlflow: run {self.run_id} in experiment {self.tracking.experiment!r} "
                f"at {self.uri}")

    # --- what each stage left -------------------------------------------------------------

    def _log_tuning(self, result: TuningResult) -> None:
        if result.best_value is not None:
            self._log(metrics={f"tune.best.{result.objective}": result.best_value})
        path = local_path(result.trials)
        if path is None or not path.exists():
            return
        trials = read_trials(path, result.objective)
        client = self._client_for_run()
        for file in (path, path.with_name("trials.png")):
            if file.is_file():
                client.log_artifact(self.run_id, str(file), "tuning")
        for row, value, state in zip(trials.rows, trials.values(), trials.states(), strict=True):
            trial = row.get(trials.id_column, "")
            nested = client.create_run(self.experiment_id, run_name=f"trial {trial}", tags={
                "mlflow.parentRunId": self.run_id, "pcamflow.trial": trial,
                "pcamflow.state": state,
            })
            params = {metric_name(k): _param_value(row[k]) for k in trials.hyperparameters
                      if row.get(k)}
            metrics = {name: number for name in ("epochs", "duration_s")
                       if (number := _number(row.get(name))) is not None}
            if value is not None:
                metrics[trials.objective] = value
            self._log(params=params, metrics=metrics, run_id=nested.info.run_id)
            client.set_terminated(nested.info.run_id, status=_TRIAL_STATUS.get(state, "FINISHED"))

    def _log_model(self, model: ModelArtifact, folder: Path) -> None:
        history = read_history(folder) or []
        steps = [
            (metric_name(key), float(value), int(entry["epoch"]))
            for entry in history for key, value in entry.items()
            if key != "epoch" and isinstance(value, int | float)
        ]
        self._log(
            params={f"model.{k}": _param_value(v) for k, v in model.hyperparameters.items()},
            metrics={f"model.{metric_name(k)}": v for k, v in model.metrics.items()},
            tags={"model.uri": model.uri, **({"model.job_name": model.job_name}
                                             if model.job_name else {})},
            steps=steps,
        )
        archive = local_path(model.uri)
        if self.tracking.log_model and archive is not None and archive.is_file():
            self._client_for_run().log_artifact(self.run_id, str(archive), "model")

    def _log_evaluation(self, evaluation: Evaluation) -> None:
        self._log(metrics={f"evaluation:{metric_name(k)}": v
                           for k, v in evaluation.metrics.items() if v is not None})
        report = local_path(evaluation.report)
        folder = report.parent if report is not None and report.suffix == ".html" else report
        if folder is not None and folder.is_dir():
            self._client_for_run().log_artifacts(self.run_id, str(folder), "evaluation")

    # --- MLflow ---------------------------------------------------------------------------

    def _client_for_run(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _log(
        self,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float | None] | None = None,
        tags: Mapping[str, str] | None = None,
        steps: Sequence[tuple[str, float, int]] = (),
        run_id: str | None = None,
    ) -> None:
        """One or more ``log_batch`` calls within MLflow's limits per call."""
        from mlflow.entities import Metric, Param, RunTag

        run_id = run_id or self.run_id
        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
        rows += [Metric(k, v, now, step) for k, v, step in steps]
        keyed = [Param(k, v) for k, v in (params or {}).items()]
        keyed += [RunTag(k, v) for k, v in (tags or {}).items()]
        client = self._client_for_run()
        for start in range(0, len(keyed), _PARAMS_PER_BATCH):
            chunk = keyed[start:start + _PARAMS_PER_BATCH]
            client.log_batch(run_id, params=[p for p in chunk if isinstance(p, Param)],
                             tags=[t for t in chunk if isinstance(t, RunTag)])
        for start in range(0, len(rows), _METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=rows[start:start + _METRICS_PER_BATCH])


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def observers_for(settings: Any) -> list[RunObserver]:
    """The observers a run's settings ask for: the run report always, and an
    :class:`MlflowTracker` when ``[tracking]`` names an MLflow URI.

    Raises:
        MissingExtraError: tracking is asked for without the ``mlflow`` extra.
    """
    observers: list[RunObserver] = [RunReport()]
    tracking = getattr(settings, "tracking", None)
    if tracking is not None and tracking.enabled:
        observers.append(MlflowTracker(tracking))
    return observers
