"""S3 data stages and uploads against moto: encrypted, parallel, resumable; s3:// manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import BUCKET, context_for, run_key, settings_for

from pcamflow.artifacts import ImageDataset, Manifests
from pcamflow.errors import AwsError
from pcamflow.pipeline import Pipeline
from pcamflow.probes import by_scheme
from pcamflow.sagemaker.clients import services_for
from pcamflow.sagemaker.s3 import S3Uri, s3_probe, upload_tree
from pcamflow.stages import Context, DataConverter


def _tree(root: Path, n: int = 12) -> Path:
    for i in range(n):
        path = root / "train" / str(i % 2) / f"train_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff" + bytes([i]) * (100 + i))
    return root


def _keys(clients: Any, prefix: str) -> list[str]:
    listing = clients.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_upload_is_encrypted_and_resumes_after_an_interruption(aws: Any, tmp_path: Path) -> None:
    root = _tree(tmp_path / "images")
    target = S3Uri(BUCKET, "run/images")
    failing = {"run/images/train/0/train_000004.jpg", "run/images/train/1/train_000007.jpg"}

    def refuse(params: dict[str, Any], **kwargs: Any) -> None:
        if params["Key"] in failing:
            raise ConnectionError("network went away")

    aws.s3.meta.events.register("before-parameter-build.s3.PutObject", refuse)
    with pytest.raises(AwsError, match="2 of 12 uploads") as caught:
        upload_tree(aws.s3, root, target, workers=4, progress=False)
    assert "run again" in str(caught.value)
    assert len(_keys(aws, "run/images/")) == 10  # the others were kept

    aws.s3.meta.events.unregister("before-parameter-build.s3.PutObject", refuse)
    report = upload_tree(aws.s3, root, target, workers=4, progress=False)
    assert (report.uploaded, report.skipped) == (2, 10)
    assert len(_keys(aws, "run/images/")) == 12
    head = aws.s3.head_object(Bucket=BUCKET, Key="run/images/train/0/train_000004.jpg")
    assert head["ServerSideEncryption"] == "AES256"
    assert upload_tree(aws.s3, root, target, progress=False).uploaded == 0


def test_upload_with_a_kms_key(aws: Any, tmp_path: Path) -> None:
    kms = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    root = _tree(tmp_path / "images", n=2)
    upload_tree(aws.s3, root, S3Uri(BUCKET, "k"), kms_key_id=kms, progress=False)
    head = aws.s3.head_object(Bucket=BUCKET, Key="k/train/0/train_000000.jpg")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert kms in head["SSEKMSKeyId"]
    # the SHA-256 checksum stored at upload tells a re-run that nothing changed
    assert upload_tree(aws.s3, root, S3Uri(BUCKET, "k"), kms_key_id=kms,
                       progress=False).skipped == 2
    # under another key, the objects are sent again (encrypted under the new key)
    other = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    report = upload_tree(aws.s3, root, S3Uri(BUCKET, "k"), kms_key_id=other, progress=False)
    assert (report.uploaded, report.skipped) == (2, 0)


def test_an_object_of_the_same_size_but_other_content_is_sent_again(
    aws: Any, tmp_path: Path
) -> None:
    root = _tree(tmp_path / "images", n=3)
    target = S3Uri(BUCKET, "same-size")
    upload_tree(aws.s3, root, target, progress=False)
    changed = root / "train" / "1" / "train_000001.jpg"
    data = changed.read_bytes()
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one byte differs, same size
    report = upload_tree(aws.s3, root, target, progress=False)
    assert (report.uploaded, report.skipped) == (1, 2)
    sent = aws.s3.get_object(Bucket=BUCKET, Key="same-size/train/1/train_000001.jpg")
    assert sent["Body"].read() == changed.read_bytes()


def test_two_runs_with_folders_of_one_name_keep_apart_in_s3(aws: Any, tmp_path: Path) -> None:
    from sm_helpers import settings_for

    from pcamflow.sagemaker.s3 import run_root

    first = settings_for(tmp_path / "a")
    second = settings_for(tmp_path / "b")
    assert first.run_dir.name == second.run_dir.name == "run"
    roots = [run_root(context_for(s, aws, "convert", {}), BUCKET) for s in (first, second)]
    assert roots[0] != roots[1]
    assert all(r.key.startswith("pcamflow/run-") for r in roots)
    # a re-run of a folder keeps its prefix
    assert run_root(context_for(first, aws, "convert", {}), BUCKET) == roots[0]


def test_converter_and_manifest_builder_put_everything_in_s3(
    aws: Any, tmp_path: Path, pcam_dir: Path
) -> None:
    pytest.importorskip("pcamflow.data.convert")
    from pcamflow.sagemaker.data import S3Converter, S3ManifestBuilder

    settings = settings_for(tmp_path, data={"source": str(pcam_dir)},
                            convert={"workers": 1}, manifests={"max_per_class": 3})
    converter = S3Converter(progress=False)
    context = context_for(settings, aws, "convert", {})
    converter.validate(context)
    dataset = converter.run(context)
    assert isinstance(dataset, ImageDataset)
    root = run_key(settings)
    assert dataset.root == f"s3://{BUCKET}/{root}/images"
    assert Path(str(dataset.local_root)).is_dir()
    assert len(_keys(aws, f"{root}/images/")) == dataset.total()

    builder = S3ManifestBuilder()
    context = context_for(settings, aws, "manifests", {"convert": dataset})
    builder.validate(context)
    manifests = builder.run(context)
    assert isinstance(manifests, Manifests)
    assert manifests.counts == {"train": 6, "valid": 6, "test": 6}
    for split, uri in manifests.manifests.items():
        location = S3Uri.parse(uri)
        body = aws.s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
        lines = [json.loads(line) for line in body.decode().splitlines()]
        assert len(lines) == 6
        for line in lines:
            assert list(line) == ["source-ref", "class"]
            ref = S3Uri.parse(line["source-ref"])
            assert ref.key.startswith(f"{root}/images/{split}/{line['class']}/")
            aws.s3.head_object(Bucket=ref.bucket, Key=ref.key)  # the image is there
    lst = S3Uri.parse(manifests.lst["train"])
    first = aws.s3.get_object(Bucket=BUCKET, Key=lst.key)["Body"].read().decode().splitlines()[0]
    assert first.split("\t")[2].startswith("train/")
    assert manifests.exists(by_scheme(services_for(aws)["probes"]))


def test_the_s3_probe_sees_objects_and_prefixes(aws: Any) -> None:
    probe = s3_probe(aws.s3)
    aws.s3.put_object(Bucket=BUCKET, Key="run/train/model.tar.gz", Body=b"model")
    assert probe(f"s3://{BUCKET}/run/train/model.tar.gz")
    assert not probe(f"s3://{BUCKET}/run/train/other.tar.gz")
    assert probe(f"s3://{BUCKET}/run/train/") and probe(f"s3://{BUCKET}/")
    assert not probe(f"s3://{BUCKET}/run/tune/")


class _UploadingConverter(DataConverter):
    """Puts one image in S3 with the clients passed in, and records each run."""

    def run(self, context: Context) -> ImageDataset:
        with open(context.run_dir / "calls.log", "a") as handle:
            handle.write("convert\n")
        s3 = context.service("aws").s3
        s3.put_object(Bucket=BUCKET, Key="run/images/train/0/train_000000.jpg", Body=b"jpeg")
        return ImageDataset(root=f"s3://{BUCKET}/run/images/", counts={"train": {"0": 1}})


def test_a_rerun_checks_s3_artifacts_with_the_probe_of_services_for(
    aws: Any, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    pipeline = Pipeline([("convert", _UploadingConverter())])
    assert pipeline.run(settings, services=services_for(aws)).ran == ("convert",)
    assert pipeline.run(settings, services=services_for(aws)).ran == ()
    aws.s3.delete_object(Bucket=BUCKET, Key="run/images/train/0/train_000000.jpg")
    assert pipeline.run(settings, services=services_for(aws)).ran == ("convert",)
    assert (settings.run_dir / "calls.log").read_text().split() == ["convert", "convert"]
