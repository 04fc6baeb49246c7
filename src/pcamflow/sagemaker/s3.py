"""S3 transfers: parallel, encrypted, resumable uploads of an image tree, and small files.

:func:`upload_tree` lists what is already under the target prefix and uploads only the files
that are missing there (or differ in size), many at once through boto3's transfer manager, each
encrypted at rest: SSE-KMS with ``aws.kms_key_id`` when set, SSE-S3 otherwise. An S3 object
appears whole or not at all, so an interrupted upload resumes by running it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from pcamflow.errors import AwsError, ConfigError

__all__ = [
    "S3Uri",
    "UploadReport",
    "download_file",
    "encryption_args",
    "existing_objects",
    "read_object",
    "run_prefix",
    "s3_probe",
    "upload_file",
    "upload_tree",
]

log = logging.getLogger(__name__)


@attrs.frozen
class S3Uri:
    """An ``s3://bucket/key`` location.

    >>> S3Uri.parse("s3://bucket/a/b.jpg").join("c")
    S3Uri(bucket='bucket', key='a/b.jpg/c')
    """

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """Split ``s3://bucket/key``; raises :class:`ConfigError` for anything else."""
        if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
            raise ConfigError(f"{uri!r} is not an s3://bucket/key URI")
        bucket, _, key = uri[5:].partition("/")
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Uri:
        """This location with ``parts`` appended, ``/``-separated."""
        keys = [self.key.rstrip("/")] if self.key else []
        keys += [p.strip("/") for p in parts if p]
        return S3Uri(self.bucket, "/".join(keys))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@attrs.frozen
class UploadReport:
    """What :func:`upload_tree` did.

    Attributes:
        uploaded: files sent this time.
        skipped: files already in S3 with the same size.
        bytes_sent: bytes sent this time.
    """

    uploaded: int
    skipped: int
    bytes_sent: int


def encryption_args(kms_key_id: str | None) -> dict[str, str]:
    """``ExtraArgs`` of an encrypted upload: SSE-KMS with the key given, else SSE-S3."""
    if kms_key_id:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
    return {"ServerSideEncryption": "AES256"}


def s3_probe(s3: Any) -> Callable[[str], bool]:
    """A probe (see :mod:`pcamflow.probes`) for ``s3://`` locations, through ``s3``, a boto3 client.

    A location is there when its object is (``HeadObject``), or, for a prefix ending in ``/``,
    when an object lies under it.
    """

    def probe(location: str) -> bool:
        uri = S3Uri.parse(location)
        if not uri.key or uri.key.endswith("/"):
            answer = s3.list_objects_v2(Bucket=uri.bucket, Prefix=uri.key, MaxKeys=1)
            return int(answer.get("KeyCount", 0)) > 0
        try:
            s3.head_object(Bucket=uri.bucket, Key=uri.key)
        except Exception:  # botocore's ClientError: 404 and 403 alike mean "not usable"
            return False
        return True

    return probe


def existing_objects(s3: Any, prefix: S3Uri) -> dict[str, int]:
    """Key -> size of every object under ``prefix``."""
    found: dict[str, int] = {}
    key_prefix = prefix.key.rstrip("/") + "/" if prefix.key else ""
    paginator = s3.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=prefix.bucket, Prefix=key_prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = int(item["Size"])
    except Exception as error:  # botocore ClientError: NoSuchBucket, AccessDenied, ...
        raise AwsError(f"cannot list {prefix}: {error}") from None
    return found


def _files(root: Path, patterns: Iterable[str]) -> list[Path]:
    files: set[Path] = set()
    for pattern in patterns:
        files.update(p for p in root.glob(pattern) if p.is_file())
    return sorted(files)


