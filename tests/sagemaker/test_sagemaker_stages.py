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
