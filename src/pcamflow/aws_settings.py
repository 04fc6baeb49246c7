"""``[aws]``: the SageMaker backend's settings, account-wide and in four groups.

``[aws]`` holds what concerns the whole account (region, role, bucket, encryption, tags,
retries, prices); ``[aws.network]``, ``[aws.training]``, ``[aws.evaluation]`` and
``[aws.endpoint]`` hold the rest, by the stage that reads it. Files written before the groups
set their keys in ``[aws]`` itself (``[aws] instance_type = ...``): such a key is still read,
into its group, with a :class:`FutureWarning` and a log line that name its new place; a key
given in both places is an error. :mod:`pcamflow.config` re-exports these classes.
"""

from __future__ import annotations

import logging
import typing
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from attrs.validators import deep_mapping, ge, gt, in_, le, optional

from pcamflow._structure import READING, converter, structure_attrs_fn
from pcamflow._validation import FINITE, INTEGER, NUMBER, STRING, checked
from pcamflow.errors import ConfigError

__all__ = [
    "MOVED_AWS_KEYS",
    "AwsEndpointSettings",
    "AwsEvaluationSettings",
    "AwsNetworkSettings",
    "AwsSettings",
    "AwsTrainingSettings",
]

log = logging.getLogger(__name__)

EvaluateVia = Literal["transform", "endpoint"]
EVALUATE_VIA: tuple[str, ...] = typing.get_args(EvaluateVia)

_COUNT = [INTEGER, ge(1)]
_AMOUNT = [NUMBER, FINITE, ge(0)]  # seconds, hours, dollars
_checked = checked(ConfigError)


