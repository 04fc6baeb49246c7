"""A training job's log in CloudWatch Logs, and the metric lines in it.

SageMaker writes a training job's output to the log group ``/aws/sagemaker/TrainingJobs``, one
stream per instance named ``<job name>/algo-<n>-<epoch>`` ("Log Amazon SageMaker Events with
Amazon CloudWatch", https://docs.aws.amazon.com/sagemaker/latest/dg/logging-cloudwatch.html).
The algorithm's metric lines (``Epoch[3] Validation-accuracy=0.880000``) are read back with
:func:`pcamflow.metric_lines.parse_metric_lines`, the parser the local trainer's lines go
through too.
"""

from __future__ import annotations

from typing import Any

from pcamflow.errors import AwsError
from pcamflow.metric_lines import parse_metric_lines

__all__ = ["TRAINING_LOG_GROUP", "metric_history", "training_log"]

TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


def training_log(logs: Any, job_name: str) -> str:
    """Every line a training job logged, its first instance's stream first.

    Args:
        logs: a boto3 CloudWatch Logs client.
        job_name: the training job's name.

    Raises:
        AwsError: the log cannot be read.
    """
    lines: list[str] = []
    try:
        streams = []
        paginator = logs.get_paginator("describe_log_streams")
        for page in paginator.paginate(logGroupName=TRAINING_LOG_GROUP,
                                       logStreamNamePrefix=f"{job_name}/"):
            streams += [s["logStreamName"] for s in page.get("logStreams", [])]
        for stream in sorted(streams):
            token = None
            while True:
                kwargs: dict[str, Any] = {"logGroupName": TRAINING_LOG_GROUP,
                                          "logStreamName": stream, "startFromHead": True}
                if token:
                    kwargs["nextToken"] = token
                page = logs.get_log_events(**kwargs)
                lines += [event["message"] for event in page.get("events", [])]
                if not page.get("events") or page.get("nextForwardToken") in (None, token):
                    break
                token = page["nextForwardToken"]
    except Exception as error:  # botocore ClientError: no such group, AccessDenied, ...
        raise AwsError(f"cannot read the log of training job {job_name}: {error}") from None
    return "\n".join(lines)


def metric_history(logs: Any, job_name: str) -> list[dict[str, Any]]:
    """The per-epoch metrics in a training job's log (``[{"epoch": 0, ...}, ...]``)."""
    return parse_metric_lines(training_log(logs, job_name))
