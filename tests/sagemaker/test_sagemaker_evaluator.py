"""The SageMaker evaluator against moto: model + batch transform, predictions scored locally."""

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
    patch_answer,
    s3_manifests,
    settings_for,
)

from pcamflow.artifacts import Evaluation, ModelArtifact
from pcamflow.errors import AwsError, JobFailedError
from pcamflow.sagemaker.evaluator import SageMakerEvaluator, transform_input_manifest

MODEL = f"s3://{BUCKET}/pcamflow/run/train/output/job/output/model.tar.gz"


def _predictions(clients: Any, scores: list[float], settings: Any) -> None:
    """The batch transform's answers, ``<output>/<relative key>.out`` per image, each the
    documented JSON Lines record ``{"prediction": [p0, p1]}`` ("Image Classification - MXNet",
    Inference with the Image Classification Algorithm)."""
    from sm_helpers import run_key

    output = f"{run_key(settings)}/evaluate/transform-output"
    for i, score in enumerate(scores):
        key = f"{output}/{i % 2}/test_{i:06d}.jpg.out"
        body = json.dumps({"prediction": [1 - score, score]}) + "\n"
        clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def test_batch_transform_request_and_report(aws: Any, tmp_path: Path) -> None:
    key_arn = kms_alias(aws)
    settings = settings_for(tmp_path, evaluate={"bootstrap": 20},
                            aws={"kms_key_id": "alias/pcam", "tags": {"project": "pcam"},
                                 "evaluation": {"transform_instance_type": "ml.c5.xlarge"}})
    manifests = s3_manifests(aws, count=8)
    scores = [0.9 if i % 2 else 0.2 for i in range(8)]
    scores[3] = 0.3  # one false negative
    _predictions(aws, scores, settings)
    model = ModelArtifact(uri=MODEL, job_name="job")
    context = context_for(settings, aws, "evaluate", {"manifests": manifests, "train": model})
    evaluator = SageMakerEvaluator(progress=False)
    evaluator.validate(context)
    evaluation = evaluator.run(context)

    assert isinstance(evaluation, Evaluation)
    assert evaluation.metrics["accuracy"] == pytest.approx(7 / 8)
    assert Path(evaluation.report).exists()
    document = json.loads(Path(evaluation.metrics_file).read_text())
    assert document["results"]["plain@0.5"]["accuracy"] == pytest.approx(7 / 8)

    jobs = aws.sagemaker.list_transform_jobs()["TransformJobSummaries"]
    assert len(jobs) == 1
    job = aws.sagemaker.describe_transform_job(TransformJobName=jobs[0]["TransformJobName"])
    source = job["TransformInput"]["DataSource"]["S3DataSource"]
    assert source["S3DataType"] == "ManifestFile"
    assert job["TransformInput"]["ContentType"] == "application/x-image"
    assert job["TransformOutput"]["KmsKeyId"] == key_arn
    assert job["TransformOutput"]["Accept"] == "application/jsonlines"
    assert job["TransformResources"]["VolumeKmsKeyId"] == key_arn
    assert job["TransformResources"]["InstanceType"] == "ml.c5.xlarge"
    listing = aws.s3.get_object(Bucket=BUCKET, Key=source["S3Uri"].split("/", 3)[3])
    prefix, *keys = json.loads(listing["Body"].read())
    assert prefix == {"prefix": f"s3://{BUCKET}/images/test/"}
    assert keys[:2] == ["0/test_000000.jpg", "1/test_000001.jpg"]
    head = aws.s3.head_object(Bucket=BUCKET, Key=source["S3Uri"].split("/", 3)[3])
    assert head["ServerSideEncryption"] == "aws:kms"
    # the model made for the transform is deleted afterwards
    assert aws.sagemaker.list_models()["Models"] == []
    assert ROLE


