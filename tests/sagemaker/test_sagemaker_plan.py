"""``pcamflow plan``: each SageMaker stage plans its own requests, checked and priced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sm_helpers import BUCKET, ROLE, context_for, s3_manifests, settings_for

from pcamflow.cli import main
from pcamflow.errors import ConfigError
from pcamflow.pipeline import Pipeline
from pcamflow.plan import format_plan
from pcamflow.registry import Registry
from pcamflow.sagemaker.requests import check_request

STAGES = {"converter": "sagemaker", "manifest_builder": "sagemaker", "tuner": "sagemaker",
          "trainer": "sagemaker", "evaluator": "sagemaker", "deployer": "sagemaker"}
# a SageMaker tuner or trainer reads manifests in S3: the data stages before it put them there
ON_S3 = {"converter": "sagemaker", "manifest_builder": "sagemaker"}
TRAIN_ONLY = {**ON_S3, "trainer": "sagemaker", "evaluator": "none"}
RANGES = {"learning_rate": {"type": "continuous", "min_value": 0.001, "max_value": 0.1}}
PCAM = 262_144 + 32_768 * 2


def _plan(settings: Any) -> Any:
    return Pipeline.from_settings(settings, Registry.from_entry_points()).plan(settings)


def _costs(plan: Any) -> dict[tuple[str, str], Any]:
    return {(c.stage, c.item): c for c in plan.costs}


def test_plan_lists_every_request_and_the_cost(aws_env: Any, tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, pipeline=STAGES, tune={"max_jobs": 4, "epochs": 2, "ranges": RANGES},
        train={"epochs": 3},
        aws={"prices": {"ml.p3.2xlarge": 4.0, "ml.m5.xlarge": 0.25, "ml.m5.large": 0.1},
             "prices_region": "eu-west-1",
             "training": {"estimated_runtime_s": 1800}, "endpoint": {"endpoint_hours": 10}},
    )
    plan = _plan(settings)
    counts = {(r.stage, r.operation): r.count for r in plan.requests}
    for operation in [("train", "CreateTrainingJob"), ("tune", "CreateHyperParameterTuningJob"),
                      ("evaluate", "CreateTransformJob"), ("deploy", "CreateEndpoint")]:
        assert counts[operation] == 1
    # per-item requests are there, each with its count
    assert counts[("convert", "PutObject")] == PCAM
    assert counts[("train", "GetObject")] == (262_144 + 32_768) * 3  # Pipe mode, each epoch
    assert counts[("tune", "GetObject")] == (262_144 + 32_768) * 2 * 4
    assert counts[("evaluate", "PutObject")] == 32_768  # the transform's answers
    assert counts[("evaluate", "ListObjectsV2")] == 33
    assert all(r.region == "eu-west-1" for r in plan.requests)
    train = next(r for r in plan.requests if r.operation == "CreateTrainingJob").params
    assert train["RoleArn"] == ROLE and BUCKET in train["OutputDataConfig"]["S3OutputPath"]
    costs = _costs(plan)
    assert costs[("tune", "ml.p3.2xlarge")].cost == pytest.approx(4 * 4.0 * 0.5)
    assert costs[("train", "ml.p3.2xlarge")].cost == pytest.approx(4.0 * 0.5)
    assert costs[("evaluate", "ml.m5.xlarge")].cost == pytest.approx(0.25)
    assert costs[("deploy", "ml.m5.large")].cost == pytest.approx(1.0)
    put = costs[("convert", "s3 PutObject")]
    assert (put.unit, put.price, put.price_region) == ("1,000 requests", 0.005, "us-east-1")
    assert put.cost == pytest.approx(PCAM / 1000 * 0.005)
    # instances: 8 + 2 + 0.25 + 1; S3 at us-east-1 list prices ($0.005 per 1,000 PUT/LIST,
    # $0.0004 per 1,000 GET): convert 327,680 PUT + 328 LIST, manifests 6 PUT, tune and train
    # 2,359,296 and 884,736 GET, evaluate 2 x 32,768 GET + 32,768 PUT + 33 LIST + 1 GET + 1 PUT
    assert plan.total == pytest.approx(11.25 + 3.1279076)
    text = format_plan(plan)
    assert "CreateTrainingJob" in text and f"total: {plan.total:.2f}" in text
    assert "S3/KMS list prices are for us-east-1, this run is in eu-west-1" in text


def test_a_grid_is_priced_by_its_real_size(aws_env: Any, tmp_path: Path) -> None:
    ranges = {"optimizer": {"type": "categorical", "values": ["sgd", "adam", "nag"]},
              "mini_batch_size": {"type": "integer", "min_value": 16, "max_value": 18}}
    settings = settings_for(
        tmp_path, pipeline={**ON_S3, "tuner": "sagemaker", "trainer": "none", "evaluator": "none"},
        tune={"strategy": "Grid", "max_jobs": 4, "ranges": ranges},
        aws={"prices": {"ml.p3.2xlarge": 1.0}, "training": {"estimated_runtime_s": 3600}})
    plan = _plan(settings)
    tuning = _costs(plan)[("tune", "ml.p3.2xlarge")]
    assert tuning.quantity == 9 and "9 training jobs" in tuning.note  # 3 x 3, not max_jobs


def test_an_s3_only_run_spends_and_needs_yes(aws_env: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    only_s3 = {"converter": "sagemaker", "manifest_builder": "sagemaker", "trainer": "none",
               "evaluator": "none"}
    plan = _plan(settings_for(tmp_path, pipeline=only_s3))
    # 327,680 PUT and 328 LIST to convert, 6 PUT of manifests, at $0.005 per 1,000
    assert plan.spends and plan.total == pytest.approx(1.64007)
    assert {c.unit for c in plan.costs} == {"1,000 requests"}  # no instance at all
    config = _write(tmp_path, f"""
