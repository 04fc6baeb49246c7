"""SageMaker local mode itself: the documented rules it holds requests to, how it refuses them,
its transform output and runtime errors, and its stopping rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import BUCKET, REGION, ROLE, patch_jpeg, s3_manifests, train_model_in

pytest.importorskip("torch")

from botocore.exceptions import ClientError

from pcamflow.sagemaker.localmode import RULES
from pcamflow.sagemaker.localmode.tuning import hyperband_stop, median_stop
from pcamflow.sagemaker.requests import Resolved, algorithm_image, training_job_request


@pytest.fixture(scope="module")
def manifests(shared_local: Any) -> Any:
    return s3_manifests(shared_local.clients(), count=4, prefix="rules/")


@pytest.fixture(scope="module")
def model_uri(shared_local: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_model_in(shared_local, tmp_path_factory.mktemp("model"))


def _training(manifests: Any, name: str, **changes: Any) -> dict[str, Any]:
    """A CreateTrainingJob request as the backend builds it, then changed."""
    from pcamflow.aws_settings import AwsSettings

    resolved = Resolved(REGION, ROLE, BUCKET, algorithm_image(REGION))
    hp = {"num_classes": "2", "num_training_samples": "4", "num_layers": "20",
          "image_shape": "3,28,28", "epochs": "1", "mini_batch_size": "4"}
    request = training_job_request(name, hp, manifests.manifests, f"s3://{BUCKET}/out",
                                   AwsSettings(), resolved)
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = request
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return request


def _refused(call: Any, message: str) -> None:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException", error
    assert re.search(message, error["Message"]), error["Message"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"ResourceConfig.VolumeKmsKeyId": "alias/pcam"},
     r"^1 validation error detected: Value 'alias/pcam' at 'resourceConfig\.volumeKmsKeyId' "
     "failed to satisfy constraint: Member must be a KMS key ID or key ARN$"),
    ({"ResourceConfig.InstanceType": "ml.g4dn.xlarge",
      "ResourceConfig.VolumeKmsKeyId": "1234abcd-12ab-34cd-56ef-1234567890ab"},
     r"Volume KMS key can't be specified for instance type ml\.g4dn\.xlarge"),
    ({"EnableManagedSpotTraining": True, "StoppingCondition.MaxWaitTimeInSeconds": 60},
     "MaxWaitTimeInSeconds must be at least MaxRuntimeInSeconds"),
    ({"TrainingJobName": "under_score"}, "Member must satisfy regular expression pattern"),
])
def test_a_request_breaking_a_documented_api_rule_is_refused(
    shared_local: Any, manifests: Any, changes: dict[str, Any], message: str
) -> None:
    sm = shared_local.clients().sagemaker
    request = _training(manifests, "refused", **changes)
    _refused(lambda: sm.create_training_job(**request), message)


@pytest.mark.parametrize(("name", "changes", "reason"), [
    ("cpu", {"ResourceConfig.InstanceType": "ml.m5.large"},
     r"ClientError: Instance type ml\.m5\.large is not supported"),
    ("no-validation", {"InputDataConfig": "train-only"}, "missing: validation"),
    ("no-wrapper", {"InputDataConfig.0.RecordWrapperType": None},
     "RecordWrapperType must be RecordIO"),
    ("bad-depth", {"HyperParameters.num_layers": "19"},
     "ClientError: Hyperparameter validation failed: num_layers"),
    ("no-classes", {"HyperParameters.num_classes": None},
     "Missing required hyperparameter: num_classes"),
])
def test_what_the_algorithm_refuses_fails_the_job_with_a_client_error(
    shared_local: Any, manifests: Any, name: str, changes: dict[str, Any], reason: str
) -> None:
    sm = shared_local.clients().sagemaker
    if changes.get("InputDataConfig") == "train-only":
        request = _training(manifests, name)
        request["InputDataConfig"] = request["InputDataConfig"][:1]
    else:
        request = _training(manifests, name, **changes)
    sm.create_training_job(**request)
    shared_local.wait_idle()
    job = sm.describe_training_job(TrainingJobName=name)
    assert job["TrainingJobStatus"] == "Failed"
    assert re.search(reason, job["FailureReason"]), job["FailureReason"]


def test_an_inferred_rule_is_a_warning_in_the_log(shared_local: Any, manifests: Any) -> None:
    clients = shared_local.clients()
    request = _training(manifests, "warned", **{"HyperParameters.image_shape": "3,48,48",
                                               "RoleArn": "arn:aws:iam::123456789012:role/nope"})
    clients.sagemaker.create_training_job(**request)
    shared_local.wait_idle()
    assert clients.sagemaker.describe_training_job(
        TrainingJobName="warned")["TrainingJobStatus"] == "Completed"
    found = [w for w in shared_local.warnings if "warned" in w]
    assert any("small-image (CIFAR) depth" in w for w in found)
    assert any("role arn:aws:iam::123456789012:role/nope does not exist" in w for w in found)
    from pcamflow.sagemaker.logs import training_log

    assert "[WARNING] train.num_layers: 20 is a small-image" in training_log(
        clients.client("logs"), "warned")


def _tuning(manifests: Any, name: str, strategy: str = "Bayesian", **config: Any) -> Any:
    definition = _training(manifests, "x")
    definition["StaticHyperParameters"] = definition.pop("HyperParameters")
    del definition["TrainingJobName"]
    return {"HyperParameterTuningJobName": name, "TrainingJobDefinition": definition,
            "HyperParameterTuningJobConfig": {
                "Strategy": strategy, "HyperParameterTuningJobObjective": {
                    "Type": "Maximize", "MetricName": "validation:accuracy"},
                "ResourceLimits": {"MaxParallelTrainingJobs": 1, "MaxNumberOfTrainingJobs": 1},
                "ParameterRanges": {"ContinuousParameterRanges": [
                    {"Name": "learning_rate", "MinValue": "0.001", "MaxValue": "0.1"}]},
                **config}}


@pytest.mark.parametrize(("strategy", "config", "message"), [
    ("Grid", {}, "Grid search supports only categorical parameter ranges"),
    ("Grid", {"ParameterRanges": {"CategoricalParameterRanges": [
        {"Name": "optimizer", "Values": ["sgd", "adam"]}]}},
     r"MaxNumberOfTrainingJobs \(1\) must equal the number of distinct categorical "
     r"combinations \(2\)"),
    ("Hyperband", {"TrainingJobEarlyStoppingType": "Auto"},
     "TrainingJobEarlyStoppingType must be OFF to use the Hyperband strategy"),
    ("Bayesian", {"HyperParameterTuningJobObjective": {"Type": "Minimize",
                                                       "MetricName": "validation:accuracy"}},
     "is not one the algorithm image-classification emits"),
    ("Random", {"StrategyConfig": {"HyperbandStrategyConfig": {"MaxResource": 2}}},
     "StrategyConfig can be given only with the Hyperband strategy"),
])
def test_a_tuning_job_breaking_a_documented_rule_is_refused(
    shared_local: Any, manifests: Any, strategy: str, config: dict[str, Any], message: str
) -> None:
    sm = shared_local.clients().sagemaker
    request = _tuning(manifests, "refused-tuning", strategy, **config)
    _refused(lambda: sm.create_hyper_parameter_tuning_job(**request), message)


def test_a_transform_of_an_s3_prefix_writes_one_documented_answer_per_object(
    shared_local: Any, model_uri: str
) -> None:
    clients = shared_local.clients()
    sm, s3 = clients.sagemaker, clients.s3
    for key in ("scoring/in/a.jpg", "scoring/in/deeper/b.jpg"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=patch_jpeg(1, len(key)))
    sm.create_model(ModelName="scoring-model", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": algorithm_image(REGION), "ModelDataUrl": model_uri})
    _refused(lambda: sm.create_transform_job(
        TransformJobName="zero-payload", ModelName="scoring-model", MaxPayloadInMB=0,
        TransformInput={"DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/scoring/in"}},
            "ContentType": "application/x-image"},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/scoring/out"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1}),
        "MaxPayloadInMB 0")
    for accept in ("application/json", "application/jsonlines"):
        name = "scoring-" + accept.split("/")[1]
        sm.create_transform_job(
            TransformJobName=name, ModelName="scoring-model",
            TransformInput={"DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/scoring/in"}},
                "ContentType": "image/jpeg", "SplitType": "None"},
            TransformOutput={"S3OutputPath": f"s3://{BUCKET}/scoring/{name}",
                             "Accept": accept},
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
    shared_local.wait_idle()
    listed = sorted(o["Key"] for o in s3.list_objects_v2(
        Bucket=BUCKET, Prefix="scoring/scoring-")["Contents"])
    assert listed == ["scoring/scoring-json/a.jpg.out", "scoring/scoring-json/deeper/b.jpg.out",
                      "scoring/scoring-jsonlines/a.jpg.out",
                      "scoring/scoring-jsonlines/deeper/b.jpg.out"]
    as_json = json.loads(s3.get_object(Bucket=BUCKET, Key=listed[0])["Body"].read())
    as_lines = s3.get_object(Bucket=BUCKET, Key=listed[2])["Body"].read().decode()
    assert isinstance(as_json, list) and len(as_json) == 2
    assert json.loads(as_lines) == {"prediction": pytest.approx(as_json)}
    _refused(lambda: sm.create_transform_job(
        TransformJobName="no-model", ModelName="missing",
        TransformInput={"DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/scoring/in"}}},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/x"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1}),
        "Could not find model")


def test_an_endpoint_answers_a_bad_body_with_a_model_error(
    shared_local: Any, model_uri: str
) -> None:
    import boto3

    clients = shared_local.clients()
    sm = clients.sagemaker
    sm.create_model(ModelName="bad-body-model", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": algorithm_image(REGION), "ModelDataUrl": model_uri})
    sm.create_endpoint_config(EndpointConfigName="bad-body-config", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "bad-body-model",
        "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    _refused(lambda: sm.create_endpoint_config(
        EndpointConfigName="nvme-config", KmsKeyId="1234abcd-12ab-34cd-56ef-1234567890ab",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "bad-body-model",
                             "InstanceType": "ml.g4dn.xlarge", "InitialInstanceCount": 1}]),
        "KmsKeyId can't be specified")
    sm.create_endpoint(EndpointName="bad-body", EndpointConfigName="bad-body-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="bad-body",
                                              WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    runtime = boto3.client("sagemaker-runtime", endpoint_url=shared_local.runtime_url,
                           region_name=REGION, aws_access_key_id="a", aws_secret_access_key="b")
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName="bad-body", Body=b"not an image",
                                ContentType="image/jpeg")
    error = caught.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["Error"]["Message"].startswith("Received client error (400) from primary with "
                                                "message")
    sm.delete_endpoint(EndpointName="bad-body")


def test_auto_early_stopping_follows_the_documented_median_rule() -> None:
    # two earlier jobs: running averages after epoch 1 are 0.6 and 0.8, their median 0.7
    curves = [[0.5, 0.7], [0.7, 0.9]]
    assert median_stop(curves, 1, 0.65)
    assert not median_stop(curves, 1, 0.75)
    assert not median_stop([], 0, 0.1)  # the first job runs through


def test_hyperband_keeps_the_best_third_at_each_rung() -> None:
    rungs: dict[int, list[float]] = {}
    assert not hyperband_stop(rungs, 1, 0.5, 1)  # fewer than three at the rung: go on
    assert not hyperband_stop(rungs, 1, 0.9, 1)
    assert hyperband_stop(rungs, 1, 0.6, 1)  # third, not the best third: stop
    assert not hyperband_stop(rungs, 2, 0.1, 1)  # two epochs is no rung (1, 3, 9, ...)


def test_the_rules_table_of_the_docs_is_the_one_enforced() -> None:
    text = (Path(__file__).parents[2] / "docs" / "sagemaker.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| (error|warning) \|", text, flags=re.M))
    assert rows == {rule.id: rule.severity for rule in RULES}
    for rule in RULES:
        page = rule.page.split(",")[0].split("#")[0]
        assert page in text, rule.id


_WITHOUT_MOTO = """
import importlib.abc, sys

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "moto":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
import pcamflow.sagemaker.localmode
"""


def test_without_moto_the_error_names_the_extra() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _WITHOUT_MOTO], capture_output=True, text=True,
                          timeout=120)
    assert "MissingExtraError" in done.stderr and "pcamflow[localmode]" in done.stderr
