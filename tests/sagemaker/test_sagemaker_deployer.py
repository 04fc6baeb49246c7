"""The SageMaker deployer against moto: model, config, endpoint, autoscaling; and teardown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sm_helpers import BUCKET, ROLE, context_for, kms_alias, patch_answer, settings_for

from pcamflow.artifacts import Endpoint, ModelArtifact
from pcamflow.errors import AwsError, ConfigError, JobFailedError
from pcamflow.sagemaker.deployer import SageMakerDeployer, teardown_endpoint

MODEL = f"s3://{BUCKET}/pcamflow/run/train/output/job/output/model.tar.gz"


def _deploy(aws: Any, tmp_path: Path, kms_key_id: str | None = None,
            instance_type: str = "ml.c5.large", **endpoint: Any) -> tuple[Endpoint, Any]:
    settings = settings_for(
        tmp_path, deploy={"name": "pcam-detector", "instance_type": instance_type,
                          "initial_instance_count": 1},
        aws={"tags": {"project": "pcam"}, "endpoint": endpoint,
             **({"kms_key_id": kms_key_id} if kms_key_id else {})},
    )
    context = context_for(settings, aws, "deploy", {"train": ModelArtifact(uri=MODEL)})
    deployer = SageMakerDeployer(progress=False)
    deployer.validate(context)
    return deployer.run(context), context


def test_endpoint_create_wait_and_teardown(aws: Any, tmp_path: Path) -> None:
    key_arn = kms_alias(aws)
    endpoint, _ = _deploy(
        aws, tmp_path, kms_key_id="alias/pcam",
        data_capture_s3_uri=f"s3://{BUCKET}/capture", data_capture_percent=20,
        autoscaling_max_instances=3, autoscaling_target_invocations=50.0,
    )
    assert endpoint.backend == "sagemaker" and endpoint.name == "pcam-detector"
    sm = aws.sagemaker
    described = sm.describe_endpoint(EndpointName="pcam-detector")
    assert described["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint.resources["endpoint_config"])
    variant = config["ProductionVariants"][0]
    assert (variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        endpoint.resources["model"], "ml.c5.large", 1)
    assert config["KmsKeyId"] == key_arn
    capture = config["DataCaptureConfig"]
    assert capture["DestinationS3Uri"] == f"s3://{BUCKET}/capture"
    assert capture["InitialSamplingPercentage"] == 20
    model = sm.describe_model(ModelName=endpoint.resources["model"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == MODEL
    assert model["PrimaryContainer"]["Image"].endswith("/image-classification:1")
    assert model["ExecutionRoleArn"] == ROLE
    scaling = aws.client("application-autoscaling")
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [
        ("endpoint/pcam-detector/variant/AllTraffic", 1, 3)]
    policy = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 50.0

    deleted = teardown_endpoint(endpoint, aws, wait=False)
    assert [d.split()[0] for d in deleted] == ["autoscaling", "endpoint", "endpoint", "model"]
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    # a second teardown finds everything gone and says so without failing
    assert teardown_endpoint(endpoint, aws, wait=False) == []


def test_no_volume_key_on_an_instance_with_local_storage(aws: Any, tmp_path: Path) -> None:
    kms_alias(aws)
    endpoint, _ = _deploy(aws, tmp_path, kms_key_id="alias/pcam", instance_type="ml.c5d.large")
    config = aws.sagemaker.describe_endpoint_config(
        EndpointConfigName=endpoint.resources["endpoint_config"])
    assert "KmsKeyId" not in config  # CreateEndpointConfig fails with it on such a type


def test_a_deploy_failing_after_the_scalable_target_removes_it_too(
    aws: Any, tmp_path: Path
) -> None:
    from botocore.exceptions import ClientError

    def refuse(**kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDeniedException",
                                     "Message": "not allowed to put scaling policies"}},
                          "PutScalingPolicy")

    scaling = aws.client("application-autoscaling")
    scaling.meta.events.register("before-call.application-autoscaling.PutScalingPolicy", refuse)
    with pytest.raises(AwsError, match="PutScalingPolicy failed"):
        _deploy(aws, tmp_path, autoscaling_max_instances=2)
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert targets == []
    assert aws.sagemaker.list_endpoints()["Endpoints"] == []
    assert aws.sagemaker.list_models()["Models"] == []


def test_a_failed_endpoint_raises_and_leaves_nothing_billing(aws: Any, tmp_path: Path) -> None:
    patch_answer(aws.session, "DescribeEndpoint",
                 lambda a: a.update(EndpointStatus="Failed", FailureReason="no capacity"))
    with pytest.raises(JobFailedError, match="no capacity"):
        _deploy(aws, tmp_path)
    assert aws.sagemaker.list_endpoints()["Endpoints"] == []
    assert aws.sagemaker.list_models()["Models"] == []


def test_autoscaling_below_the_initial_count_is_refused(aws: Any, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, deploy={"initial_instance_count": 2},
                            aws={"endpoint": {"autoscaling_max_instances": 1}})
    context = context_for(settings, aws, "deploy", {"train": ModelArtifact(uri=MODEL)})
    with pytest.raises(ConfigError, match="autoscaling_max_instances"):
        SageMakerDeployer(progress=False).validate(context)


def test_a_name_clash_fails_without_touching_the_live_endpoint(aws: Any, tmp_path: Path) -> None:
    first, _ = _deploy(aws, tmp_path)
    with pytest.raises(AwsError, match="pcam-detector already exists"):
        _deploy(aws, tmp_path)
    live = aws.sagemaker.describe_endpoint(EndpointName="pcam-detector")
    assert live["EndpointConfigName"] == first.resources["endpoint_config"]
    models = [m["ModelName"] for m in aws.sagemaker.list_models()["Models"]]
    assert models == [first.resources["model"]]  # the second attempt made nothing