def _s3_uri(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """An ``s3://`` URI."""
    if not value.startswith("s3://"):
        raise ConfigError(f"{attribute.name}: {value!r} is not an s3:// URI")


def _bucket_name(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """A bare bucket name (no ``s3://``, no ``/``)."""
    if value.startswith("s3://") or "/" in value:
        raise ConfigError(f"bucket: {value!r} must be a bare bucket name (no s3://, no /)")


@attrs.frozen(kw_only=True, field_transformer=_checked)
class AwsNetworkSettings:
    """``[aws.network]``: the VPC that jobs and endpoints run in (both lists, or neither).

    Attributes:
        subnets: VPC subnets of jobs and endpoints.
        security_group_ids: VPC security groups of jobs and endpoints.
    """

    subnets: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    security_group_ids: tuple[str, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen(kw_only=True, field_transformer=_checked)
class AwsTrainingSettings:
    """``[aws.training]``: the training jobs (tuning trials included).

    Attributes:
        instance_type: training instance type.
        instance_count: training instances.
        volume_size_gb: training volume size.
        max_runtime_s: a training job's limit.
        estimated_runtime_s: the expected length of one training job, for the cost
            estimate (None: ``max_runtime_s``, the most it can cost).
        use_spot: managed spot training.
        max_wait_s: spot training's limit, waiting included.
        checkpoint_s3_uri: where spot training checkpoints.
    """

    instance_type: str = "ml.p3.2xlarge"
    instance_count: int = attrs.field(default=1, validator=_COUNT)
    volume_size_gb: int = attrs.field(default=50, validator=_COUNT)
    max_runtime_s: int = attrs.field(default=86400, validator=_COUNT)
    estimated_runtime_s: int | None = attrs.field(default=None, validator=optional(_COUNT))
    use_spot: bool = False
    max_wait_s: int | None = attrs.field(default=None, validator=optional(_COUNT))
    checkpoint_s3_uri: str | None = attrs.field(default=None, validator=optional(_s3_uri))

    def __attrs_post_init__(self) -> None:
        if self.use_spot and self.max_wait_s is not None and self.max_wait_s < self.max_runtime_s:
            raise ConfigError(
                f"max_wait_s: {self.max_wait_s} is less than max_runtime_s "
                f"({self.max_runtime_s}); spot training's wait includes the run"
            )


@attrs.frozen(kw_only=True, field_transformer=_checked)
class AwsEvaluationSettings:
    """``[aws.evaluation]``: how the SageMaker evaluator scores the model.

    Attributes:
        transform_instance_type: the instance type the model is scored on (the batch
            transform's, or the temporary endpoint's).
        transform_instance_count: instances of the batch transform or temporary endpoint.
        evaluate_via: ``transform`` (a batch transform job) or ``endpoint`` (a temporary
            endpoint of the trained model, deleted after the evaluation).
    """

    transform_instance_type: str = "ml.m5.xlarge"
    transform_instance_count: int = attrs.field(default=1, validator=_COUNT)
    evaluate_via: EvaluateVia = attrs.field(default="transform", validator=in_(EVALUATE_VIA))


@attrs.frozen(kw_only=True, field_transformer=_checked)
class AwsEndpointSettings:
    """``[aws.endpoint]``: the real-time endpoint beyond ``[deploy]``: capture, scaling, cost.

    Attributes:
        data_capture_s3_uri: capture endpoint requests and answers here (None: off).
        data_capture_percent: the share of requests captured.
        autoscaling_max_instances: scale the endpoint up to this many instances (None: off).
        autoscaling_target_invocations: invocations per instance per minute to scale at.
        endpoint_hours: hours an endpoint is assumed to run, for the cost estimate.
    """

    data_capture_s3_uri: str | None = attrs.field(default=None, validator=optional(_s3_uri))
    data_capture_percent: int = attrs.field(default=100, validator=[INTEGER, ge(1), le(100)])
    autoscaling_max_instances: int | None = attrs.field(default=None, validator=optional(_COUNT))
    autoscaling_target_invocations: float = attrs.field(
        default=100.0, validator=[NUMBER, FINITE, gt(0)]
    )
    endpoint_hours: float = attrs.field(default=24.0, validator=_AMOUNT)


@attrs.frozen(kw_only=True, field_transformer=_checked)
class AwsSettings:
    """``[aws]``: account-wide settings of the SageMaker backend, and its four groups.

    Attributes:
        region: the AWS region (None: the SDK's default).
        profile: the AWS credentials profile (None: the default credential chain).
        role_arn: the SageMaker execution role (None: the role of the SageMaker notebook or
            Studio session this runs in).
        bucket: the S3 bucket (None: SageMaker's default bucket, ``sagemaker-<region>-<account>``).
        prefix: the key prefix of everything pcamflow writes.
        kms_key_id: KMS key for S3 objects and job volumes (None: SSE-S3).
        tags: tags put on every resource.
        max_attempts: attempts per AWS request, throttling retried (botocore's standard mode).
        upload_workers: S3 uploads at once.
        poll_s: seconds between status checks of a running job or endpoint.
        prices: instance type -> USD per hour, for ``pcamflow plan``'s estimate.
        prices_region: the region ``prices`` (and ``request_prices``) are for; the plan says
            so, and notes a region other than the run's (None: not stated).
        request_prices: ``service:Operation`` -> USD per 1,000 requests (``s3:PutObject``);
            unset ones are S3's and KMS's us-east-1 list prices, and the plan says so.
        network: ``[aws.network]``.
        training: ``[aws.training]``.
        evaluation: ``[aws.evaluation]``.
        endpoint: ``[aws.endpoint]``.
    """

    region: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    bucket: str | None = attrs.field(default=None, validator=optional(_bucket_name))
    prefix: str = "pcamflow"
    kms_key_id: str | None = None
    tags: dict[str, str] = attrs.field(factory=dict)
    max_attempts: int = attrs.field(default=8, validator=_COUNT)
    upload_workers: int = attrs.field(default=16, validator=[INTEGER, ge(1), le(128)])
    poll_s: float = attrs.field(default=30.0, validator=_AMOUNT)
    prices: dict[str, float] = attrs.field(
        factory=dict, validator=deep_mapping(STRING, [NUMBER, FINITE, ge(0)])
    )
    prices_region: str | None = None
    request_prices: dict[str, float] = attrs.field(
        factory=dict, validator=deep_mapping(STRING, [NUMBER, FINITE, ge(0)])
    )
    network: AwsNetworkSettings = attrs.field(factory=AwsNetworkSettings)
    training: AwsTrainingSettings = attrs.field(factory=AwsTrainingSettings)
    evaluation: AwsEvaluationSettings = attrs.field(factory=AwsEvaluationSettings)
    endpoint: AwsEndpointSettings = attrs.field(factory=AwsEndpointSettings)


_AWS_GROUPS = {
    f.name: f.type for f in attrs.fields(attrs.resolve_types(AwsSettings)) if attrs.has(f.type)
}
MOVED_AWS_KEYS = {f.name: group for group, cls in _AWS_GROUPS.items() for f in attrs.fields(cls)}
"""Keys that ``[aws]`` held directly before they moved into a group: key -> group."""


def _structure_aws(data: Any, cls: type) -> AwsSettings:
    """``[aws]``, reading keys from their old flat places with a deprecation warning."""
    moved = [k for k in data if k in MOVED_AWS_KEYS] if isinstance(data, Mapping) else []
    if moved:
        data = dict(data)
    for key in moved:
        group = MOVED_AWS_KEYS[key]
        table = data.get(group, {})
        if not isinstance(table, Mapping):
            continue  # reported as the group's own error
        if key in table:
            raise ConfigError(
                f"{key}: given twice, here and as aws.{group}.{key}; keep aws.{group}.{key} "
                f"(aws.{key} is its old place)"
            )
        data[group] = {**table, key: data.pop(key)}
        message = (
            f"aws.{key} has moved to aws.{group}.{key}: write it as {key} = ... under "
            f"[aws.{group}]; the old place will stop working in a later version"
        )
        source = READING.get()
        # attributed to the settings file, the place to change, not to pcamflow's code
        warnings.warn_explicit(
            message, FutureWarning, filename=source or "<settings>", lineno=0,
            module=__name__,
        )
        log.warning("%s%s", f"{source}: " if source else "", message)
    return typing.cast(AwsSettings, _structure_aws_fields(data, cls))


_structure_aws_fields = structure_attrs_fn(AwsSettings)
converter.register_structure_hook(AwsSettings, _structure_aws)
