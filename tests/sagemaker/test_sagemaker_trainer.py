"""The SageMaker trainer against moto: the exact training-job request, failures, Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sm_helpers import (
    BUCKET,
    REGION,
    ROLE,
    context_for,
    fake_answer,
    kms_alias,
    patch_answer,
    s3_manifests,
)

from pcamflow.artifacts import ModelArtifact, TuningResult
from pcamflow.errors import ConfigError, JobFailedError
from pcamflow.sagemaker.trainer import SageMakerTrainer

IMAGE = "685385470294.dkr.ecr.eu-west-1.amazonaws.com/image-classification:1"


def _describe(clients: Any, name: str) -> dict[str, Any]:
    return clients.sagemaker.describe_training_job(TrainingJobName=name)


def test_training_job_request_has_the_channels_hyperparameters_image_tags_kms_and_vpc(
    aws: Any, tmp_path: Path
) -> None:
    from sm_helpers import settings_for

    key_arn = kms_alias(aws)
    settings = settings_for(
        tmp_path,
        train={"num_layers": 20, "epochs": 3, "learning_rate": 0.05, "mini_batch_size": 16},
        aws={"kms_key_id": "alias/pcam", "tags": {"project": "pcam", "owner": "lab"},
             "network": {"subnets": ["subnet-1"], "security_group_ids": ["sg-1"]},
             "training": {"instance_type": "ml.g4dn.xlarge", "max_runtime_s": 7200}},
    )
    manifests = s3_manifests(aws, count=6)
    context = context_for(settings, aws, "train", {"manifests": manifests})
    trainer = SageMakerTrainer(progress=False)
    trainer.validate(context)
    model = trainer.run(context)

    assert isinstance(model, ModelArtifact)
    job = _describe(aws, model.job_name)
    algorithm = job["AlgorithmSpecification"]
    assert (algorithm["TrainingImage"], algorithm["TrainingInputMode"]) == (IMAGE, "Pipe")
    assert job["RoleArn"] == ROLE
    channels = {c["ChannelName"]: c for c in job["InputDataConfig"]}
    assert sorted(channels) == ["train", "validation"]
    for name, split in (("train", "train"), ("validation", "valid")):
        channel = channels[name]
        assert channel["DataSource"]["S3DataSource"] == {
            "S3DataType": "AugmentedManifestFile",
            "S3Uri": manifests.manifests[split],
            "S3DataDistributionType": "FullyReplicated",
            "AttributeNames": ["source-ref", "class"],
        }
        assert channel["ContentType"] == "application/x-recordio"
        assert channel["RecordWrapperType"] == "RecordIO"
        assert channel["InputMode"] == "Pipe"
    expected = settings.train.hyperparameters.with_values(num_training_samples=6).to_sagemaker()
    assert job["HyperParameters"] == expected
    assert job["HyperParameters"]["num_training_samples"] == "6"
    assert job["HyperParameters"]["learning_rate"] == "0.05"
    # the alias is resolved: VolumeKmsKeyId takes a key ID or ARN only
    assert job["OutputDataConfig"]["KmsKeyId"] == key_arn
    from sm_helpers import run_key

    assert job["OutputDataConfig"]["S3OutputPath"].startswith(
        f"s3://{BUCKET}/{run_key(settings)}/train")
    # a g4dn has local NVMe storage, where AWS refuses a VolumeKmsKeyId
    assert "VolumeKmsKeyId" not in job["ResourceConfig"]
    assert job["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 7200
    assert job["VpcConfig"] == {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]}
    tags = aws.sagemaker.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("owner", "lab"), ("project", "pcam")]
    output = job["OutputDataConfig"]["S3OutputPath"]
    assert model.uri == f"{output}/{model.job_name}/output/model.tar.gz"
    assert model.hyperparameters == expected
    assert REGION in IMAGE


def test_a_volume_key_is_sent_where_the_instance_has_no_local_storage(
    aws: Any, tmp_path: Path
) -> None:
    from sm_helpers import settings_for

    key_arn = kms_alias(aws)
    settings = settings_for(tmp_path, aws={"kms_key_id": "alias/pcam",
                                           "training": {"instance_type": "ml.p3.2xlarge"}})
    context = context_for(settings, aws, "train", {"manifests": s3_manifests(aws)})
    model = SageMakerTrainer(progress=False).run(context)
    assert _describe(aws, model.job_name)["ResourceConfig"]["VolumeKmsKeyId"] == key_arn


def test_an_alias_that_names_no_key_is_an_error_naming_the_setting(
    aws: Any, tmp_path: Path
) -> None:
    from sm_helpers import settings_for

    settings = settings_for(tmp_path, aws={"kms_key_id": "alias/missing"})
    context = context_for(settings, aws, "train", {"manifests": s3_manifests(aws)})
    with pytest.raises(ConfigError, match=r"aws\.kms_key_id: cannot find the key of 'alias/miss"):
        SageMakerTrainer(progress=False).run(context)
    assert aws.sagemaker.list_training_jobs()["TrainingJobSummaries"] == []


@pytest.mark.parametrize("instance_type", ["ml.m5.large", "ml.c5.xlarge", "ml.t3.medium"])
def test_a_cpu_training_instance_is_refused_before_anything_is_sent(
    aws: Any, tmp_path: Path, instance_type: str
) -> None:
    from sm_helpers import settings_for

    settings = settings_for(tmp_path, aws={"training": {"instance_type": instance_type}})
    context = context_for(settings, aws, "train", {"manifests": s3_manifests(aws)})
    with pytest.raises(ConfigError, match=r"aws\.training\.instance_type: .*GPU"):
        SageMakerTrainer(progress=False).validate(context)


def test_a_small_image_depth_at_a_larger_size_is_a_warning(
    aws: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sm_helpers import settings_for

    settings = settings_for(tmp_path, train={"num_layers": 20, "image_shape": "3,48,48"})
    context = context_for(settings, aws, "train", {"manifests": s3_manifests(aws)})
    SageMakerTrainer(progress=False).validate(context)  # a warning, not an error
    assert "small-image (CIFAR) depth" in caplog.text and "48 px" in caplog.text
    caplog.clear()
    fine = settings_for(tmp_path, train={"num_layers": 20, "image_shape": "3,28,28"})
    SageMakerTrainer(progress=False).validate(context_for(fine, aws, "train", {}))
    assert "CIFAR" not in caplog.text


def test_tuning_result_overrides_the_hyperparameters(aws: Any, tmp_path: Path) -> None:
    from sm_helpers import settings_for

    settings = settings_for(tmp_path, train={"epochs": 4})
    tuned = TuningResult(best_hyperparameters={"learning_rate": "0.01", "optimizer": "adam"})
    context = context_for(settings, aws, "train",
                          {"manifests": s3_manifests(aws), "tune": tuned})
    model = SageMakerTrainer(progress=False).run(context)
    sent = _describe(aws, model.job_name)["HyperParameters"]
    assert (sent["learning_rate"], sent["optimizer"], sent["epochs"]) == ("0.01", "adam", "4")


def test_local_only_extensions_are_rejected(aws: Any, tmp_path: Path) -> None:
    from sm_helpers import settings_for

    settings = settings_for(tmp_path, train={"extensions": {"dihedral": True}})
    context = context_for(settings, aws, "train", {"manifests": s3_manifests(aws)})
    with pytest.raises(ConfigError, match=r"train\.extensions\.dihedral"):
        SageMakerTrainer(progress=False).validate(context)


def test_local_manifests_are_refused(aws: Any, tmp_path: Path) -> None:
    from sm_helpers import settings_for

    from pcamflow.artifacts import Manifests

    settings = settings_for(tmp_path)
    local = Manifests(manifests={s: f"/tmp/{s}.manifest" for s in ("train", "valid", "test")},
                      counts={"train": 4, "valid": 4, "test": 4})
    context = context_for(settings, aws, "train", {"manifests": local})
    with pytest.raises(ConfigError, match="manifest_builder = 'sagemaker'"):
        SageMakerTrainer(progress=False).run(context)


def test_a_failed_job_raises_with_its_failure_reason(aws: Any, tmp_path: Path) -> None:
    from sm_helpers import settings_for

    reason = "ClientError: Unable to read the manifest file s3://x/train.manifest"

    def fail(answer: dict[str, Any]) -> None:
        answer.update(TrainingJobStatus="Failed", FailureReason=reason)

    patch_answer(aws.session, "DescribeTrainingJob", fail)
    context = context_for(settings_for(tmp_path), aws, "train", {"manifests": s3_manifests(aws)})
    with pytest.raises(JobFailedError, match="Unable to read the manifest file") as caught:
        SageMakerTrainer(progress=False).run(context)
    assert "Failed" in str(caught.value)


def test_ctrl_c_offers_to_stop_the_job_and_a_rerun_attaches(aws: Any, tmp_path: Path) -> None:
    from sm_helpers import settings_for

    state = {"status": "InProgress"}
    patch_answer(aws.session, "DescribeTrainingJob",
                 lambda answer: answer.update(TrainingJobStatus=state["status"]))
    stops: list[dict[str, Any]] = []
    fake_answer(aws.session, "StopTrainingJob", lambda params: {}, calls=stops)
    questions: list[str] = []

    def ask(question: str) -> bool:
        questions.append(question)
        return True

    settings = settings_for(tmp_path, aws={"poll_s": 0.0})
    context = context_for(settings, aws, "train", {"manifests": s3_manifests(aws)})
    trainer = SageMakerTrainer(progress=False, ask=ask)
    import pcamflow.sagemaker.jobs as jobs

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job = jobs.attach_or_create(
            "training",
            _request_of(trainer, context),
            aws,
            context.stage_dir,
        )
        jobs.wait("training", job, poll_s=0, progress=False, ask=ask, sleep=interrupt)
    assert questions and "Stop it?" in questions[0]
    assert stops and stops[0]["TrainingJobName"] == job.training_job_name

    # the job goes on; a re-run attaches to it instead of starting a second one
    state["status"] = "Completed"
    model = trainer.run(context)
    assert model.job_name == job.training_job_name
    assert len(aws.sagemaker.list_training_jobs()["TrainingJobSummaries"]) == 1


def _request_of(trainer: SageMakerTrainer, context: Any) -> dict[str, Any]:
    """The request the trainer sends for ``context``."""
    from pcamflow.artifacts import Manifests
    from pcamflow.sagemaker.clients import resolve
    from pcamflow.sagemaker.requests import job_name, training_job_request
    from pcamflow.sagemaker.s3 import run_root
    from pcamflow.sagemaker.trainer import training_hyperparameters

    settings = context.settings
    manifests = context.input(Manifests)
    resolved = resolve(context.service("aws"), settings.aws)
    output = run_root(context, resolved.bucket).join("train", "output")
    return training_job_request(
        job_name(settings.aws.prefix, "train"),
        training_hyperparameters(settings.train.hyperparameters, manifests),
        manifests.manifests, str(output), settings.aws, resolved,
    )
