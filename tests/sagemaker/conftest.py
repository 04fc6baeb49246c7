"""Fixtures of the SageMaker tests: fake credentials, SageMaker local mode, no network.

Tests that run jobs, models or endpoints use ``local`` (function scope) or ``shared_local``
(one per test module): SageMaker local mode (:mod:`pcamflow.sagemaker.localmode`), which
runs what the backend creates with the local engine and answers as AWS documents, so no test
writes an output the code under test then reads. ``aws`` is moto alone, for the tests of S3
transfers and clients that start no job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import ACCESS_KEY, BUCKET, REGION, ROLE, SECRET_KEY

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
pytest.importorskip("sagemaker.core")


def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    sdk_config = tmp_path / "sagemaker-config.yaml"
    # the SageMaker SDK's documented opt-out of its telemetry
    sdk_config.write_text(
        "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
        "      TelemetryOptOut: true\n"
    )
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_VALIDATE_ROLE": "false",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(sdk_config),
        "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(sdk_config),
    }
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake credentials and region; AWS config files, instance metadata and telemetry off."""
    return _environment(monkeypatch, tmp_path)


def _start_local() -> Any:
    pytest.importorskip("torch")
    from pcamflow.sagemaker.localmode import LocalMode

    local = LocalMode(region=REGION, threads=1).start()  # the test machine is shared
    iam = local.session.client("iam")
    # the execution role the tests' settings name, trusted by SageMaker
    iam.create_role(RoleName=ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": '
        '{"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}'))
    local.session.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return local


@pytest.fixture
def local(aws_env: dict[str, str]) -> Iterator[Any]:
    """SageMaker local mode, with the test bucket and role; its clients: ``local.clients()``."""
    emulator = _start_local()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def shared_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local mode for a whole test module (tests keep to names of their own)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _environment(monkeypatch, tmp_path_factory.mktemp("aws"))
        emulator = _start_local()
        try:
            yield emulator
        finally:
            emulator.stop()


@pytest.fixture
def aws(aws_env: dict[str, str]) -> Iterator[Any]:
    """:class:`AwsClients` on moto alone, with a bucket: for tests that start no job."""
    from pcamflow.sagemaker.clients import AwsClients

    with moto.mock_aws():
        clients = AwsClients(boto3.Session(region_name=REGION), max_attempts=4)
        clients.s3.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        yield clients
