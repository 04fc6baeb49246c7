"""Local mode's records of training, tuning and transform jobs, and their API answers.

Each job is held here from ``Create*`` on; ``Describe*``, ``List*`` and the summaries are built
from the request as sent and the job's state, in the shapes of the SageMaker API Reference
(``DescribeTrainingJob``, ``HyperParameterTrainingJobSummary``, ...), so that boto3 and
sagemaker-core read them as they read SageMaker's.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["Job", "Store", "now"]

FINAL = ("Completed", "Failed", "Stopped")


def now() -> dt.datetime:
    """The time now, as botocore parses SageMaker's timestamps (UTC, aware)."""
    return dt.datetime.now(dt.timezone.utc)


@attrs.define
class Job:
    """One job: its request, its state, and what it made.

    Attributes:
        kind: ``training``, ``tuning`` or ``transform``.
        name: the job's name.
        arn: its ARN.
        request: the request as sent (a tuning trial's: the definition made a training job).
        status: ``InProgress``, ``Stopping``, ``Completed``, ``Failed`` or ``Stopped``.
        secondary: a training job's secondary status (``Starting``, ``Training``, ...).
        failure_reason: why it failed.
        stop_requested: a ``Stop*`` call arrived.
        tags: its tags.
        extra: what the kind adds (metrics, tuned values, trials, the best trial, ...).
    """

    kind: str
    name: str
    arn: str
    request: dict[str, Any]
    status: str = "InProgress"
    secondary: str = "Starting"
    failure_reason: str | None = None
    stop_requested: bool = False
    tags: list[dict[str, str]] = attrs.Factory(list)
    created: dt.datetime = attrs.Factory(now)
    started: dt.datetime | None = None
    ended: dt.datetime | None = None
    modified: dt.datetime = attrs.Factory(now)
    transitions: list[dict[str, Any]] = attrs.Factory(list)
    extra: dict[str, Any] = attrs.Factory(dict)

    @property
    def done(self) -> bool:
        """Whether the job has ended."""
        return self.status in FINAL

    def move(self, status: str | None = None, secondary: str | None = None,
             message: str = "") -> None:
        """Change the status (and a training job's secondary status, recording the step)."""
        stamp = now()
        if (secondary is not None and secondary != self.secondary) or not self.transitions:
            if self.transitions:
                self.transitions[-1]["EndTime"] = stamp
            self.secondary = secondary or self.secondary
            self.transitions.append({"Status": self.secondary, "StartTime": stamp,
                                     "StatusMessage": message or self.secondary})
        if status is not None:
            self.status = status
            if status == "InProgress" and self.started is None:
                self.started = stamp
            if status in FINAL:
                self.ended = stamp
                if self.transitions:
                    self.transitions[-1].setdefault("EndTime", stamp)
        self.modified = stamp

    def fail(self, reason: str) -> None:
        """End the job ``Failed`` with ``reason``."""
        self.failure_reason = reason
        self.move("Failed", "Failed", reason)


class Store:
    """Every job local mode knows, by kind and name; safe to use from several threads."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._jobs: dict[str, dict[str, Job]] = {"training": {}, "tuning": {}, "transform": {}}

    def add(self, job: Job) -> Job:
        """Keep ``job``; its name must be new for its kind."""
        with self.lock:
            self._jobs[job.kind][job.name] = job
        return job

    def get(self, kind: str, name: str) -> Job | None:
        """The job of ``kind`` called ``name``, or None."""
        with self.lock:
            return self._jobs[kind].get(name)

    def by_arn(self, arn: str) -> Job | None:
        """The job with ``arn``, or None."""
        with self.lock:
            return next((j for jobs in self._jobs.values() for j in jobs.values()
                         if j.arn == arn), None)

    def jobs(self, kind: str, keep: Callable[[Job], bool] = lambda job: True) -> list[Job]:
        """The jobs of ``kind``, newest first (as the List operations sort by default)."""
        with self.lock:
            found = [j for j in self._jobs[kind].values() if keep(j)]
        return sorted(found, key=lambda j: j.created, reverse=True)


def _some(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def describe_training(job: Job) -> dict[str, Any]:
    """``DescribeTrainingJob``'s answer."""
    request = job.request
    output = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    answer = {
        "TrainingJobName": job.name,
        "TrainingJobArn": job.arn,
        "ModelArtifacts": {"S3ModelArtifacts": f"{output}/{job.name}/output/model.tar.gz"},
        "TrainingJobStatus": job.status,
        "SecondaryStatus": job.secondary,
        "HyperParameters": dict(request.get("HyperParameters", {})),
        "AlgorithmSpecification": request["AlgorithmSpecification"],
        "RoleArn": request["RoleArn"],
        "InputDataConfig": request.get("InputDataConfig", []),
        "OutputDataConfig": request["OutputDataConfig"],
        "ResourceConfig": request["ResourceConfig"],
        "StoppingCondition": request["StoppingCondition"],
        "CreationTime": job.created,
        "LastModifiedTime": job.modified,
        "SecondaryStatusTransitions": [dict(t) for t in job.transitions],
        "EnableManagedSpotTraining": bool(request.get("EnableManagedSpotTraining", False)),
        "EnableNetworkIsolation": bool(request.get("EnableNetworkIsolation", False)),
    }
    answer.update(_some(
        TuningJobArn=job.extra.get("tuning_job_arn"),
        FailureReason=job.failure_reason,
        VpcConfig=request.get("VpcConfig"),
        CheckpointConfig=request.get("CheckpointConfig"),
        TrainingStartTime=job.started,
        TrainingEndTime=job.ended,
        FinalMetricDataList=job.extra.get("final_metrics"),
    ))
    return answer


