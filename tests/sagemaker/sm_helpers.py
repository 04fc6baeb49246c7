"""Helpers of the SageMaker tests (settings, contexts, images and manifests in S3, a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REGION = "eu-west-1"
BUCKET = "pcamflow-test-bucket"
ROLE = "arn:aws:iam::123456789012:role/pcamflow-sagemaker"
ACCESS_KEY = "AKIAPCAMFLOWTEST0001"
SECRET_KEY = "pcamflowFakeSecretKeyThatMustNeverBeLogged01"


def kms_alias(clients: Any, alias: str = "alias/pcam") -> str:
    """A KMS key with ``alias`` in moto; returns the key's ARN."""
    kms = clients.client("kms")
    key = kms.create_key(Description="pcamflow tests")["KeyMetadata"]
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    return str(key["Arn"])


TINY_TRAIN = {"num_layers": 20, "image_shape": "3,28,28", "epochs": 1, "mini_batch_size": 8,
              "optimizer": "adam", "learning_rate": 0.01}
"""Hyperparameters small enough for a test: ResNet-20 at 28 px (the depth the algorithm builds
at that size), one epoch."""


def settings_for(tmp_path: Path, **tables: Any) -> Any:
    """Settings of a SageMaker run in ``tmp_path``: quick polling, the test bucket and role,
    and :data:`TINY_TRAIN` under what the test gives in ``train``."""
    from pcamflow.config import Settings

    aws = {"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "poll_s": 0.05}
    aws.update(tables.pop("aws", {}))
    pipeline = {"run_dir": str(tmp_path / "run"), **tables.pop("pipeline", {})}
    train = {**TINY_TRAIN, **tables.pop("train", {})}
    return Settings.from_dict({"pipeline": pipeline, "aws": aws, "train": train, **tables})


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


def patch_jpeg(label: int, seed: int) -> bytes:
    """A 96x96 JPEG whose class shows: dark for 0, light for 1, with noise."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = 70 if label == 0 else 190
    pixels = np.clip(base + rng.normal(0, 25, (96, 96, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def s3_manifests(clients: Any, count: int = 8, prefix: str = "") -> Any:
    """Train/valid/test images and augmented manifests in S3, as the S3 builder makes them.

    Args:
        clients: the AwsClients (or an emulator's).
        count: images in the train split, classes alternating; valid has ``count - 2`` (at
            least 2) and test ``count + 2``, so that a count taken from the wrong split shows.
        prefix: a key prefix, to keep one test's objects apart from another's.
    """
    import json
    import zlib

    from pcamflow.artifacts import Manifests

    sizes = {"train": count, "valid": max(2, count - 2), "test": count + 2}
    uris, counts = {}, {}
    for split, size in sizes.items():
        lines = []
        for i in range(size):
            key = f"{prefix}images/{split}/{i % 2}/{split}_{i:06d}.jpg"
            body = patch_jpeg(i % 2, zlib.crc32(key.encode()))
            clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            lines.append(json.dumps({"source-ref": f"s3://{BUCKET}/{key}", "class": str(i % 2)}))
        key = f"{prefix}manifests/{split}.manifest"
        clients.s3.put_object(Bucket=BUCKET, Key=key, Body="\n".join(lines) + "\n")
        uris[split], counts[split] = f"s3://{BUCKET}/{key}", size
    return Manifests(manifests=uris, counts=counts, image_root=f"s3://{BUCKET}/{prefix}images")


def train_model_in(local: Any, tmp_path: Path, prefix: str = "model/") -> str:
    """A model trained by a local-mode training job; returns its ``model.tar.gz`` URI."""
    from pcamflow.sagemaker.trainer import SageMakerTrainer

    clients = local.clients()
    settings = settings_for(tmp_path)
    context = context_for(settings, clients, "train",
                          {"manifests": s3_manifests(clients, count=8, prefix=prefix)})
    return SageMakerTrainer(progress=False).run(context).uri
