"""AWS clients: standard-mode retries of throttled calls, defaults, no credential in logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import ACCESS_KEY, SECRET_KEY, context_for, s3_manifests, settings_for

from pcamflow.errors import ConfigError
from pcamflow.sagemaker.clients import AwsClients, services_for


def _throttle_first(session_or_client: Any, operation: str, times: int) -> list[str]:
    """Answer the first ``times`` sends of ``operation`` with a ThrottlingException."""
    from botocore.awsrequest import AWSResponse

    seen: list[str] = []

    class _Raw:
        def stream(self, **kwargs: Any) -> Any:
            yield b""

    def handler(request: Any, **kwargs: Any) -> Any:
        seen.append(operation)
        if len(seen) <= times:
            body = b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'
            response = AWSResponse(request.url, 400,
                                   {"x-amzn-ErrorType": "ThrottlingException"}, _Raw())
            response._content = body
            return response
        return None

    session_or_client.events.register_first(f"before-send.sagemaker.{operation}", handler)
    return seen


def test_a_throttled_call_is_retried(aws: Any) -> None:
    sends = _throttle_first(aws.sagemaker.meta, "ListTrainingJobs", times=2)
    answer = aws.sagemaker.list_training_jobs()
    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert len(sends) == 3
    assert aws.sagemaker.meta.config.retries["mode"] == "standard"


def test_retries_give_up_after_max_attempts(aws_env: Any) -> None:
    import boto3
    from botocore.exceptions import ClientError
    from moto import mock_aws

    with mock_aws():
        clients = AwsClients(boto3.Session(region_name="eu-west-1"), max_attempts=2)
        sends = _throttle_first(clients.sagemaker.meta, "ListModels", times=5)
        with pytest.raises(ClientError, match="ThrottlingException"):
            clients.sagemaker.list_models()
        assert len(sends) == 2


def test_default_bucket_and_missing_role(aws: Any, tmp_path: Path) -> None:
    from pcamflow.config import AwsSettings

    assert aws.default_bucket_name() == "sagemaker-eu-west-1-123456789012"
    assert aws.bucket(AwsSettings(), create=False) == "sagemaker-eu-west-1-123456789012"
    assert aws.bucket(AwsSettings(bucket="mine")) == "mine"
    # as the SageMaker SDK does: the default bucket is made when missing
    assert aws.bucket(AwsSettings()) == "sagemaker-eu-west-1-123456789012"
    aws.s3.head_bucket(Bucket="sagemaker-eu-west-1-123456789012")
    with pytest.raises(ConfigError, match=r"aws\.role_arn"):
        aws.role_arn(AwsSettings())  # moto's caller is a user, not a SageMaker role
    assert set(services_for(aws)) == {"aws", "probes"}
    assert set(services_for(aws)["probes"]) == {"s3"}


def test_no_credential_in_any_log_line(local: Any, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    from pcamflow.sagemaker.trainer import SageMakerTrainer

    clients = local.clients()
    credentials = clients.session.get_credentials().get_frozen_credentials()
    caplog.set_level(logging.DEBUG)
    context = context_for(settings_for(tmp_path), clients, "train",
                          {"manifests": s3_manifests(clients)})
    SageMakerTrainer(progress=False).run(context)
    assert caplog.records  # botocore, sagemaker-core and pcamflow all logged
    for record in caplog.records:
        line = record.getMessage()
        assert credentials.secret_key not in line, record.name
        if record.name.startswith("pcamflow"):  # botocore's DEBUG lines show the token header
            assert credentials.access_key not in line and credentials.token not in line
    assert credentials.access_key not in repr(clients)
    assert SECRET_KEY not in repr(clients) and ACCESS_KEY not in repr(clients)