[pipeline]
run_dir = "{tmp_path / 'run'}"
converter = "sagemaker"
manifest_builder = "sagemaker"
trainer = "none"
evaluator = "none"
[aws]
region = "eu-west-1"
role_arn = "{ROLE}"
bucket = "{BUCKET}"
""")
    assert main(["run", str(config)]) == 2
    assert "--yes" in capsys.readouterr().err
    assert not (tmp_path / "run" / "run.json").exists()


def test_the_trainer_after_a_tuner_plans_placeholders_for_the_tuned_values(
    aws_env: Any, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, pipeline={**TRAIN_ONLY, "tuner": "sagemaker"},
        tune={"epochs": 1, "ranges": RANGES}, train={"epochs": 7})
    plan = _plan(settings)
    sent = next(r for r in plan.requests if r.operation == "CreateTrainingJob").params
    assert sent["HyperParameters"]["learning_rate"] == "<best of the tuning job>"
    assert sent["HyperParameters"]["epochs"] == "7"  # [train]'s, never the tuning job's
    tuning = next(r for r in plan.requests if r.operation == "CreateHyperParameterTuningJob")
    assert tuning.params["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] == "1"


def test_a_kms_alias_and_local_storage_are_planned_as_they_are_sent(
    aws_env: Any, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, pipeline=TRAIN_ONLY,
        aws={"kms_key_id": "alias/pcam", "training": {"instance_type": "ml.g4dn.xlarge"}})
    train = next(r for r in _plan(settings).requests if r.operation == "CreateTrainingJob")
    key = train.params["OutputDataConfig"]["KmsKeyId"]
    assert key == "arn:aws:kms:eu-west-1:<account>:key/<key of alias/pcam>"
    assert "VolumeKmsKeyId" not in train.params["ResourceConfig"]


def test_a_small_image_depth_at_a_larger_size_is_a_plan_warning(
    aws_env: Any, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, pipeline=TRAIN_ONLY,
                            train={"num_layers": 20, "image_shape": "3,48,48"})
    plan = _plan(settings)
    assert any("small-image (CIFAR) depth" in w for w in plan.warnings)
    assert "warning: train.num_layers: 20" in format_plan(plan)


def test_the_planned_training_request_is_the_one_sent(local: Any, tmp_path: Path) -> None:
    """Plan and run share the trainer's request builder: only the job's name differs."""
    from pcamflow.sagemaker.trainer import SageMakerTrainer

    clients = local.clients()
    settings = settings_for(tmp_path, train={"epochs": 2})
    context = context_for(settings, clients, "train", {"manifests": s3_manifests(clients)})
    trainer = SageMakerTrainer(progress=False)
    planned = next(r for r in trainer.plan(context).requests
                   if r.operation == "CreateTrainingJob").params
    model = trainer.run(context)
    sent = clients.sagemaker.describe_training_job(TrainingJobName=model.job_name)
    for key in ("HyperParameters", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
                "RoleArn", "StoppingCondition"):
        assert planned[key] == sent[key], key
    assert planned["AlgorithmSpecification"]["TrainingImage"] == (
        sent["AlgorithmSpecification"]["TrainingImage"])


def test_missing_prices_say_so(aws_env: Any, tmp_path: Path) -> None:
    plan = _plan(settings_for(tmp_path, pipeline=TRAIN_ONLY))
    assert plan.spends and plan.total is None
    assert "no price known" in format_plan(plan)


def test_a_request_outside_the_api_model_is_reported() -> None:
    with pytest.raises(ConfigError, match="VolumeSizeInGB"):
        check_request("sagemaker", "CreateTrainingJob", {
            "TrainingJobName": "x", "RoleArn": ROLE,
            "AlgorithmSpecification": {"TrainingInputMode": "Pipe"},
            "OutputDataConfig": {"S3OutputPath": "s3://b/o"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1,
                               "VolumeSizeInGB": "fifty"},
            "StoppingCondition": {"MaxRuntimeInSeconds": 60},
        })


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_cli_plan_and_the_yes_guard(aws_env: Any, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path, f"""
[pipeline]
run_dir = "{tmp_path / 'run'}"
converter = "sagemaker"
manifest_builder = "sagemaker"
trainer = "sagemaker"
evaluator = "none"
[aws]
region = "eu-west-1"
role_arn = "{ROLE}"
bucket = "{BUCKET}"
[aws.prices]
"ml.p3.2xlarge" = 3.0
""")
    assert main(["plan", str(config)]) == 0
    out = capsys.readouterr().out
    assert "CreateTrainingJob" in out and "AugmentedManifestFile" in out
    assert main(["plan", str(config), "--json"]) == 0
    assert '"operation": "CreateTrainingJob"' in capsys.readouterr().out
    assert main(["plan", str(config), "--run"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert not (tmp_path / "run" / "run.json").exists()  # nothing ran


def test_local_only_extensions_fail_the_plan(aws_env: Any, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, pipeline=TRAIN_ONLY,
                            train={"extensions": {"stain_jitter": 0.05}})
    with pytest.raises(ConfigError, match="stain_jitter"):
        _plan(settings)
