"""Helpers of the SageMaker tests (moto answers, settings, contexts, manifests in S3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

REGION = "eu-west-1"
BUCKET = "pcamflow-test-bucket"
ROLE = "arn:aws:iam::123456789012:role/pcamflow-sagemaker"
ACCESS_KEY = "AKIAPCAMFLOWTEST0001"
SECRET_KEY = "pcamflowFakeSecretKeyThatMustNeverBeLogged01"


def drop_empty(keys: tuple[str, ...]) -> Callable[..., None]:
    """An answer hook dropping moto's empty ``keys`` dicts (and giving DescribeEndpoint's
    data capture the summary shape SageMaker answers with)."""

    def handler(parsed: dict[str, Any], **kwargs: Any) -> None:
        for key in keys:
            if parsed.get(key) == {}:
                del parsed[key]
        capture = parsed.get("DataCaptureConfig")
        if "EndpointStatus" in parsed and capture and "CaptureStatus" not in capture:
            parsed["DataCaptureConfig"] = {
                "EnableCapture": capture.get("EnableCapture", True),
                "CaptureStatus": "Started",
                "CurrentSamplingPercentage": capture.get("InitialSamplingPercentage", 100),
                "DestinationS3Uri": capture.get("DestinationS3Uri", ""),
                **({"KmsKeyId": capture["KmsKeyId"]} if "KmsKeyId" in capture else {}),
            }

    return handler


def patch_answer(session: Any, operation: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Let ``change`` edit every parsed answer of a SageMaker ``operation`` (e.g. to fail it)."""

    def handler(parsed: dict[str, Any], **kwargs: Any) -> None:
        change(parsed)

    session.events.register(f"after-call.sagemaker.{operation}", handler)


def fake_answer(session: Any, operation: str, answer: Callable[[dict[str, Any]], dict[str, Any]],
                calls: list[dict[str, Any]] | None = None) -> None:
    """Answer a SageMaker ``operation`` moto lacks with ``answer(params)``, recording calls."""
    import json

    from botocore.awsrequest import AWSResponse

    def handler(params: dict[str, Any], **kwargs: Any) -> Any:
        body = params.get("body") or b"{}"
        request = json.loads(body.decode() if isinstance(body, bytes) else body)
        if calls is not None:
            calls.append(request)
        return AWSResponse(None, 200, {}, None), answer(request)

    session.events.register(f"before-call.sagemaker.{operation}", handler)


def kms_alias(clients: Any, alias: str = "alias/pcam") -> str:
    """A KMS key with ``alias`` in moto; returns the key's ARN."""
    kms = clients.client("kms")
    key = kms.create_key(Description="pcamflow tests")["KeyMetadata"]
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    return str(key["Arn"])


def settings_for(tmp_path: Path, **tables: Any) -> Any:
    """Settings of a SageMaker run in ``tmp_path``, quick polling, the test bucket and role."""
    from pcamflow.config import Settings

    aws = {"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "poll_s": 0.0}
    aws.update(tables.pop("aws", {}))
    pipeline = {"run_dir": str(tmp_path / "run"), **tables.pop("pipeline", {})}
    return Settings.from_dict({"pipeline": pipeline, "aws": aws, **tables})


def context_for(settings: Any, clients: Any, stage: str, artifacts: dict[str, Any]) -> Any:
    """A stage's context, as the pipeline makes it, with the AWS clients passed in."""
    from pcamflow._io import run_id
    from pcamflow.stages import Context

    stage_dir = settings.run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    return Context(
        settings=settings, run_dir=settings.run_dir, stage_dir=stage_dir,
        artifacts=artifacts, services={"aws": clients}, stage_name=stage,
        run_id=str(run_id(settings.run_dir, create=True)),
    )


def run_key(settings: Any) -> str:
    """The key prefix of a run's objects: ``<aws.prefix>/<run folder>-<run id>``."""
    from pcamflow._io import run_id

    rid = run_id(settings.run_dir, create=True)
    return f"{settings.aws.prefix}/{settings.run_dir.name}-{rid}"


def s3_manifests(clients: Any, count: int = 6) -> Any:
    """Train/valid/test manifests in S3 (``s3://`` source-refs), as the S3 builder makes them."""
    import json

    from pcamflow.artifacts import Manifests

    uris, counts = {}, {}
    for split in ("train", "valid", "test"):
        lines = [
            json.dumps({"source-ref": f"s3://{BUCKET}/images/{split}/{i % 2}/{split}_{i:06d}.jpg",
                        "class": str(i % 2)})
            for i in range(count)
        ]
        key = f"manifests/{split}.manifest"
        clients.s3.put_object(Bucket=BUCKET, Key=key, Body="\n".join(lines) + "\n")
        uris[split], counts[split] = f"s3://{BUCKET}/{key}", count
    return Manifests(manifests=uris, counts=counts, image_root=f"s3://{BUCKET}/images")
