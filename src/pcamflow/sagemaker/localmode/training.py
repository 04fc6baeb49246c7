"""Running a training job: Pipe-mode channels from S3, the local engine, outputs back to AWS.

As the algorithm's container would, a job here

1. checks what the algorithm checks when it starts (:func:`~.rules.check_algorithm`: instance
   type, hyperparameters, channels) and fails ``ClientError: ...`` when that is broken;
2. reads each augmented-manifest channel the way Pipe mode presents it: the manifest's
   records in their order, each record's first attribute (``source-ref``) fetched from S3, its
   second the label;
3. trains with the local engine (:func:`pcamflow.local.training.trainer.train_model`) on the
   hyperparameters translated from the algorithm's strings, writing the algorithm's metric
   lines to CloudWatch Logs (``/aws/sagemaker/TrainingJobs``, stream
   ``<job>/algo-1-<epoch seconds>``) after every epoch;
4. puts ``model.tar.gz`` at ``<S3OutputPath>/<job>/output/model.tar.gz`` (with the output's KMS
   key) and sets ``FinalMetricDataList`` to the last value of each metric.

``StopTrainingJob`` stops it after the epoch under way (``Stopped``); an epoch hook (a tuning
job's early stopping) may stop it the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcamflow.metric_lines import metric_line, parse_metric_lines
from pcamflow.sagemaker.localmode.records import Job, now
from pcamflow.sagemaker.localmode.rules import AlgorithmError, check_algorithm
from pcamflow.sagemaker.logs import TRAINING_LOG_GROUP

__all__ = ["EarlyStop", "JobLog", "read_channel", "run_training_job"]

log = logging.getLogger("pcamflow.sagemaker.localmode")

EpochHook = Callable[[Job, int, dict[str, float]], None]


class EarlyStop(Exception):
    """Raised by an epoch hook to stop a training job (``Stopped``), keeping its metrics."""


class JobLog:
    """A training job's CloudWatch Logs stream, written line by line."""

    def __init__(self, logs: Any, job_name: str) -> None:
        self.logs = logs
        self.stream = f"{job_name}/algo-1-{int(time.time())}"
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=TRAINING_LOG_GROUP)
        logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=self.stream)
        self.lines: list[str] = []

    def write(self, *lines: str) -> None:
        """Append lines to the stream."""
        if not lines:
            return
        stamp = int(time.time() * 1000)
        self.logs.put_log_events(
            logGroupName=TRAINING_LOG_GROUP, logStreamName=self.stream,
            logEvents=[{"timestamp": stamp, "message": line} for line in lines])
        self.lines += lines


