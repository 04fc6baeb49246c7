"""The SageMaker deployer in local mode: model, config, a live endpoint, autoscaling; and
teardown. The endpoint answers a stock boto3 runtime client and sagemaker-core alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import (
    BUCKET,
    ROLE,
    context_for,
    kms_alias,
    patch_jpeg,
    settings_for,
    train_model_in,
)

from pcamflow.artifacts import Endpoint, ModelArtifact
from pcamflow.errors import AwsError, ConfigError
from pcamflow.sagemaker.deployer import SageMakerDeployer, teardown_endpoint


@pytest.fixture(scope="module")
def model_uri(shared_local: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model trained by a local-mode training job, shared by this module's tests."""
    return train_model_in(shared_local, tmp_path_factory.mktemp("model"))


def _deploy(clients: Any, tmp_path: Path, model_uri: str, name: str,
            kms_key_id: str | None = None, instance_type: str = "ml.c5.large",
            **endpoint: Any) -> tuple[Endpoint, Any]:
    settings = settings_for(
        tmp_path, deploy={"name": name, "instance_type": instance_type,
                          "initial_instance_count": 1},
        aws={"tags": {"project": "pcam"}, "endpoint": endpoint,
             **({"kms_key_id": kms_key_id} if kms_key_id else {})},
    )
    context = context_for(settings, clients, "deploy", {"train": ModelArtifact(uri=model_uri)})
    deployer = SageMakerDeployer(progress=False)
    deployer.validate(context)
    return deployer.run(context), context


def _stock_runtime(local: Any) -> Any:
    import boto3

    return boto3.client("sagemaker-runtime", endpoint_url=local.runtime_url,
                        region_name="eu-west-1", aws_access_key_id="any",
                        aws_secret_access_key="any")


def test_an_endpoint_serves_the_model_and_teardown_removes_everything(
    shared_local: Any, model_uri: str, tmp_path: Path
) -> None:
    clients = shared_local.clients()
    key_arn = kms_alias(clients, "alias/deploy")
    endpoint, _ = _deploy(
        clients, tmp_path, model_uri, "pcam-detector", kms_key_id="alias/deploy",
        data_capture_s3_uri=f"s3://{BUCKET}/capture", data_capture_percent=20,
        autoscaling_max_instances=3, autoscaling_target_invocations=50.0,
    )
    assert endpoint.backend == "sagemaker" and endpoint.name == "pcam-detector"
    assert endpoint.resources["local_mode"] == "true"
    sm = clients.sagemaker
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
    assert model["PrimaryContainer"]["ModelDataUrl"] == model_uri
    assert model["PrimaryContainer"]["Image"].endswith("/image-classification:1")
    assert model["ExecutionRoleArn"] == ROLE
    scaling = clients.client("application-autoscaling")
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [
        ("endpoint/pcam-detector/variant/AllTraffic", 1, 3)]
    policy = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 50.0

    # a stock boto3 runtime client gets the algorithm's answers, in both documented formats
    runtime = _stock_runtime(shared_local)
    image = patch_jpeg(1, 7)
    answer = runtime.invoke_endpoint(EndpointName="pcam-detector", Body=image,
                                     ContentType="image/jpeg", Accept="application/json")
    probabilities = json.loads(answer["Body"].read())
    assert len(probabilities) == 2 and sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    lines = runtime.invoke_endpoint(EndpointName="pcam-detector", Body=image,
                                    ContentType="image/png", Accept="application/jsonlines")
    assert lines["ContentType"] == "application/jsonlines"
    assert json.loads(lines["Body"].read()) == {"prediction": pytest.approx(probabilities)}
    # and so does sagemaker-core's Endpoint.invoke, on the session
    from sagemaker.core.resources import Endpoint as CoreEndpoint

    core = CoreEndpoint.get(endpoint_name="pcam-detector", session=clients.session,
                            region="eu-west-1")
    reply = core.invoke(body=image, content_type="application/x-image",
                        accept="application/json", session=clients.session, region="eu-west-1")
    assert json.loads(reply.body.read()) == pytest.approx(probabilities)

    deleted = teardown_endpoint(endpoint, clients, wait=False)
    assert [d.split()[0] for d in deleted] == ["autoscaling", "endpoint", "endpoint", "model"]
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    # DeleteEndpoint stopped it: the runtime says it is gone, as SageMaker's does
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName="pcam-detector", Body=image,
                                ContentType="image/jpeg")
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert "Endpoint pcam-detector of account 123456789012 not found." in str(caught.value)
    # a second teardown finds everything gone and says so without failing
    assert teardown_endpoint(endpoint, clients, wait=False) == []


def test_no_volume_key_on_an_instance_with_local_storage(
    shared_local: Any, model_uri: str, tmp_path: Path
) -> None:
    clients = shared_local.clients()
    kms_alias(clients, "alias/nvme")
    endpoint, _ = _deploy(clients, tmp_path, model_uri, "pcam-nvme", kms_key_id="alias/nvme",
                          instance_type="ml.c5d.large")
    config = clients.sagemaker.describe_endpoint_config(
        EndpointConfigName=endpoint.resources["endpoint_config"])
    assert "KmsKeyId" not in config  # CreateEndpointConfig fails with it on such a type
    teardown_endpoint(endpoint, clients, wait=False)


def test_a_deploy_failing_after_the_scalable_target_removes_it_too(
    shared_local: Any, model_uri: str, tmp_path: Path
) -> None:
    from botocore.exceptions import ClientError

    def refuse(**kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDeniedException",
                                     "Message": "not allowed to put scaling policies"}},
                          "PutScalingPolicy")

    clients = shared_local.clients()
    scaling = clients.client("application-autoscaling")
    scaling.meta.events.register("before-call.application-autoscaling.PutScalingPolicy", refuse)
    with pytest.raises(AwsError, match="PutScalingPolicy failed"):
        _deploy(clients, tmp_path, model_uri, "pcam-scaling", autoscaling_max_instances=2)
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert targets == []
    names = [e["EndpointName"] for e in clients.sagemaker.list_endpoints()["Endpoints"]]
    assert "pcam-scaling" not in names
    assert not any(m["ModelName"].startswith("pcam-scaling")
                   for m in clients.sagemaker.list_models()["Models"])


def test_autoscaling_below_the_initial_count_is_refused(aws_env: Any, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, deploy={"initial_instance_count": 2},
                            aws={"endpoint": {"autoscaling_max_instances": 1}})
    context = context_for(settings, None, "deploy", {"train": ModelArtifact(uri="s3://b/m")})
    with pytest.raises(ConfigError, match="autoscaling_max_instances"):
        SageMakerDeployer(progress=False).validate(context)


def test_a_name_clash_fails_without_touching_the_live_endpoint(
    shared_local: Any, model_uri: str, tmp_path: Path
) -> None:
    clients = shared_local.clients()
    first, _ = _deploy(clients, tmp_path, model_uri, "pcam-clash")
    with pytest.raises(AwsError, match="pcam-clash already exists"):
        _deploy(clients, tmp_path, model_uri, "pcam-clash")
    live = clients.sagemaker.describe_endpoint(EndpointName="pcam-clash")
    assert live["EndpointConfigName"] == first.resources["endpoint_config"]
    assert live["EndpointStatus"] == "InService"
    models = [m["ModelName"] for m in clients.sagemaker.list_models()["Models"]
              if m["ModelName"].startswith("pcam-clash")]
    assert models == [first.resources["model"]]  # the second attempt made nothing
    teardown_endpoint(first, clients, wait=False)
