"""All six SageMaker stages in one pipeline on moto, a re-run that resumes, and teardown.

moto completes jobs at once without running anything, so two hooks play SageMaker's part:
a finished training job writes its ``model.tar.gz``, and a batch transform writes one
prediction per listed image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import context_for, fake_answer, patch_answer, settings_for

from pcamflow.artifacts import Endpoint, Evaluation, ModelArtifact, TuningResult
from pcamflow.pipeline import Pipeline
from pcamflow.registry import Registry
from pcamflow.sagemaker.clients import services_for
from pcamflow.sagemaker.deployer import SageMakerDeployer, teardown_endpoint
from pcamflow.sagemaker.s3 import S3Uri

STAGES = {"converter": "sagemaker", "manifest_builder": "sagemaker", "tuner": "sagemaker",
          "trainer": "sagemaker", "evaluator": "sagemaker", "deployer": "sagemaker"}


def _body(params: dict[str, Any]) -> dict[str, Any]:
    body = params.get("body") or b"{}"
    return json.loads(body.decode() if isinstance(body, bytes) else body)


def _play_sagemaker(clients: Any) -> None:
    s3 = clients.s3

    def trained(params: dict[str, Any], **kwargs: Any) -> None:
        request = _body(params)
        out = S3Uri.parse(request["OutputDataConfig"]["S3OutputPath"])
        key = out.join(request["TrainingJobName"], "output", "model.tar.gz").key
        s3.put_object(Bucket=out.bucket, Key=key, Body=b"model")

    def transformed(params: dict[str, Any], **kwargs: Any) -> None:
        request = _body(params)
        listing = S3Uri.parse(request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"])
        _, *keys = json.loads(s3.get_object(Bucket=listing.bucket,
                                            Key=listing.key)["Body"].read())
        out = S3Uri.parse(request["TransformOutput"]["S3OutputPath"])
        for key in keys:
            score = 0.8 if key.startswith("1/") else 0.3
            s3.put_object(Bucket=out.bucket, Key=out.join(key + ".out").key,
                          Body=json.dumps([1 - score, score]))

    clients.session.events.register("before-call.sagemaker.CreateTrainingJob", trained)
    clients.session.events.register("before-call.sagemaker.CreateTransformJob", transformed)

    def best(answer: dict[str, Any]) -> None:
        answer["BestTrainingJob"]["TunedHyperParameters"] = {"learning_rate": "0.03"}
        answer["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] = 0.9

    patch_answer(clients.session, "DescribeHyperParameterTuningJob", best)
    fake_answer(clients.session, "ListTrainingJobsForHyperParameterTuningJob",
                lambda params: {"TrainingJobSummaries": []})


def test_the_whole_pipeline_runs_resumes_and_tears_down(
    aws: Any, tmp_path: Path, pcam_dir: Path
) -> None:
    pytest.importorskip("pcamflow.data.convert")
    _play_sagemaker(aws)
    settings = settings_for(
        tmp_path, pipeline=STAGES, data={"source": str(pcam_dir)}, convert={"workers": 1},
        manifests={"max_per_class": 4}, evaluate={"bootstrap": 20},
        tune={"max_jobs": 2, "epochs": 1, "ranges": {"learning_rate": {
            "type": "continuous", "min_value": 0.01, "max_value": 0.1}}},
        train={"epochs": 2}, deploy={"name": "pcam-e2e"},
    )
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    result = pipeline.run(settings, services=services_for(aws))
    assert result.ran == pipeline.names
    artifacts = result.artifacts
    assert isinstance(artifacts["tune"], TuningResult)
    model = artifacts["train"]
    assert isinstance(model, ModelArtifact)
    assert model.hyperparameters["learning_rate"] == "0.03"  # the tuned value
    assert model.hyperparameters["epochs"] == "2"  # [train]'s, not the tuning job's
    evaluation = artifacts["evaluate"]
    assert isinstance(evaluation, Evaluation)
    assert evaluation.metrics["accuracy"] == pytest.approx(1.0)
    endpoint = artifacts["deploy"]
    assert isinstance(endpoint, Endpoint) and endpoint.backend == "sagemaker"

    again = pipeline.run(settings, services=services_for(aws))
    assert again.ran == ()  # every stage complete, its outputs still in S3
    assert len(aws.sagemaker.list_training_jobs()["TrainingJobSummaries"]) == 1

    teardown_endpoint(endpoint, aws, wait=False)
    assert aws.sagemaker.list_endpoints()["Endpoints"] == []


def test_ctrl_c_while_the_endpoint_is_created_offers_to_delete_it(
    aws: Any, tmp_path: Path
) -> None:
    polls: list[int] = []

    def creating_then_interrupt(answer: dict[str, Any]) -> None:
        if "EndpointStatus" not in answer:  # not created yet, or deleted
            return
        polls.append(1)
        if len(polls) == 2:  # Ctrl-C while waiting, once
            raise KeyboardInterrupt
        answer["EndpointStatus"] = "Creating"

    patch_answer(aws.session, "DescribeEndpoint", creating_then_interrupt)
    questions: list[str] = []
    settings = settings_for(tmp_path, deploy={"name": "pcam-interrupted"})
    model = ModelArtifact(uri="s3://pcamflow-test-bucket/m/model.tar.gz")
    context = context_for(settings, aws, "deploy", {"train": model})
    deployer = SageMakerDeployer(progress=False, ask=lambda q: questions.append(q) or True)
    with pytest.raises(KeyboardInterrupt):
        deployer.run(context)
    assert questions and "Delete it?" in questions[0]
    assert aws.sagemaker.list_endpoints()["Endpoints"] == []
    assert aws.sagemaker.list_models()["Models"] == []
