"""The SageMaker API requests of a run, as plain dicts in the API's own shape.

Every request the SageMaker stages send is built here (training and tuning) or in
:mod:`pcamflow.sagemaker.hosting` (models, transform, endpoints), by pure functions of the
settings and of the values resolved at run time (:class:`Resolved`), so that ``pcamflow plan``
prints and checks exactly what a run sends. :func:`check_request` validates a request against
botocore's service model; the stages send them through sagemaker-core's resource classes.

The training channels are the ones DESIGN.md fixes for Pipe mode: augmented manifests
(``S3DataType=AugmentedManifestFile``, ``AttributeNames=["source-ref", "class"]``) wrapped in
RecordIO (``RecordWrapperType=RecordIO``, ``ContentType=application/x-recordio``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import attrs

from pcamflow.config import AwsSettings, TuneSettings
from pcamflow.errors import ConfigError
from pcamflow.sagemaker.algorithm import has_instance_storage

__all__ = [
    "Resolved",
    "channels",
    "check_request",
    "grid_size",
    "job_name",
    "tags",
    "training_job_request",
    "tuning_job_request",
    "vpc_config",
]

ALGORITHM = "image-classification"
OBJECTIVE = "validation:accuracy"
CHANNEL_NAMES = {"train": "train", "valid": "validation"}
"""Manifest split -> the algorithm's channel name."""
_NAME_LIMITS = {"tune": 32}  # a tuning job's name is at most 32 characters; others 63


@attrs.frozen
class Resolved:
    """Values a run resolves once from AWS: region, execution role, bucket and algorithm image.

    Attributes:
        region: the AWS region.
        role_arn: the SageMaker execution role.
        bucket: the S3 bucket.
        image_uri: the Image Classification algorithm's image for the region.
        kms_key_id: ``aws.kms_key_id`` as a key ARN (an alias resolved through KMS, since
            ``VolumeKmsKeyId`` takes a key ID or key ARN only), or None.
    """

    region: str
    role_arn: str
    bucket: str
    image_uri: str
    kms_key_id: str | None = None


def algorithm_image(region: str) -> str:
    """The built-in Image Classification algorithm's image URI, from the SDK's lookup."""
    import logging

    from sagemaker.core import image_uris

    # the lookup logs its defaulting choices at INFO; they say nothing to a pcamflow user
    quiet = logging.getLogger(image_uris.__name__)
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return str(image_uris.retrieve(ALGORITHM, region))
    except ValueError as error:
        raise ConfigError(f"aws.region: {region!r} has no {ALGORITHM} image ({error})") from None
    finally:
        quiet.setLevel(level)


def job_name(prefix: str, kind: str, when: dt.datetime | None = None) -> str:
    """A unique-in-time SageMaker name: ``<prefix>-<kind>-<yymmdd-hhmmss-mmm>``, within limits.

    The milliseconds keep two jobs of one run apart when the second follows the first within a
    second (a re-run right after a stopped job), which AWS refuses as ``ResourceInUse``.
    """
    when = when or dt.datetime.now(dt.timezone.utc)
    stamp = f"{when:%y%m%d-%H%M%S}-{when.microsecond // 1000:03d}"
    base = re.sub(r"[^a-zA-Z0-9]+", "-", prefix).strip("-") or "pcamflow"
    limit = _NAME_LIMITS.get(kind, 63)
    room = limit - len(kind) - len(stamp) - 2
    return f"{base[:room].rstrip('-')}-{kind}-{stamp}"


def tags(aws: AwsSettings) -> list[dict[str, str]]:
    """``aws.tags`` as the API's ``Tags`` list."""
    return [{"Key": key, "Value": value} for key, value in sorted(aws.tags.items())]