def upload_tree(
    s3: Any,
    root: str | Path,
    target: S3Uri,
    *,
    kms_key_id: str | None = None,
    workers: int = 16,
    patterns: Iterable[str] = ("**/*.jpg",),
    progress: bool = True,
) -> UploadReport:
    """Upload the files under ``root`` to ``target``, keeping their relative paths.

    Files already under ``target`` with the same size are skipped, so a re-run after an
    interruption sends only what is missing.

    Args:
        s3: a boto3 S3 client (its connection pool should hold ``workers`` connections).
        root: the local folder.
        target: the S3 prefix the folder maps to.
        kms_key_id: encrypt with this KMS key (None: SSE-S3).
        workers: uploads at once.
        patterns: glob patterns of the files to send, relative to ``root``.
        progress: show a progress bar.

    Raises:
        AwsError: listing or an upload failed; what was uploaded stays uploaded.
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from tqdm.auto import tqdm

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder to upload")
    have = existing_objects(s3, target)
    todo: list[tuple[Path, str]] = []
    skipped = 0
    for path in _files(root, patterns):
        key = target.join(path.relative_to(root).as_posix()).key
        if have.get(key) == path.stat().st_size:
            skipped += 1
        else:
            todo.append((path, key))
    log.info("uploading %d files to %s (%d already there)", len(todo), target, skipped)
    extra = encryption_args(kms_key_id)
    config = TransferConfig(max_concurrency=workers, use_threads=True)
    lock = threading.Lock()
    bar = tqdm(
        total=len(todo), unit="file", desc=f"upload {target}", disable=None if progress else True
    )

    from s3transfer.subscribers import BaseSubscriber

    class _Tick(BaseSubscriber):  # type: ignore[misc]
        def on_done(self, future: Any, **kwargs: Any) -> None:
            with lock:  # transfer threads finish concurrently
                bar.update(1)

    failures: list[str] = []
    sent = 0
    try:
        with create_transfer_manager(s3, config) as manager:
            futures = [
                (key, manager.upload(str(path), target.bucket, key, extra_args=extra,
                                     subscribers=[_Tick()]))
                for path, key in todo
            ]
            for (key, future), (path, _) in zip(futures, todo, strict=True):
                try:
                    future.result()
                    sent += path.stat().st_size
                except Exception as error:  # keep the others; report every failure at once
                    failures.append(f"{key}: {error}")
    finally:
        bar.close()
    if failures:
        shown = "; ".join(failures[:3])
        raise AwsError(
            f"{len(failures)} of {len(todo)} uploads to {target} failed ({shown}); "
            "run again to send what is missing"
        )
    return UploadReport(uploaded=len(todo), skipped=skipped, bytes_sent=sent)


def upload_file(
    s3: Any,
    path: str | Path,
    target: S3Uri,
    *,
    kms_key_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> S3Uri:
    """Upload one file, encrypted; returns where it went."""
    extra: dict[str, Any] = encryption_args(kms_key_id)
    if metadata:
        extra["Metadata"] = dict(metadata)
    try:
        s3.upload_file(str(path), target.bucket, target.key, ExtraArgs=extra)
    except Exception as error:  # boto3's S3UploadFailedError and botocore errors
        raise AwsError(f"cannot upload {path} to {target}: {error}") from None
    return target


def download_file(s3: Any, source: S3Uri, path: str | Path) -> Path:
    """Download one object to ``path`` (written whole, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        s3.download_file(source.bucket, source.key, str(tmp))
    except Exception as error:  # botocore ClientError: 404, 403, ...
        tmp.unlink(missing_ok=True)
        raise AwsError(f"cannot download {source}: {error}") from None
    tmp.replace(path)
    return path


def read_object(s3: Any, source: S3Uri) -> bytes:
    """The bytes of one (small) object."""
    try:
        return bytes(s3.get_object(Bucket=source.bucket, Key=source.key)["Body"].read())
    except Exception as error:  # botocore ClientError: NoSuchKey, AccessDenied, ...
        raise AwsError(f"cannot read {source}: {error}") from None


def run_prefix(bucket: str, prefix: str, run_dir: str | Path) -> S3Uri:
    """Where a run keeps its objects: ``s3://<bucket>/<prefix>/<run folder's name>``."""
    return S3Uri(bucket, "").join(prefix, Path(run_dir).resolve().name)