def read_channel(s3: Any, channel: dict[str, Any], folder: Path) -> Path:
    """Fetch an augmented-manifest channel's records in order; write a local manifest.

    Returns:
        A JSON Lines manifest of the fetched images (``file://`` source-refs), in order.

    Raises:
        AlgorithmError: the manifest or an image cannot be read, or a record lacks an
            attribute.
    """
    from pcamflow.sagemaker.s3 import S3Uri

    name = channel["ChannelName"]
    source = channel["DataSource"]["S3DataSource"]
    if source.get("S3DataType") != "AugmentedManifestFile":
        raise AlgorithmError(f"Channel {name}: local mode reads augmented manifests only "
                             f"(S3DataType {source.get('S3DataType')})")
    ref_key, label_key = source["AttributeNames"]
    manifest = S3Uri.parse(source["S3Uri"])
    try:
        body = s3.get_object(Bucket=manifest.bucket, Key=manifest.key)["Body"].read()
    except Exception as error:  # botocore ClientError: NoSuchKey, AccessDenied
        raise AlgorithmError(f"Unable to read the manifest file {manifest} of channel "
                             f"{name}: {error}") from None
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for number, text in enumerate(body.decode("utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            ref, label = str(record[ref_key]), record[label_key]
        except (ValueError, KeyError, TypeError):
            raise AlgorithmError(f"{manifest} line {number}: not a JSON object with "
                                 f"{ref_key!r} and {label_key!r}") from None
        location = S3Uri.parse(ref)
        try:
            data = s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
        except Exception as error:  # botocore ClientError
            raise AlgorithmError(f"Unable to download {ref} (channel {name}, {manifest} line "
                                 f"{number}): {error}") from None
        path = folder / f"{len(lines):07d}{Path(location.key).suffix or '.img'}"
        path.write_bytes(data)
        lines.append(json.dumps({"source-ref": path.resolve().as_uri(), "class": str(label)}))
    if not lines:
        raise AlgorithmError(f"Channel {name}: the manifest {manifest} has no records")
    out = folder / f"{name}.manifest"
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return out


def run_training_job(emulator: Any, job: Job, *, on_epoch: EpochHook | None = None) -> None:
    """Run ``job`` to its end; its record says how it ended."""
    job.move("InProgress", "Starting", "Preparing the instances for training")
    job_log = JobLog(emulator.logs, job.name)
    try:
        _train(emulator, job, job_log, on_epoch)
    except EarlyStop:
        job.move("Stopped", "Stopped", "Training job stopped early")
    except _StopRequested:
        job.move("Stopped", "Stopped", "Training job stopped")
    except AlgorithmError as error:
        job_log.write(error.reason)
        job.fail(error.reason)
    except Exception as error:  # the algorithm itself failed: say so as SageMaker does
        log.exception("training job %s failed", job.name)
        reason = f"AlgorithmError: {type(error).__name__}: {error}"
        job_log.write(reason)
        job.fail(reason)
    finally:
        history = parse_metric_lines("\n".join(job_log.lines))
        if history:
            last: dict[str, float] = {}
            for epoch in history:
                last.update({k: float(v) for k, v in epoch.items() if ":" in k})
            job.extra["final_metrics"] = [{"MetricName": k, "Value": v, "Timestamp": now()}
                                          for k, v in sorted(last.items())]


class _StopRequested(Exception):
    pass


def _train(emulator: Any, job: Job, job_log: JobLog, on_epoch: EpochHook | None) -> None:
    from pcamflow.artifacts import Manifests
    from pcamflow.errors import DataError, HyperparameterError, ImageError
    from pcamflow.hyperparameters import LocalExtensions
    from pcamflow.local.training.trainer import train_model

    request = job.request
    hp, warnings = check_algorithm(request, request.get("HyperParameters", {}))
    for warning in warnings:
        emulator.warn(f"training job {job.name}: {warning}")
        job_log.write(f"[WARNING] {warning}")
    folder = emulator.work_dir / "training" / job.name
    job.move(secondary="Downloading", message="Reading the channels in Pipe mode")
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    local = {split: str(read_channel(emulator.s3, channels[name], folder / name))
             for split, name in (("train", "train"), ("valid", "validation"))}
    job.move(secondary="Training", message="Training image download completed. Training in "
                                           "progress.")

    def epoch_done(epoch: int, metrics: dict[str, float]) -> None:
        lines = [metric_line(epoch, "Train", "accuracy", metrics["train:accuracy"])]
        if "train:cross_entropy" in metrics:
            lines.append(metric_line(epoch, "Train", "cross-entropy",
                                     metrics["train:cross_entropy"]))
        lines.append(metric_line(epoch, "Validation", "accuracy",
                                 metrics["validation:accuracy"]))
        job_log.write(*lines)
        job.modified = now()
        if job.stop_requested:
            raise _StopRequested
        if on_epoch is not None:
            on_epoch(job, epoch, metrics)

    try:
        outcome = train_model(
            Manifests(manifests=local), hp, LocalExtensions(num_workers=0),
            folder / "model", seed=0, epoch_callback=epoch_done, progress=emulator.progress,
        )
    except (DataError, ImageError, HyperparameterError) as error:
        raise AlgorithmError(str(error)) from None
    job.move(secondary="Uploading", message="Uploading generated training model")
    output = request["OutputDataConfig"]
    key_id = output.get("KmsKeyId")
    extra = ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_id} if key_id
             else {"ServerSideEncryption": "AES256"})
    from pcamflow.sagemaker.s3 import S3Uri

    target = S3Uri.parse(output["S3OutputPath"]).join(job.name, "output", "model.tar.gz")
    emulator.s3.upload_file(str(outcome.archive), target.bucket, target.key, ExtraArgs=extra)
    job.move("Completed", "Completed", "Training job completed")
