"""The SageMaker data stages: convert and build manifests locally, then upload to S3.

:class:`S3Converter` runs the local converter, then uploads the image tree to
``s3://<bucket>/<prefix>/<run>/images/`` (parallel, encrypted, skipping what is already
there). :class:`S3ManifestBuilder` builds the manifests with the local builder, rewrites each
``source-ref`` to the image's ``s3://`` URI, and uploads the manifests and ``.lst`` files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs

from pcamflow.artifacts import ImageDataset, Manifests
from pcamflow.errors import ConfigError, DataError
from pcamflow.sagemaker._stage import AwsStage
from pcamflow.stages import Context, DataConverter, ManifestBuilder

__all__ = ["S3Converter", "S3ManifestBuilder", "to_s3_manifest"]

log = logging.getLogger(__name__)


def _upload_plan(context: Context, files: list[tuple[str, int]], note: str) -> Any:
    """The requests of uploading ``files`` ((key under the run's prefix, count) pairs)."""
    from pcamflow.sagemaker.planning import StagePlanner, planned_resolved, planned_root
    from pcamflow.sagemaker.s3 import put_params

    resolved = planned_resolved(context.settings)
    planner = StagePlanner(context, resolved.region)
    root = planned_root(context, resolved)
    for key, count in files:
        params = put_params(resolved.bucket, root.join(key).key, resolved.kms_key_id)
        planner.billed("s3", "PutObject", params, count, note)
        if resolved.kms_key_id:  # SSE-KMS asks KMS for a data key per object
            planner.billed("kms", "GenerateDataKey",
                           {"KeyId": resolved.kms_key_id, "KeySpec": "AES_256"}, count)
    return planner


class S3Converter(AwsStage, DataConverter):
    """Converts PCam to JPEG locally, then uploads the image tree to S3.

    Args:
        progress: show progress bars.
    """

    settings_sections = ("data", "convert", "aws")

    def __init__(self, *, progress: bool = True) -> None:
        self.progress = progress

    def _local(self) -> Any:
        from pcamflow.data.convert import LocalConverter

        return LocalConverter()

    def validate(self, context: Context) -> None:
        from pcamflow.sagemaker.trainer import check_aws

        self._local().validate(context)
        check_aws(context.settings, context.services)

    def plan(self, context: Context) -> Any:
        from pcamflow.sagemaker.planning import source_counts

        counts, read = source_counts(context.settings)
        total = sum(counts.values())
        planner = _upload_plan(context, [("images/train/0/train_000000.jpg", total)],
                               "one per image; already uploaded ones are skipped")
        if not read:
            planner.notes.append("image counts are PCam's split sizes (data.source has no "
                                 "label files yet)")
        resolved_bucket = planner.requests[0].params["Bucket"]
        prefix = planner.requests[0].params["Key"].rsplit("/train/", 1)[0] + "/"
        planner.billed("s3", "ListObjectsV2", {"Bucket": resolved_bucket, "Prefix": prefix},
                       max(1, -(-total // 1000)), "what is already there, 1,000 keys a page")
        return planner.plan()

    def run(self, context: Context) -> ImageDataset:
        from pcamflow.sagemaker.clients import clients_for
        from pcamflow.sagemaker.s3 import run_root, upload_tree

        settings = context.settings
        local = self._local().run(context)
        clients = clients_for(context)
        bucket = clients.bucket(settings.aws)
        target = run_root(context, bucket).join("images")
        root = local.local_root or local.root
        report = upload_tree(
            clients.s3, root, target, kms_key_id=clients.kms_key_arn(settings.aws),
            workers=settings.aws.upload_workers, progress=self.progress,
        )
        log.info("images in %s: %d sent, %d already there", target, report.uploaded,
                 report.skipped)
        return ImageDataset(root=str(target), counts=local.counts, local_root=str(root))


def to_s3_manifest(local_manifest: Path, local_root: Path, s3_root: str, out: Path) -> int:
    """Rewrite a manifest's ``file://`` source-refs to ``s3_root`` + the path under the root.

    Returns:
        The number of lines written.

    Raises:
        DataError: an image lies outside ``local_root``.
    """
    from pcamflow._io import atomic_write
    from pcamflow.data.manifests import read_manifest, uri_to_path

    root = Path(local_root).resolve()
    lines = []
    for ref, label in read_manifest(local_manifest):
        path = uri_to_path(ref).resolve()
        try:
            relative = path.relative_to(root).as_posix()
        except ValueError:
            raise DataError(
                f"{local_manifest}: {path} is not under the image root {root}"
            ) from None
        # key order as the algorithm reads it: the image first, then its class
        lines.append(json.dumps({"source-ref": f"{s3_root.rstrip('/')}/{relative}",
                                 "class": str(label)}))
    with atomic_write(out, encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return len(lines)


class S3ManifestBuilder(AwsStage, ManifestBuilder):
    """Builds augmented manifests with ``s3://`` source-refs and uploads them."""

    settings_sections = ("manifests", "aws")

    def validate(self, context: Context) -> None:
        from pcamflow.sagemaker.trainer import check_aws

        check_aws(context.settings, context.services)
        dataset = context.optional_input(ImageDataset)
        if dataset is not None and not dataset.root.startswith("s3://"):
            raise ConfigError(
                f"manifest_builder = 'sagemaker' needs images in S3, got {dataset.root}; "
                "set pipeline.converter = 'sagemaker'"
            )
        if dataset is not None and not dataset.local_root:
            raise ConfigError(
                f"manifest_builder = 'sagemaker' needs the local copy of {dataset.root} "
                "(the ImageDataset has no local_root)"
            )

    def plan(self, context: Context) -> Any:
        stage = context.stage_name or "manifests"
        files = [(f"{stage}/{split}.{kind}", 1) for split in context.settings.data.splits
                 for kind in ("manifest", "lst")]
        return _upload_plan(context, files, "").plan()

    def run(self, context: Context) -> Manifests:
        from pcamflow.data.manifests import build_manifests
        from pcamflow.sagemaker.clients import clients_for
        from pcamflow.sagemaker.s3 import S3Uri, run_root, upload_file

        self.validate(context)
        settings = context.settings
        dataset = context.input(ImageDataset)
        local_root = Path(str(dataset.local_root))
        local = build_manifests(
            attrs.evolve(dataset, root=str(local_root)), context.stage_dir / "local",
            seed=settings.pipeline.seed, shuffle=settings.manifests.shuffle,
            max_per_class=settings.manifests.max_per_class,
            check_images=settings.manifests.check_images, progress=False,
        )
        clients = clients_for(context)
        bucket = S3Uri.parse(dataset.root).bucket
        target = run_root(context, bucket).join(
            context.stage_name or "manifests"
        )
        kms = clients.kms_key_arn(settings.aws)
        manifests, lsts, counts = {}, {}, {}
        for split, path in local.manifests.items():
            out = context.stage_dir / f"{split}.manifest"
            counts[split] = to_s3_manifest(Path(path), local_root, dataset.root, out)
            manifests[split] = str(upload_file(clients.s3, out, target.join(out.name),
                                               kms_key_id=kms))
        for split, path in local.lst.items():
            lsts[split] = str(upload_file(clients.s3, path, target.join(f"{split}.lst"),
                                          kms_key_id=kms))
        return Manifests(manifests=manifests, lst=lsts, counts=counts, image_root=dataset.root)
