"""The SageMaker trainer in local mode: the exact request, a real job's outputs, failures,
Ctrl-C and stopping."""

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
    run_key,
    s3_manifests,
    settings_for,
)

from pcamflow.artifacts import ModelArtifact, TuningResult
from pcamflow.errors import ConfigError, JobFailedError
from pcamflow.sagemaker.trainer import SageMakerTrainer

IMAGE = "685385470294.dkr.ecr.eu-west-1.amazonaws.com/image-classification:1"


def _describe(clients: Any, name: str) -> dict[str, Any]:
    return clients.sagemaker.describe_training_job(TrainingJobName=name)


def test_a_training_job_runs_and_leaves_its_model_log_and_metrics(
    local: Any, tmp_path: Path
) -> None:
    clients = local.clients()
    key_arn = kms_alias(clients)
    settings = settings_for(
        tmp_path, train={"epochs": 2, "learning_rate": 0.005},
        aws={"kms_key_id": "alias/pcam", "tags": {"project": "pcam", "owner": "lab"},
             "network": {"subnets": ["subnet-1"], "security_group_ids": ["sg-1"]},
             "training": {"instance_type": "ml.g4dn.xlarge", "max_runtime_s": 7200}},
    )
    manifests = s3_manifests(clients, count=8)
    context = context_for(settings, clients, "train", {"manifests": manifests})
    trainer = SageMakerTrainer(progress=False)
    trainer.validate(context)
    model = trainer.run(context)

    assert isinstance(model, ModelArtifact)
    job = _describe(clients, model.job_name)
    assert job["TrainingJobStatus"] == "Completed"
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
    hp = job["HyperParameters"]
    # Every value as the algorithm takes it (AWS "Image Classification Hyperparameters"): strings,
    # num_classes required, image_shape set (the algorithm's default is 3,224,224), and
    # num_training_samples the train split's count (the helper gives each split its own count).
    assert hp == {
        "num_classes": "2", "num_training_samples": "8", "image_shape": "3,28,28",
        "num_layers": "20", "epochs": "2", "mini_batch_size": "8", "learning_rate": "0.005",
        "lr_scheduler_factor": "0.1", "optimizer": "adam", "momentum": "0.9",
        "weight_decay": "0.0001", "beta_1": "0.9", "beta_2": "0.999", "eps": "1e-08",
        "gamma": "0.9", "early_stopping": "False", "early_stopping_min_epochs": "10",
        "early_stopping_patience": "5", "early_stopping_tolerance": "0.0",
        "precision_dtype": "float32", "use_pretrained_model": "0", "use_weighted_loss": "0",
        "multi_label": "0",
    }
    # the alias is resolved: VolumeKmsKeyId takes a key ID or ARN only
    assert job["OutputDataConfig"]["KmsKeyId"] == key_arn
    # a g4dn has local NVMe storage, where AWS refuses a VolumeKmsKeyId
    assert "VolumeKmsKeyId" not in job["ResourceConfig"]
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 7200
    assert job["VpcConfig"] == {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]}
    tags = clients.sagemaker.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("owner", "lab"), ("project", "pcam")]
    output = job["OutputDataConfig"]["S3OutputPath"]
    assert output.startswith(f"s3://{BUCKET}/{run_key(settings)}/train")
    assert model.uri == f"{output}/{model.job_name}/output/model.tar.gz"
    assert model.uri == job["ModelArtifacts"]["S3ModelArtifacts"]
    key = model.uri.split("/", 3)[3]
    head = clients.s3.head_object(Bucket=BUCKET, Key=key)  # the job wrote it, encrypted
    assert head["ServerSideEncryption"] == "aws:kms" and key_arn.endswith(
        head["SSEKMSKeyId"].split("/")[-1])
    # the metric lines were read back from CloudWatch Logs through the shared parser
    history = json.loads((context.stage_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    final = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert final["validation:accuracy"] == pytest.approx(history[-1]["validation:accuracy"])
    assert model.metrics["validation:accuracy"] == pytest.approx(final["validation:accuracy"])
    assert model.metrics["epochs_run"] == 2
    assert model.hyperparameters == hp
    assert local.warnings == []


def test_a_volume_key_is_sent_where_the_instance_has_no_local_storage(
    local: Any, tmp_path: Path
) -> None:
    clients = local.clients()
    key_arn = kms_alias(clients)
    settings = settings_for(tmp_path, aws={"kms_key_id": "alias/pcam",
                                           "training": {"instance_type": "ml.p3.2xlarge"}})
    context = context_for(settings, clients, "train", {"manifests": s3_manifests(clients)})
    model = SageMakerTrainer(progress=False).run(context)
    assert _describe(clients, model.job_name)["ResourceConfig"]["VolumeKmsKeyId"] == key_arn


def test_an_alias_that_names_no_key_is_an_error_naming_the_setting(
    local: Any, tmp_path: Path
) -> None:
    clients = local.clients()
    settings = settings_for(tmp_path, aws={"kms_key_id": "alias/missing"})
    context = context_for(settings, clients, "train", {"manifests": s3_manifests(clients)})
    with pytest.raises(ConfigError, match=r"aws\.kms_key_id: cannot find the key of 'alias/miss"):
        SageMakerTrainer(progress=False).run(context)
    assert clients.sagemaker.list_training_jobs()["TrainingJobSummaries"] == []


@pytest.mark.parametrize("instance_type", ["ml.m5.large", "ml.c5.xlarge", "ml.t3.medium"])
def test_a_cpu_training_instance_is_refused_before_anything_is_sent(
    aws_env: Any, tmp_path: Path, instance_type: str
) -> None:
    settings = settings_for(tmp_path, aws={"training": {"instance_type": instance_type}})
    context = context_for(settings, None, "train", {})
    with pytest.raises(ConfigError, match=r"aws\.training\.instance_type: .*GPU"):
        SageMakerTrainer(progress=False).validate(context)


def test_a_cpu_training_job_fails_as_the_algorithm_fails_it(local: Any, tmp_path: Path) -> None:
    """What validate refuses is refused by local mode too, had it been sent."""
    clients = local.clients()
    settings = settings_for(tmp_path, aws={"training": {"instance_type": "ml.m5.large"}})
    context = context_for(settings, clients, "train", {"manifests": s3_manifests(clients)})
    with pytest.raises(JobFailedError, match=r"ClientError: Instance type ml\.m5\.large is not "
                                             "supported"):
        SageMakerTrainer(progress=False).run(context)


def test_a_small_image_depth_at_a_larger_size_is_a_warning(
    aws_env: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, train={"num_layers": 20, "image_shape": "3,48,48"})
    SageMakerTrainer(progress=False).validate(context_for(settings, None, "train", {}))
    assert "small-image (CIFAR) depth" in caplog.text and "48 px" in caplog.text
    caplog.clear()
    fine = settings_for(tmp_path, train={"num_layers": 20, "image_shape": "3,28,28"})
    SageMakerTrainer(progress=False).validate(context_for(fine, None, "train", {}))
    assert "CIFAR" not in caplog.text


def test_tuned_values_are_applied_and_the_rest_comes_from_train(
    local: Any, tmp_path: Path
) -> None:
    clients = local.clients()
    settings = settings_for(tmp_path, train={"epochs": 2})
    tuned = TuningResult(best_hyperparameters={"learning_rate": "0.003", "optimizer": "sgd"})
    context = context_for(settings, clients, "train",
                          {"manifests": s3_manifests(clients), "tune": tuned})
    model = SageMakerTrainer(progress=False).run(context)
    sent = _describe(clients, model.job_name)["HyperParameters"]
    assert (sent["learning_rate"], sent["optimizer"], sent["epochs"]) == ("0.003", "sgd", "2")


def test_local_only_extensions_are_rejected(aws_env: Any, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, train={"extensions": {"dihedral": True}})
    with pytest.raises(ConfigError, match=r"train\.extensions\.dihedral"):
        SageMakerTrainer(progress=False).validate(context_for(settings, None, "train", {}))


def test_local_manifests_are_refused(local: Any, tmp_path: Path) -> None:
    from pcamflow.artifacts import Manifests

    local_manifests = Manifests(
        manifests={s: f"/tmp/{s}.manifest" for s in ("train", "valid", "test")},
        counts={"train": 4, "valid": 4, "test": 4})
    context = context_for(settings_for(tmp_path), local.clients(), "train",
                          {"manifests": local_manifests})
    with pytest.raises(ConfigError, match="manifest_builder = 'sagemaker'"):
        SageMakerTrainer(progress=False).run(context)


def test_a_failed_job_raises_with_its_failure_reason(local: Any, tmp_path: Path) -> None:
    clients = local.clients()
    manifests = s3_manifests(clients, count=4)
    clients.s3.delete_object(Bucket=BUCKET, Key="images/train/1/train_000001.jpg")
    context = context_for(settings_for(tmp_path), clients, "train", {"manifests": manifests})
    with pytest.raises(JobFailedError, match=r"ended Failed: ClientError: Unable to download "
                                             r"s3://.*/train_000001\.jpg") as caught:
        SageMakerTrainer(progress=False).run(context)
    job = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"][0]
    assert job["TrainingJobStatus"] == "Failed"
    assert "train_000001.jpg" in str(caught.value)


def _ctrl_c_after_the_job_starts(local: Any, delay: float = 0.3) -> None:
    """Press Ctrl-C (SIGINT to the main thread) ``delay`` seconds after the training job is
    created."""
    import _thread
    import threading

    pressed: list[bool] = []

    def created(**kwargs: Any) -> None:
        if not pressed:  # once: clients keep the hooks they were made with
            pressed.append(True)
            threading.Timer(delay, _thread.interrupt_main).start()

    local.session.events.register_first("after-call.sagemaker.CreateTrainingJob", created)


def test_ctrl_c_left_running_is_attached_to_by_a_rerun(local: Any, tmp_path: Path) -> None:
    clients = local.clients()
    # enough epochs (some 50 ms each on a quiet machine) that the job has not ended when Ctrl-C
    # comes: a job that ended first would leave nothing to interrupt
    settings = settings_for(tmp_path, train={"epochs": 40})
    context = context_for(settings, clients, "train", {"manifests": s3_manifests(clients)})
    questions: list[str] = []
    trainer = SageMakerTrainer(progress=False, ask=lambda q: questions.append(q) or False)
    _ctrl_c_after_the_job_starts(local)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(context)
    assert questions and "Stop it?" in questions[0]
    first = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    assert len(first) == 1 and first[0]["TrainingJobStatus"] in ("InProgress", "Completed")
    # the job goes on; a re-run attaches to it instead of starting a second one
    model = trainer.run(context)
    assert model.job_name == first[0]["TrainingJobName"]
    assert len(clients.sagemaker.list_training_jobs()["TrainingJobSummaries"]) == 1


def test_ctrl_c_can_stop_the_job(local: Any, tmp_path: Path) -> None:
    clients = local.clients()
    # enough epochs (some 50 ms each on a quiet machine) that the job is still training when
    # StopTrainingJob comes, which ends it after the epoch under way
    settings = settings_for(tmp_path, train={"epochs": 200})
    context = context_for(settings, clients, "train", {"manifests": s3_manifests(clients)})
    _ctrl_c_after_the_job_starts(local)
    with pytest.raises(KeyboardInterrupt):
        SageMakerTrainer(progress=False, ask=lambda q: True).run(context)
    local.wait_idle()
    job = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"][0]
    assert job["TrainingJobStatus"] == "Stopped"  # StopTrainingJob really stopped it
    # a stopped job is not reused: a re-run starts a new one
    model = SageMakerTrainer(progress=False).run(context)
    assert model.job_name != job["TrainingJobName"]