def test_a_failed_transform_raises_and_still_deletes_the_model(aws: Any, tmp_path: Path) -> None:
    patch_answer(aws.session, "DescribeTransformJob",
                 lambda a: a.update(TransformJobStatus="Failed", FailureReason="model error"))
    model = ModelArtifact(uri=MODEL, job_name="job")
    context = context_for(settings_for(tmp_path), aws, "evaluate",
                          {"manifests": s3_manifests(aws), "train": model})
    with pytest.raises(JobFailedError, match="model error"):
        SageMakerEvaluator(progress=False).run(context)
    assert aws.sagemaker.list_models()["Models"] == []


def test_missing_predictions_are_an_error_naming_the_object(aws: Any, tmp_path: Path) -> None:
    model = ModelArtifact(uri=MODEL, job_name="job")
    context = context_for(settings_for(tmp_path), aws, "evaluate",
                          {"manifests": s3_manifests(aws, count=2), "train": model})
    with pytest.raises(AwsError, match=r"test_000000\.jpg\.out"):
        SageMakerEvaluator(progress=False).run(context)


def test_transform_input_manifest_finds_the_common_prefix() -> None:
    refs = ["s3://b/img/test/0/a.jpg", "s3://b/img/test/1/b.jpg", "s3://b/img/test/0/c.jpg"]
    assert transform_input_manifest(refs) == (
        "s3://b/img/test/", ["0/a.jpg", "1/b.jpg", "0/c.jpg"])


def test_evaluation_via_an_endpoint_scores_the_given_model_on_a_temporary_endpoint(
    aws: Any, tmp_path: Path
) -> None:
    """``evaluate_via = "endpoint"``: a temporary endpoint of the model, deleted afterwards."""
    pytest.importorskip("torch")
    pytest.importorskip("fastapi")
    import io

    import numpy as np
    from PIL import Image

    from pcamflow.local.model.archive import ModelMeta, load_model_archive, save_model_archive
    from pcamflow.local.model.resnet import architecture_name, build_model
    from pcamflow.local.serving.app import create_app
    from pcamflow.local.serving.hosting import ServerThread
    from pcamflow.sagemaker.clients import AwsClients

    archive = save_model_archive(
        tmp_path / "model.tar.gz", build_model(20, num_classes=2),
        ModelMeta(architecture=architecture_name(20), num_layers=20, num_classes=2),
    )
    loaded = load_model_archive(archive)
    manifests = s3_manifests(aws, count=4)
    rng = np.random.default_rng(0)
    images = []
    for i in range(4):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, "JPEG")
        images.append(np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
        aws.s3.put_object(Bucket=BUCKET, Key=f"images/test/{i % 2}/test_{i:06d}.jpg",
                          Body=buffer.getvalue())
    settings = settings_for(tmp_path, evaluate={"bootstrap": 10}, deploy={"name": "pcam-live"},
                            aws={"evaluation": {"evaluate_via": "endpoint"}})
    clients = AwsClients(aws.session)
    servers: list[ServerThread] = []

    def serve(params: dict[str, Any], **kwargs: Any) -> None:
        # the endpoint the evaluator makes serves the given model over the runtime API
        name = json.loads(params["body"])["EndpointName"]
        servers.append(ServerThread(create_app(loaded, name=name)).start())
        clients.endpoint_urls["sagemaker-runtime"] = servers[-1].url

    aws.session.events.register("before-call.sagemaker.CreateEndpoint", serve)
    context = context_for(settings, clients, "evaluate",
                          {"manifests": manifests, "train": ModelArtifact(uri=MODEL)})
    try:
        evaluation = SageMakerEvaluator(progress=False).run(context)
    finally:
        for server in servers:
            server.stop()
    import csv

    with open(Path(evaluation.report).parent / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = loaded.predict_images(np.stack(images))[:, 1]
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-4, atol=1e-5)
    assert [int(r["label"]) for r in rows] == [0, 1, 0, 1]
    assert len(servers) == 1 and servers and "pcam-live" not in servers[0].url
    sm = aws.sagemaker
    assert sm.list_endpoints()["Endpoints"] == []  # the temporary endpoint is gone
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    assert sm.list_transform_jobs()["TransformJobSummaries"] == []
