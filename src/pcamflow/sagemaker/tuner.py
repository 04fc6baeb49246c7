"""The SageMaker tuner: a hyperparameter tuning job over the built-in algorithm.

It searches the ``[tune.ranges]`` the local tuner searches, with the same strategies
(Bayesian, Random, Hyperband, Grid), objective ``validation:accuracy`` (maximised), limits on
jobs in all and at once, early stopping and warm start from an earlier tuning job. The
:class:`~pcamflow.artifacts.TuningResult` holds the best training job's values of the tuned
ranges, and only those: the tuning job's own static values (``tune.epochs``, say) stay with
it, and the trainer takes everything else from ``[train]``. A CSV lists every trial.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import attrs

from pcamflow.artifacts import Manifests, TuningResult
from pcamflow.errors import AwsError, ConfigError
from pcamflow.hyperparameters import Hyperparameters
from pcamflow.sagemaker._stage import JobStageOptions
from pcamflow.stages import Context, Tuner

__all__ = ["SageMakerTuner", "best_of", "tuning_request", "write_trials"]

log = logging.getLogger(__name__)


def tuning_request(
    context: Context, resolved: Any, manifests: Manifests, name: str, *, planned: bool = False
) -> dict[str, Any]:
    """The ``CreateHyperParameterTuningJob`` request of the tuner stage in ``context``.

    Both :meth:`SageMakerTuner.run` and :meth:`SageMakerTuner.plan` (``planned``) build it
    here.
    """
    from pcamflow.sagemaker.planning import planned_root
    from pcamflow.sagemaker.requests import tuning_job_request
    from pcamflow.sagemaker.s3 import run_root
    from pcamflow.sagemaker.trainer import training_hyperparameters

    settings = context.settings
    tune = settings.tune
    base = settings.train.hyperparameters
    if tune.epochs is not None:
        base = attrs.evolve(base, epochs=tune.epochs)
    static = training_hyperparameters(base, manifests)
    root = planned_root(context, resolved) if planned else run_root(context, resolved.bucket)
    output = root.join(context.stage_name or "tune", "output")
    return tuning_job_request(name, tune, static, manifests.manifests, str(output),
                              settings.aws, resolved)


class SageMakerTuner(JobStageOptions, Tuner):
    """Tunes on SageMaker with a hyperparameter tuning job.

    Args:
        progress: show jobs done and the best value so far.
        ask: asks whether to stop the tuning job on Ctrl-C (default: on the terminal, if any).
    """

    writes_to = None  # tuned values, kept in run.json

    def validate(self, context: Context) -> None:
        from pcamflow.sagemaker.trainer import check_aws, check_no_extensions, check_training

        check_training(context.settings)
        check_no_extensions(context.settings)
        if not context.settings.tune.ranges:
            raise ConfigError("tune.ranges: the SageMaker tuner needs at least one range")
        check_aws(context.settings, context.services)

    def plan(self, context: Context) -> Any:
        from pcamflow.sagemaker.algorithm import depth_warnings
        from pcamflow.sagemaker.planning import (
            StagePlanner,
            planned_manifests,
            planned_resolved,
        )
        from pcamflow.sagemaker.requests import grid_size, job_name
        from pcamflow.sagemaker.trainer import check_no_extensions

        check_no_extensions(context.settings)
        settings = context.settings
        tune, training = settings.tune, settings.aws.training
        resolved = planned_resolved(settings)
        planner = StagePlanner(context, resolved.region)
        manifests, counts = planned_manifests(context, resolved, planner)
        request = tuning_request(context, resolved, manifests,
                                 job_name(settings.aws.prefix, "tune"), planned=True)
        planner.request("sagemaker", "CreateHyperParameterTuningJob", request)
        hp = settings.train.hyperparameters
        planner.warnings += depth_warnings(hp.num_layers, hp.image_shape)
        if tune.strategy == "Grid":
            trials, how = grid_size(tune), "the grid's every combination"
        else:
            trials, how = tune.max_jobs, "at most tune.max_jobs"
        epochs = int(request["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"])
        images = counts.get("train", 0) + counts.get("valid", 0)
        planner.billed("s3", "GetObject", {"Bucket": resolved.bucket, "Key": "<image>"},
                       images * epochs * trials,
                       f"at most: Pipe mode reads every image each epoch ({epochs}) of each "
                       f"of {trials} training jobs")
        hours = (training.estimated_runtime_s or training.max_runtime_s) / 3600
        planner.instance_hours(training.instance_type, training.instance_count * trials, hours,
                               f"{trials} training jobs ({how})")
        return planner.plan()

    def run(self, context: Context) -> TuningResult:
        from pcamflow.sagemaker import jobs
        from pcamflow.sagemaker.clients import clients_for, resolve
        from pcamflow.sagemaker.requests import grid_size, job_name

        settings = context.settings
        aws, tune = settings.aws, settings.tune
        manifests = context.input(Manifests)
        clients = clients_for(context)
        resolved = resolve(clients, aws)
        request = tuning_request(context, resolved, manifests, job_name(aws.prefix, "tune"))
        static = request["TrainingJobDefinition"]["StaticHyperParameters"]
        total = grid_size(tune) if tune.strategy == "Grid" else tune.max_jobs
        job = jobs.attach_or_create("tuning", request, clients, context.stage_dir)
        job = jobs.wait(
            "tuning", job, poll_s=clients.poll_s(aws), progress=self.progress,
            describe=lambda j: _progress_text(j, total),
            **({"ask": self.ask} if self.ask else {}),
        )
        best, value = best_of(job, static, tune.ranges)
        trials = write_trials(
            clients, str(job.hyper_parameter_tuning_job_name), context.stage_dir / "trials.csv"
        )
        return TuningResult(
            best_hyperparameters=best,
            objective="validation:accuracy",
            best_value=value,
            trials=str(trials),
            job_name=str(job.hyper_parameter_tuning_job_name),
        )


def _counters(job: Any) -> dict[str, int]:
    counters = getattr(job, "training_job_status_counters", None)
    if counters is None or not hasattr(counters, "completed"):
        return {}
    names = ("completed", "in_progress", "retryable_error", "non_retryable_error", "stopped")
    return {n: int(v) for n in names if isinstance(v := getattr(counters, n, 0), int)}


def _progress_text(job: Any, total: int) -> str:
    counts = _counters(job)
    done = sum(v for k, v in counts.items() if k != "in_progress")
    text = f"jobs {done}/{total} ({counts.get('in_progress', 0)} running)"
    best = getattr(job, "best_training_job", None)
    metric = getattr(best, "final_hyper_parameter_tuning_job_objective_metric", None)
    value = getattr(metric, "value", None)
    if isinstance(value, int | float):
        text += f" best validation:accuracy={value:.4f}"
    return text


def best_of(
    job: Any, static: dict[str, str], tuned_names: Any
) -> tuple[dict[str, str], float | None]:
    """The best training job's values of the tuned ranges, and its objective value.

    Args:
        job: the finished tuning job (sagemaker-core resource).
        static: the static hyperparameters the tuning job ran with (to check the values).
        tuned_names: the names of the tuned ranges; only these are returned.

    Raises:
        AwsError: the tuning job has no best training job (no trial reported the objective).
    """
    best = getattr(job, "best_training_job", None)
    tuned = getattr(best, "tuned_hyper_parameters", None)
    if not isinstance(tuned, dict):
        raise AwsError(
            f"tuning job {job.hyper_parameter_tuning_job_name} has no best training job: "
            "no trial reported validation:accuracy"
        )
    # the tuner quotes categorical values in some versions ('"sgd"'): strip the quotes
    values = {k: str(v).strip('"') for k, v in tuned.items() if k in set(tuned_names)}
    Hyperparameters.from_sagemaker({**static, **values})  # outside the contract: an error
    metric = getattr(best, "final_hyper_parameter_tuning_job_objective_metric", None)
    value = getattr(metric, "value", None)
    return values, float(value) if isinstance(value, int | float) else None


def write_trials(clients: Any, tuning_job: str, path: Path) -> Path:
    """Write every training job of ``tuning_job`` (name, status, objective, values) as CSV."""
    from pcamflow._io import atomic_write

    rows: list[dict[str, Any]] = []
    try:
        paginator = clients.sagemaker.get_paginator(
            "list_training_jobs_for_hyper_parameter_tuning_job"
        )
        for page in paginator.paginate(HyperParameterTuningJobName=tuning_job):
            for item in page.get("TrainingJobSummaries", []):
                metric = item.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
                tuned = item.get("TunedHyperParameters", {})
                rows.append({
                    "training_job": item["TrainingJobName"],
                    "status": item.get("TrainingJobStatus", ""),
                    "validation:accuracy": metric.get("Value", ""),
                    **{k: str(v).strip('"') for k, v in tuned.items()},
                })
    except Exception as error:  # botocore ClientError: report, keep the result
        raise AwsError(f"cannot list the training jobs of {tuning_job}: {error}") from None
    names = ["training_job", "status", "validation:accuracy"]
    names += sorted({k for row in rows for k in row} - set(names))
    with atomic_write(path, encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    log.info("%d trials of %s written to %s", len(rows), tuning_job, path)
    return path
