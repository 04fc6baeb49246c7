"""The SageMaker evaluator in local mode: a real batch transform (or temporary endpoint) of a
real model; its answers read back and scored locally."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import (
    BUCKET,
    context_for,
    kms_alias,
    run_key,
    s3_manifests,
    settings_for,
    train_model_in,
)

from pcamflow.artifacts import Evaluation, ModelArtifact
from pcamflow.errors import JobFailedError
from pcamflow.sagemaker.evaluator import SageMakerEvaluator, transform_input_manifest


@pytest.fixture(scope="module")
def model_uri(shared_local: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model trained by a local-mode training job, shared by this module's tests."""
    return train_model_in(shared_local, tmp_path_factory.mktemp("model"))


def _expected_scores(local: Any, model_uri: str, manifests: Any, tmp_path: Path) -> list[float]:
    """The class-1 probability of each test image, from the model itself (not the evaluator)."""
    import numpy as np

    from pcamflow.data.manifests import read_manifest
    from pcamflow.local.model.archive import load_model_archive
    from pcamflow.local.serving.payloads import decode_image

    s3 = local.clients().s3
    archive = tmp_path / "model.tar.gz"
    s3.download_file(BUCKET, model_uri.split("/", 3)[3], str(archive))
    model = load_model_archive(archive)
    listing = tmp_path / "test.manifest"
    s3.download_file(BUCKET, manifests.manifests["test"].split("/", 3)[3], str(listing))
    images = [decode_image(s3.get_object(Bucket=BUCKET, Key=ref.split("/", 3)[3])["Body"].read())
              for ref, _ in read_manifest(listing)]
    return list(model.predict_images(np.stack(images))[:, 1])


def _scores(evaluation: Evaluation) -> tuple[list[float], list[int]]:
    with open(Path(evaluation.report).parent / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [float(r["score"]) for r in rows], [int(r["label"]) for r in rows]


def test_a_batch_transform_scores_the_model_into_the_report(
    shared_local: Any, model_uri: str, tmp_path: Path
) -> None:
    clients = shared_local.clients()
    key_arn = kms_alias(clients, "alias/eval")
    settings = settings_for(tmp_path, evaluate={"bootstrap": 20},
                            aws={"kms_key_id": "alias/eval", "tags": {"project": "pcam"},
                                 "evaluation": {"transform_instance_type": "ml.c5.xlarge"}})
    manifests = s3_manifests(clients, count=8, prefix="batch/")
    context = context_for(settings, clients, "evaluate",
                          {"manifests": manifests, "train": ModelArtifact(uri=model_uri)})
    evaluator = SageMakerEvaluator(progress=False)
    evaluator.validate(context)
    evaluation = evaluator.run(context)

    assert isinstance(evaluation, Evaluation) and Path(evaluation.report).exists()
    scores, labels = _scores(evaluation)
    assert labels == [0, 1] * 5  # the helper's test split holds count + 2 images
    expected = _expected_scores(shared_local, model_uri, manifests, tmp_path)
    assert scores == pytest.approx(expected, abs=1e-5)
    document = json.loads(Path(evaluation.metrics_file).read_text())
    accuracy = sum((s >= 0.5) == bool(y) for s, y in zip(scores, labels, strict=True)) / 10
    assert document["results"]["plain@0.5"]["accuracy"] == pytest.approx(accuracy)

    jobs = clients.sagemaker.list_transform_jobs()["TransformJobSummaries"]
    name = next(j["TransformJobName"] for j in jobs if j["TransformJobStatus"] == "Completed")
    job = clients.sagemaker.describe_transform_job(TransformJobName=name)
    source = job["TransformInput"]["DataSource"]["S3DataSource"]
    assert source["S3DataType"] == "ManifestFile"
    assert job["TransformInput"]["ContentType"] == "application/x-image"
    assert job["TransformOutput"]["Accept"] == "application/jsonlines"
    assert job["TransformOutput"]["KmsKeyId"] == key_arn
    assert job["TransformResources"]["VolumeKmsKeyId"] == key_arn
    assert job["TransformResources"]["InstanceType"] == "ml.c5.xlarge"
    listing = clients.s3.get_object(Bucket=BUCKET, Key=source["S3Uri"].split("/", 3)[3])
    prefix, *keys = json.loads(listing["Body"].read())
    assert prefix == {"prefix": f"s3://{BUCKET}/batch/images/test/"}
    assert keys[:2] == ["0/test_000000.jpg", "1/test_000001.jpg"]
    # the transform's own answers: the documented JSON Lines record, one per image
    out = f"{run_key(settings)}/evaluate/transform-output/1/test_000001.jpg.out"
    answer = clients.s3.get_object(Bucket=BUCKET, Key=out)["Body"].read().decode()
    assert list(json.loads(answer)) == ["prediction"] and answer.endswith("\n")
    assert clients.sagemaker.list_models()["Models"] == []  # its model is deleted afterwards


def test_a_failed_transform_raises_and_still_deletes_the_model(
    shared_local: Any, model_uri: str, tmp_path: Path
) -> None:
    clients = shared_local.clients()
    manifests = s3_manifests(clients, count=4, prefix="broken/")
    clients.s3.put_object(Bucket=BUCKET, Key="broken/images/test/1/test_000003.jpg",
                          Body=b"not an image")
    context = context_for(settings_for(tmp_path), clients, "evaluate",
                          {"manifests": manifests, "train": ModelArtifact(uri=model_uri)})
    # the test split holds count + 2 = 6 images
    with pytest.raises(JobFailedError, match=r"ClientError: 1 of 6 objects failed, e\.g\. "
                                             r"s3://.*/test_000003\.jpg"):
        SageMakerEvaluator(progress=False).run(context)
    assert clients.sagemaker.list_models()["Models"] == []


def test_transform_input_manifest_finds_the_common_prefix() -> None:
    refs = ["s3://b/img/test/0/a.jpg", "s3://b/img/test/1/b.jpg", "s3://b/img/test/0/c.jpg"]
    assert transform_input_manifest(refs) == (
        "s3://b/img/test/", ["0/a.jpg", "1/b.jpg", "0/c.jpg"])


def test_evaluation_via_an_endpoint_scores_the_given_model_on_a_temporary_endpoint(
    shared_local: Any, model_uri: str, tmp_path: Path
) -> None:
    """``evaluate_via = "endpoint"``: a temporary endpoint of the model, deleted afterwards."""
    clients = shared_local.clients()
    manifests = s3_manifests(clients, count=4, prefix="live/")
    settings = settings_for(tmp_path, evaluate={"bootstrap": 10}, deploy={"name": "pcam-live"},
                            aws={"evaluation": {"evaluate_via": "endpoint"}})
    # nothing serves under deploy.name: the scores can only come from an endpoint of its own
    assert clients.sagemaker.list_endpoints()["Endpoints"] == []
    context = context_for(settings, clients, "evaluate",
                          {"manifests": manifests, "train": ModelArtifact(uri=model_uri)})
    evaluation = SageMakerEvaluator(progress=False).run(context)
    scores, labels = _scores(evaluation)
    assert scores == pytest.approx(_expected_scores(shared_local, model_uri, manifests,
                                                    tmp_path), abs=1e-5)
    assert labels == [0, 1] * 3  # the helper's test split holds count + 2 images
    sm = clients.sagemaker
    assert sm.list_endpoints()["Endpoints"] == []  # the temporary endpoint is gone
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