def training_summary(job: Job) -> dict[str, Any]:
    """A ``TrainingJobSummary`` (``ListTrainingJobs``)."""
    return _some(TrainingJobName=job.name, TrainingJobArn=job.arn, CreationTime=job.created,
                 TrainingEndTime=job.ended, LastModifiedTime=job.modified,
                 TrainingJobStatus=job.status, SecondaryStatus=job.secondary)


def trial_summary(job: Job, tuning_name: str) -> dict[str, Any]:
    """A ``HyperParameterTrainingJobSummary``: a training job of a tuning job."""
    value = job.extra.get("objective")
    return _some(
        TrainingJobName=job.name, TrainingJobArn=job.arn, TuningJobName=tuning_name,
        CreationTime=job.created, TrainingStartTime=job.started, TrainingEndTime=job.ended,
        TrainingJobStatus=job.status, TunedHyperParameters=dict(job.extra.get("tuned", {})),
        FailureReason=job.failure_reason,
        FinalHyperParameterTuningJobObjectiveMetric=None if value is None else {
            "Type": "Maximize", "MetricName": "validation:accuracy", "Value": float(value)},
        ObjectiveStatus=("Succeeded" if value is not None and job.status != "Failed"
                         else "Failed" if job.done else "Pending"),
    )


def _counters(trials: list[Job]) -> tuple[dict[str, int], dict[str, int]]:
    status = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0,
              "Stopped": 0}
    objective = {"Succeeded": 0, "Pending": 0, "Failed": 0}
    for trial in trials:
        key = {"Failed": "NonRetryableError", "Stopping": "InProgress"}.get(trial.status,
                                                                            trial.status)
        status[key] += 1
        if trial.extra.get("objective") is not None and trial.status != "Failed":
            objective["Succeeded"] += 1
        elif trial.done:
            objective["Failed"] += 1
        else:
            objective["Pending"] += 1
    return status, objective


def describe_tuning(job: Job, trials: list[Job]) -> dict[str, Any]:
    """``DescribeHyperParameterTuningJob``'s answer."""
    status, objective = _counters(trials)
    best = job.extra.get("best")
    answer = {
        "HyperParameterTuningJobName": job.name,
        "HyperParameterTuningJobArn": job.arn,
        "HyperParameterTuningJobConfig": job.request["HyperParameterTuningJobConfig"],
        "TrainingJobDefinition": job.request["TrainingJobDefinition"],
        "HyperParameterTuningJobStatus": job.status,
        "CreationTime": job.created,
        "LastModifiedTime": job.modified,
        "TrainingJobStatusCounters": status,
        "ObjectiveStatusCounters": objective,
    }
    answer.update(_some(
        HyperParameterTuningEndTime=job.ended,
        WarmStartConfig=job.request.get("WarmStartConfig"),
        FailureReason=job.failure_reason,
        BestTrainingJob=trial_summary(best, job.name) if best is not None else None,
    ))
    return answer


def tuning_summary(job: Job, trials: list[Job]) -> dict[str, Any]:
    """A ``HyperParameterTuningJobSummary``."""
    status, objective = _counters(trials)
    config = job.request["HyperParameterTuningJobConfig"]
    return _some(
        HyperParameterTuningJobName=job.name, HyperParameterTuningJobArn=job.arn,
        HyperParameterTuningJobStatus=job.status, Strategy=config["Strategy"],
        CreationTime=job.created, HyperParameterTuningEndTime=job.ended,
        LastModifiedTime=job.modified, TrainingJobStatusCounters=status,
        ObjectiveStatusCounters=objective, ResourceLimits=config.get("ResourceLimits"),
    )


def describe_transform(job: Job) -> dict[str, Any]:
    """``DescribeTransformJob``'s answer."""
    request = job.request
    answer = {
        "TransformJobName": job.name,
        "TransformJobArn": job.arn,
        "TransformJobStatus": job.status,
        "ModelName": request["ModelName"],
        "TransformInput": request["TransformInput"],
        "TransformResources": request["TransformResources"],
        "CreationTime": job.created,
    }
    answer.update(_some(
        FailureReason=job.failure_reason,
        MaxConcurrentTransforms=request.get("MaxConcurrentTransforms"),
        MaxPayloadInMB=request.get("MaxPayloadInMB"),
        BatchStrategy=request.get("BatchStrategy"),
        Environment=request.get("Environment"),
        TransformOutput=request.get("TransformOutput"),
        DataProcessing=request.get("DataProcessing"),
        TransformStartTime=job.started,
        TransformEndTime=job.ended,
    ))
    return answer


def transform_summary(job: Job) -> dict[str, Any]:
    """A ``TransformJobSummary``."""
    return _some(TransformJobName=job.name, TransformJobArn=job.arn, CreationTime=job.created,
                 TransformEndTime=job.ended, LastModifiedTime=job.modified,
                 TransformJobStatus=job.status, FailureReason=job.failure_reason)
