"""Fixtures of the SageMaker tests: fake credentials, moto's S3 and SageMaker, no network.

moto 5 answers every request in-process. A few of its answers differ from SageMaker's, and
are patched on the session's event hooks (never globally):

- ``Describe{Model,EndpointConfig,Endpoint}`` return empty ``VpcConfig``/``DataCaptureConfig``
  dicts, which sagemaker-core's typed models reject: they are dropped; ``DescribeEndpoint``
  echoes the config's data capture instead of its summary: it is reshaped.
- training and tuning jobs complete at once, writing no model; tests that need another outcome
  patch the describe answer themselves (see :func:`patch_answer`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import ACCESS_KEY, BUCKET, REGION, SECRET_KEY

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
pytest.importorskip("sagemaker.core")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake credentials and region; AWS config files, instance metadata and telemetry off."""
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
def aws(aws_env: dict[str, str]) -> Iterator[Any]:
    """:class:`AwsClients` on moto, with a bucket; sagemaker-core shares the session."""
    from sm_helpers import drop_empty

    from pcamflow.sagemaker.clients import AwsClients

    with moto.mock_aws():
        session = boto3.Session(region_name=REGION)
        for operation, keys in {
            "DescribeModel": ("VpcConfig",),
            "DescribeEndpointConfig": ("DataCaptureConfig", "VpcConfig"),
            "DescribeEndpoint": ("DataCaptureConfig",),
        }.items():
            session.events.register(f"after-call.sagemaker.{operation}", drop_empty(keys))
        clients = AwsClients(session, max_attempts=4)
        clients.s3.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        yield clients


