"""The six SageMaker stages honour the stage contract and register through entry points."""

from __future__ import annotations

import sys

import pytest

from pcamflow.registry import Registry
from pcamflow.testing import check_stage

NAMES = {
    "converter": "S3Converter",
    "manifest_builder": "S3ManifestBuilder",
    "tuner": "SageMakerTuner",
    "trainer": "SageMakerTrainer",
    "evaluator": "SageMakerEvaluator",
    "deployer": "SageMakerDeployer",
}


@pytest.mark.parametrize("kind", sorted(NAMES))
def test_registered_and_conforming(kind: str) -> None:
    cls = Registry.from_entry_points().get(kind, "sagemaker")
    assert cls.__name__ == NAMES[kind]
    check_stage(cls)


def test_stage_modules_import_no_aws_sdk() -> None:
    """Listing and validating stages stays fast: boto3 and sagemaker load only when used."""
    import subprocess

    code = (
        "import sys\n"
        "import pcamflow.sagemaker.data, pcamflow.sagemaker.trainer, pcamflow.sagemaker.tuner\n"
        "import pcamflow.sagemaker.evaluator, pcamflow.sagemaker.deployer\n"
        "print(sorted(m for m in ('boto3', 'botocore', 'sagemaker', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_validate_finds_the_region_without_a_request(tmp_path, monkeypatch) -> None:
    """The region comes from aws.region or the AWS configuration (its profile), read offline."""
    from pcamflow import Settings
    from pcamflow.errors import ConfigError
    from pcamflow.sagemaker.trainer import SageMakerTrainer
    from pcamflow.stages import Context

    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config"
    config.write_text("[profile pathology]\nregion = eu-central-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))

    def validate(aws: dict, services: dict | None = None) -> None:
        settings = Settings.from_dict({"pipeline": {"run_dir": str(tmp_path / "run")},
                                       "aws": aws})
        SageMakerTrainer().validate(Context(
            settings=settings, run_dir=tmp_path / "run", stage_dir=tmp_path / "run" / "train",
            services=services or {}, stage_name="train", offline=True))

    with pytest.raises(ConfigError, match=r"aws\.region: not set, and the AWS configuration"):
        validate({})
    with pytest.raises(ConfigError, match=r"aws\.profile: 'absent' is not in the AWS config"):
        validate({"profile": "absent"})
    validate({"profile": "pathology"})  # the profile's region
    validate({"region": "eu-west-1"})
    validate({}, services={"aws": object()})  # clients passed in know their region
