"""``pcamflow plan``: requests checked against botocore's model, costs, the --yes guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sm_helpers import BUCKET, ROLE, settings_for

from pcamflow.cli import main
from pcamflow.errors import ConfigError
from pcamflow.sagemaker.plan import build_plan, format_plan
from pcamflow.sagemaker.requests import check_request

STAGES = {"converter": "sagemaker", "manifest_builder": "sagemaker", "tuner": "sagemaker",
          "trainer": "sagemaker", "evaluator": "sagemaker", "deployer": "sagemaker"}
RANGES = {"learning_rate": {"type": "continuous", "min_value": 0.001, "max_value": 0.1}}


def test_plan_lists_every_request_and_the_cost(aws_env: Any, tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, pipeline=STAGES, tune={"max_jobs": 4, "ranges": RANGES},
        aws={"prices": {"ml.p3.2xlarge": 4.0, "ml.m5.xlarge": 0.25, "ml.m5.large": 0.1},
             "training": {"estimated_runtime_s": 1800}, "endpoint": {"endpoint_hours": 10}},
    )
    plan = build_plan(settings)
    operations = [(r.stage, r.operation) for r in plan.requests]
    assert ("train", "CreateTrainingJob") in operations
    assert ("tune", "CreateHyperParameterTuningJob") in operations
    assert ("evaluate", "CreateTransformJob") in operations
    assert ("deploy", "CreateEndpoint") in operations
    convert = next(r for r in plan.requests if r.stage == "convert")
    assert convert.count == 262_144 + 32_768 * 2
    train = next(r for r in plan.requests if r.operation == "CreateTrainingJob").params
    assert train["RoleArn"] == ROLE and BUCKET in train["OutputDataConfig"]["S3OutputPath"]
    costs = {c.stage: c.cost for c in plan.costs}
    assert costs == {"tune": pytest.approx(4 * 4.0 * 0.5), "train": pytest.approx(4.0 * 0.5),
                     "evaluate": pytest.approx(0.25), "deploy": pytest.approx(1.0)}
    assert plan.total == pytest.approx(8.0 + 2.0 + 0.25 + 1.0)
    text = format_plan(plan)
    assert "CreateTrainingJob" in text and "total: 11.25" in text


def test_missing_prices_say_so(aws_env: Any, tmp_path: Path) -> None:
    plan = build_plan(settings_for(tmp_path, pipeline={"trainer": "sagemaker",
                                                       "evaluator": "none"}))
    assert plan.spends and plan.total is None
    assert "add it to aws.prices" in format_plan(plan)


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
converter = "none"
manifest_builder = "none"
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
    assert main(["plan", str(config), "--run"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert not (tmp_path / "run" / "run.json").exists()  # nothing ran


def test_local_only_extensions_fail_the_plan(aws_env: Any, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, pipeline={"trainer": "sagemaker", "evaluator": "none"},
                            train={"extensions": {"stain_jitter": 0.05}})
    with pytest.raises(ConfigError, match="stain_jitter"):
        build_plan(settings)
