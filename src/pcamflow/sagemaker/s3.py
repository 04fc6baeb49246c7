"""S3 transfers: parallel, encrypted, resumable uploads of an image tree, and small files.

:func:`upload_tree` lists what is already under the target prefix and uploads only the files
that are missing there or whose content differs, many at once through boto3's transfer manager,
each encrypted at rest: SSE-KMS with ``aws.kms_key_id`` when set, SSE-S3 otherwise. An object
counts as the same file only when a checksum says so: the ETag, which S3 documents as the MD5
of the data for a single-part upload stored with SSE-S3, or else the SHA-256 checksum every
upload stores with the object (``ChecksumAlgorithm=SHA256``), asked for with ``HeadObject``
(and, with SSE-KMS, under the same key). An S3 object appears whole or not at all, so an
interrupted upload resumes by running it again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from pcamflow.errors import AwsError, ConfigError

if TYPE_CHECKING:
    from pcamflow.stages import Context

__all__ = [
    "S3Uri",
    "UploadReport",
    "download_file",
    "encryption_args",
    "existing_objects",
    "put_params",
    "read_object",
    "run_prefix",
    "run_root",
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
        skipped: files already in S3 with the same content (checksum).
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


UPLOAD_CHECKSUM = {"ChecksumAlgorithm": "SHA256"}
"""Every upload stores a SHA-256 checksum with the object, which a re-run compares."""


def put_params(bucket: str, key: str, kms_key_id: str | None) -> dict[str, str]:
    """The ``PutObject`` parameters of every upload (what ``pcamflow plan`` shows, too)."""
    return {"Bucket": bucket, "Key": key, **encryption_args(kms_key_id), **UPLOAD_CHECKSUM}


def _extra_args(kms_key_id: str | None) -> dict[str, Any]:
    params: dict[str, Any] = put_params("", "", kms_key_id)
    del params["Bucket"], params["Key"]
    return params


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


def existing_objects(s3: Any, prefix: S3Uri) -> dict[str, dict[str, Any]]:
    """Key -> ``Size``, ``ETag`` and ``ChecksumAlgorithm`` of each object under ``prefix``."""
    found: dict[str, dict[str, Any]] = {}
    key_prefix = prefix.key.rstrip("/") + "/" if prefix.key else ""
    paginator = s3.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=prefix.bucket, Prefix=key_prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = {
                    "Size": int(item["Size"]),
                    "ETag": str(item.get("ETag", "")).strip('"'),
                    "ChecksumAlgorithm": list(item.get("ChecksumAlgorithm", [])),
                }
    except Exception as error:  # botocore ClientError: NoSuchBucket, AccessDenied, ...
        raise AwsError(f"cannot list {prefix}: {error}") from None
    return found


def _digests(path: Path) -> tuple[str, str]:
    """The MD5 (hex, as an ETag) and SHA-256 (base64, as an S3 checksum) of a file."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), base64.b64encode(sha.digest()).decode()


def same_content(
    s3: Any, bucket: str, key: str, path: Path, listed: Mapping[str, Any],
    kms_key_id: str | None = None,
) -> bool:
    """Whether the object ``key`` (as listed) holds exactly the file ``path``.

    Without KMS, a single-part object's ETag is the MD5 of its data (S3 documents this for
    SSE-S3 and unencrypted objects), so the listing answers. Otherwise the SHA-256 checksum
    stored at upload is asked for (``HeadObject`` with ``ChecksumMode=ENABLED``); with a KMS
    key the object must also be encrypted under it. Anything else counts as different.
    """
    if listed.get("Size") != path.stat().st_size:
        return False
    md5, sha = _digests(path)
    etag = str(listed.get("ETag", ""))
    if not kms_key_id and etag and "-" not in etag:
        return etag == md5
    if "SHA256" not in listed.get("ChecksumAlgorithm", []):
        return False
    try:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except Exception as error:  # botocore ClientError: gone since the listing, or no access
        log.debug("cannot compare %s with s3://%s/%s: %s", path, bucket, key, error)
        return False
    if kms_key_id and not str(head.get("SSEKMSKeyId", "")).endswith(kms_key_id.split("/")[-1]):
        return False
    return head.get("ChecksumSHA256") == sha


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

    Files already under ``target`` with the same content (see :func:`same_content`) are
    skipped, so a re-run after an interruption sends only what is missing or changed.

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
    candidates = [(path, target.join(path.relative_to(root).as_posix()).key)
                  for path in _files(root, patterns)]

    def unchanged(item: tuple[Path, str]) -> bool:
        path, key = item
        listed = have.get(key)
        return listed is not None and same_content(s3, target.bucket, key, path, listed,
                                                   kms_key_id)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        same = list(pool.map(unchanged, candidates))
    todo = [item for item, kept in zip(candidates, same, strict=True) if not kept]
    skipped = len(candidates) - len(todo)
    log.info("uploading %d files to %s (%d already there)", len(todo), target, skipped)
    extra = _extra_args(kms_key_id)
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
    extra = _extra_args(kms_key_id)
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


def run_prefix(bucket: str, prefix: str, run_dir: str | Path, run_id: str) -> S3Uri:
    """Where a run keeps its objects: ``s3://<bucket>/<prefix>/<run folder's name>-<run id>``.

    The run id (kept in ``run.json``) keeps apart two runs whose folders share a name.
    """
    return S3Uri(bucket, "").join(prefix, f"{Path(run_dir).resolve().name}-{run_id}")


def run_root(context: Context, bucket: str) -> S3Uri:
    """:func:`run_prefix` of the run ``context`` belongs to."""
    from pcamflow._io import run_id

    rid = context.run_id or run_id(context.run_dir, create=True)
    return run_prefix(bucket, context.settings.aws.prefix, context.run_dir, str(rid))