def vpc_config(aws: AwsSettings) -> dict[str, list[str]] | None:
    """``VpcConfig`` from ``[aws.network]`` (None: no VPC)."""
    network = aws.network
    if not network.subnets and not network.security_group_ids:
        return None
    if not (network.subnets and network.security_group_ids):
        raise ConfigError(
            "aws.network.subnets/aws.network.security_group_ids: a VPC needs both subnets and "
            "security groups"
        )
    return {"SecurityGroupIds": list(network.security_group_ids), "Subnets": list(network.subnets)}


def channels(manifests: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Pipe-mode augmented-manifest channels ``train`` and ``validation``.

    Args:
        manifests: split (``train``, ``valid``) -> the manifest's ``s3://`` URI.
    """
    out = []
    for split, channel in CHANNEL_NAMES.items():
        uri = manifests.get(split)
        if not uri or not uri.startswith("s3://"):
            raise ConfigError(
                f"manifests.{split}: the SageMaker backend needs the manifest in S3, got "
                f"{uri!r}; set pipeline.manifest_builder = 'sagemaker'"
            )
        out.append({
            "ChannelName": channel,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "AugmentedManifestFile",
                    "S3Uri": uri,
                    "S3DataDistributionType": "FullyReplicated",
                    "AttributeNames": ["source-ref", "class"],
                }
            },
            "ContentType": "application/x-recordio",
            "CompressionType": "None",
            "RecordWrapperType": "RecordIO",
            "InputMode": "Pipe",
        })
    return out


def _training_parts(aws: AwsSettings, resolved: Resolved, output_uri: str) -> dict[str, Any]:
    """What a training job and a tuning job's training definition share."""
    resources: dict[str, Any] = {
        "InstanceType": aws.training.instance_type,
        "InstanceCount": aws.training.instance_count,
        "VolumeSizeInGB": aws.training.volume_size_gb,
    }
    output: dict[str, Any] = {"S3OutputPath": output_uri}
    if resolved.kms_key_id:
        output["KmsKeyId"] = resolved.kms_key_id
        # ResourceConfig: no VolumeKmsKeyId on instance types with local NVMe storage
        if not has_instance_storage(aws.training.instance_type):
            resources["VolumeKmsKeyId"] = resolved.kms_key_id
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": aws.training.max_runtime_s}
    parts: dict[str, Any] = {
        "AlgorithmSpecification": {
            "TrainingImage": resolved.image_uri, "TrainingInputMode": "Pipe"
        },
        "RoleArn": resolved.role_arn,
        "OutputDataConfig": output,
        "ResourceConfig": resources,
        "StoppingCondition": stopping,
    }
    if aws.training.use_spot:
        stopping["MaxWaitTimeInSeconds"] = aws.training.max_wait_s or aws.training.max_runtime_s
        parts["EnableManagedSpotTraining"] = True
        if aws.training.checkpoint_s3_uri:
            parts["CheckpointConfig"] = {"S3Uri": aws.training.checkpoint_s3_uri}
    vpc = vpc_config(aws)
    if vpc:
        parts["VpcConfig"] = vpc
    return parts


def training_job_request(
    name: str,
    hyperparameters: Mapping[str, str],
    manifests: Mapping[str, str],
    output_uri: str,
    aws: AwsSettings,
    resolved: Resolved,
) -> dict[str, Any]:
    """``CreateTrainingJob``: the built-in algorithm in Pipe mode on the two manifests."""
    request = {
        "TrainingJobName": name,
        "HyperParameters": dict(hyperparameters),
        "InputDataConfig": channels(manifests),
        **_training_parts(aws, resolved, output_uri),
    }
    if aws.tags:
        request["Tags"] = tags(aws)
    return request


def _parameter_ranges(tune: TuneSettings) -> dict[str, list[dict[str, Any]]]:
    ranges: dict[str, list[dict[str, Any]]] = {
        "ContinuousParameterRanges": [],
        "IntegerParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    for name, rng in sorted(tune.ranges.items()):
        if tune.strategy == "Grid" and rng.type == "integer":
            # SageMaker's grid search takes categorical ranges only: list the integers
            low, high = int(rng.min_value or 0), int(rng.max_value or 0)
            ranges["CategoricalParameterRanges"].append(
                {"Name": name, "Values": [str(v) for v in range(low, high + 1)]}
            )
            continue
        kind = {"continuous": "Continuous", "integer": "Integer", "categorical": "Categorical"}
        ranges[f"{kind[rng.type]}ParameterRanges"].append(rng.to_sagemaker(name))
    return {key: value for key, value in ranges.items() if value}


def grid_size(tune: TuneSettings) -> int:
    """How many training jobs a Grid tuning job runs: every combination of its categories.

    SageMaker computes it so ("Only categorical parameters are supported when using the grid
    search strategy ... the total number of distinct categorical combinations possible",
    https://docs.aws.amazon.com/sagemaker/latest/dg/automatic-model-tuning-how-it-works.html);
    integer ranges are sent as the categories of their whole numbers.
    """
    size = 1
    for entry in _parameter_ranges(tune).get("CategoricalParameterRanges", []):
        size *= len(entry["Values"])
    return size


def tuning_job_request(
    name: str,
    tune: TuneSettings,
    static_hyperparameters: Mapping[str, str],
    manifests: Mapping[str, str],
    output_uri: str,
    aws: AwsSettings,
    resolved: Resolved,
) -> dict[str, Any]:
    """``CreateHyperParameterTuningJob`` from ``[tune]``: strategy, limits, ranges, warm start.

    The tuned names are left out of the static hyperparameters; Hyperband uses its own early
    stopping (``MaxResource`` is the number of epochs), so ``TrainingJobEarlyStoppingType`` is
    ``Off`` with it.
    """
    if not tune.ranges:
        raise ConfigError("tune.ranges: a tuning job needs at least one range")
    limits: dict[str, int] = {"MaxParallelTrainingJobs": tune.max_parallel_jobs}
    if tune.strategy != "Grid":  # a grid's size fixes the number of jobs
        limits["MaxNumberOfTrainingJobs"] = tune.max_jobs
    config: dict[str, Any] = {
        "Strategy": tune.strategy,
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": OBJECTIVE},
        "ResourceLimits": limits,
        "ParameterRanges": _parameter_ranges(tune),
        "TrainingJobEarlyStoppingType": (
            "Off" if tune.strategy == "Hyperband" else tune.early_stopping
        ),
    }
    static = {k: v for k, v in static_hyperparameters.items() if k not in tune.ranges}
    if tune.strategy == "Hyperband":
        epochs = int(static.get("epochs", "1"))
        config["StrategyConfig"] = {
            "HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": max(1, epochs)}
        }
    definition = {
        "StaticHyperParameters": static,
        "InputDataConfig": channels(manifests),
        **_training_parts(aws, resolved, output_uri),
    }
    request: dict[str, Any] = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
    }
    if tune.warm_start_from:
        request["WarmStartConfig"] = {
            "ParentHyperParameterTuningJobs": [
                {"HyperParameterTuningJobName": tune.warm_start_from}
            ],
            "WarmStartType": "IdenticalDataAndAlgorithm",
        }
    if aws.tags:
        request["Tags"] = tags(aws)
    return request


def check_request(service: str, operation: str, params: Mapping[str, Any]) -> None:
    """Validate ``params`` against botocore's model of ``service``'s ``operation``.

    Raises:
        ConfigError: the request does not fit the model; the message lists every problem.
    """
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model(service)
    try:
        shape = model.operation_model(operation).input_shape
    except Exception as error:  # botocore's OperationNotFoundError
        raise ConfigError(f"{service} has no operation {operation!r} ({error})") from None
    report = ParamValidator().validate(dict(params), shape)
    if report.has_errors():
        raise ConfigError(
            f"{service} {operation}: the request does not fit the API model:\n"
            + ParamValidationError(report=report.generate_report()).kwargs["report"]
        )
