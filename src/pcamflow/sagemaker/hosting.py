"""Requests of the inference side: models, batch transform, endpoints and their autoscaling.

Pure functions of the settings, like :mod:`pcamflow.sagemaker.requests` (training and tuning),
so that ``pcamflow plan`` prints exactly what the evaluator and deployer send.
"""

from __future__ import annotations

from typing import Any

from pcamflow.config import AwsSettings
from pcamflow.errors import ConfigError
from pcamflow.sagemaker.algorithm import BATCH_ACCEPT, has_instance_storage
from pcamflow.sagemaker.requests import Resolved, tags, vpc_config

__all__ = [
    "endpoint_config_request",
    "endpoint_request",
    "model_request",
    "scaling_requests",
    "scaling_resource_id",
    "transform_job_request",
]


def model_request(
    name: str, model_uri: str, aws: AwsSettings, resolved: Resolved
) -> dict[str, Any]:
    """``CreateModel``: the algorithm's inference image with the trained ``model.tar.gz``."""
    request: dict[str, Any] = {
        "ModelName": name,
        "PrimaryContainer": {"Image": resolved.image_uri, "ModelDataUrl": model_uri},
        "ExecutionRoleArn": resolved.role_arn,
    }
    vpc = vpc_config(aws)
    if vpc:
        request["VpcConfig"] = vpc
    if aws.tags:
        request["Tags"] = tags(aws)
    return request


def transform_job_request(
    name: str,
    model_name: str,
    input_manifest_uri: str,
    output_uri: str,
    aws: AwsSettings,
    resolved: Resolved,
) -> dict[str, Any]:
    """``CreateTransformJob``: one image per request, a JSON Lines record of probabilities back.

    The input is an S3 *manifest file* listing the images to score, so exactly the test
    manifest's images are scored; each answer is an object ``<relative key>.out`` under the
    output path holding ``{"prediction": [...]}``, the algorithm's documented batch answer for
    ``Accept: application/jsonlines``.
    """
    resources: dict[str, Any] = {
        "InstanceType": aws.evaluation.transform_instance_type,
        "InstanceCount": aws.evaluation.transform_instance_count,
    }
    output: dict[str, Any] = {"S3OutputPath": output_uri, "Accept": BATCH_ACCEPT}
    if resolved.kms_key_id:
        output["KmsKeyId"] = resolved.kms_key_id
        # TransformResources: no VolumeKmsKeyId on instance types with local NVMe storage
        if not has_instance_storage(aws.evaluation.transform_instance_type):
            resources["VolumeKmsKeyId"] = resolved.kms_key_id
    request: dict[str, Any] = {
        "TransformJobName": name,
        "ModelName": model_name,
        "MaxPayloadInMB": 6,
        "BatchStrategy": "SingleRecord",
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": input_manifest_uri}
            },
            "ContentType": "application/x-image",
            "CompressionType": "None",
            "SplitType": "None",
        },
        "TransformOutput": output,
        "TransformResources": resources,
    }
    if aws.tags:
        request["Tags"] = tags(aws)
    return request


def endpoint_config_request(
    name: str,
    model_name: str,
    instance_type: str,
    instance_count: int,
    aws: AwsSettings,
    resolved: Resolved,
) -> dict[str, Any]:
    """``CreateEndpointConfig``: one variant, optional data capture, KMS-encrypted volume.

    ``KmsKeyId`` is left out on an instance type with local NVMe storage, where AWS refuses it.
    """
    request: dict[str, Any] = {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": model_name,
                "InstanceType": instance_type,
                "InitialInstanceCount": instance_count,
                "InitialVariantWeight": 1.0,
            }
        ],
    }
    if aws.endpoint.data_capture_s3_uri:
        capture: dict[str, Any] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": aws.endpoint.data_capture_percent,
            "DestinationS3Uri": aws.endpoint.data_capture_s3_uri,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        }
        if resolved.kms_key_id:
            capture["KmsKeyId"] = resolved.kms_key_id
        request["DataCaptureConfig"] = capture
    if resolved.kms_key_id and not has_instance_storage(instance_type):
        request["KmsKeyId"] = resolved.kms_key_id
    if aws.tags:
        request["Tags"] = tags(aws)
    return request


def endpoint_request(name: str, config_name: str, aws: AwsSettings) -> dict[str, Any]:
    """``CreateEndpoint``."""
    request: dict[str, Any] = {"EndpointName": name, "EndpointConfigName": config_name}
    if aws.tags:
        request["Tags"] = tags(aws)
    return request


def scaling_resource_id(endpoint_name: str) -> str:
    """Application Auto Scaling's id of the endpoint's variant."""
    return f"endpoint/{endpoint_name}/variant/AllTraffic"


def scaling_requests(
    endpoint_name: str, min_instances: int, aws: AwsSettings
) -> list[tuple[str, dict[str, Any]]]:
    """Application Auto Scaling's ``RegisterScalableTarget`` and ``PutScalingPolicy``.

    Empty when ``aws.endpoint.autoscaling_max_instances`` is not set.
    """
    most = aws.endpoint.autoscaling_max_instances
    if most is None:
        return []
    if most < min_instances:
        raise ConfigError(
            f"aws.endpoint.autoscaling_max_instances: {most} is less than "
            f"deploy.initial_instance_count ({min_instances})"
        )
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": scaling_resource_id(endpoint_name),
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
    }
    policy = {
        **target,
        "PolicyName": f"{endpoint_name}-invocations",
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": aws.endpoint.autoscaling_target_invocations,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
            },
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    }
    register = {**target, "MinCapacity": min_instances, "MaxCapacity": most}
    return [("RegisterScalableTarget", register), ("PutScalingPolicy", policy)]
