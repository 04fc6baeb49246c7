"""Manifests of a hand-made image tree: the exact lines, edge cases, and the reader's errors.

The builder only lists names (``<split>_<index>.jpg``) and never opens an image, so the tree
here is empty files; the line format is SageMaker's augmented manifest (one JSON object per
line, ``source-ref`` then the label attribute) and MXNet's ``.lst`` (index, label, path).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcamflow.artifacts import ImageDataset
from pcamflow.data.manifests import build_manifests, read_manifest, uri_to_path
from pcamflow.errors import DataError, ImageError


def _tree(root: Path, files: dict[str, list[str]]) -> Path:
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).write_bytes(b"")
    return root


def test_the_lines_are_exactly_the_documented_ones(tmp_path: Path) -> None:
    root = _tree(tmp_path / "img", {"train/0": ["train_000002.jpg", "train_000000.jpg"],
                                    "train/1": ["train_000001.jpg"]})
    dataset = ImageDataset(root=str(root), counts={"train": {"0": 2, "1": 1}})
    result = build_manifests(dataset, tmp_path / "out", shuffle=False, progress=False)
    uri = root.resolve().as_uri()
    assert Path(result.manifests["train"]).read_text() == (
        f'{{"source-ref": "{uri}/train/0/train_000000.jpg", "class": "0"}}\n'
        f'{{"source-ref": "{uri}/train/1/train_000001.jpg", "class": "1"}}\n'
        f'{{"source-ref": "{uri}/train/0/train_000002.jpg", "class": "0"}}\n')
    assert Path(result.lst["train"]).read_text() == (
        "0\t0\ttrain/0/train_000000.jpg\n"
        "1\t1\ttrain/1/train_000001.jpg\n"
        "2\t0\ttrain/0/train_000002.jpg\n")
    assert result.manifests == {"train": str((tmp_path / "out" / "train.manifest").resolve())}
    assert result.lst == {"train": str((tmp_path / "out" / "train.lst").resolve())}
    assert result.counts == {"train": 3} and result.image_root == str(root.resolve())


def test_stray_files_are_left_out_and_the_default_seed_is_zero(tmp_path: Path) -> None:
    names = [f"train_{i:06d}.jpg" for i in range(12)]
    root = _tree(tmp_path / "img", {
        "train/0": [*names[:6], ".train_000099.jpg.123.partial", "notes.txt", "train_7.png",
                    "valid_000001.jpg", "xtrain_000050.jpg", "train_000051.jpg.bak"],
        "train/1": names[6:]})
    dataset = ImageDataset(root=str(root), counts={"train": {"0": 6, "1": 6}})
    default = build_manifests(dataset, tmp_path / "a", progress=False)
    seeded = build_manifests(dataset, tmp_path / "b", seed=0, progress=False)
    other = build_manifests(dataset, tmp_path / "c", seed=1, progress=False)
    text = Path(default.lst["train"]).read_text()
    assert text == Path(seeded.lst["train"]).read_text() != Path(other.lst["train"]).read_text()
    assert sorted(line.split("\t")[2] for line in text.splitlines()) == sorted(
        [f"train/0/{n}" for n in names[:6]] + [f"train/1/{n}" for n in names[6:]])


def test_a_split_with_an_empty_or_missing_class_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path / "img", {"valid/0": [], "test/1": ["test_000004.jpg"]})
    dataset = ImageDataset(root=str(root), counts={"valid": {"0": 0}, "test": {"0": 0, "1": 1},
                                                   "extra": {}})
    result = build_manifests(dataset, tmp_path / "out", progress=False)
    assert result.counts == {"valid": 0, "test": 1, "extra": 0}
    assert list(result.manifests) == ["valid", "test", "extra"]
    assert Path(result.manifests["valid"]).read_text() == ""
    assert Path(result.lst["test"]).read_text() == "4\t1\ttest/1/test_000004.jpg\n"
    with pytest.raises(ImageError) as caught:
        build_manifests(ImageDataset(root=str(root), counts={"test": {"0": 1, "1": 1}}),
                        tmp_path / "bad", progress=False)
    assert str(caught.value) == (f"{root.resolve() / 'test' / '0'}: 1 images expected "
                                 "(dataset counts), 0 found")
    unchecked = build_manifests(ImageDataset(root=str(root), counts={"test": {"0": 1, "1": 1}}),
                                tmp_path / "unchecked", check_images=False, progress=False)
    assert unchecked.counts == {"test": 1}


def test_an_empty_class_folder_beside_a_full_one(tmp_path: Path) -> None:
    root = _tree(tmp_path / "img", {"test/0": [], "test/1": ["test_000004.jpg"]})
    result = build_manifests(ImageDataset(root=str(root), counts={"test": {"0": 0, "1": 1}}),
                             tmp_path / "out", progress=False)
    assert Path(result.lst["test"]).read_text() == "4\t1\ttest/1/test_000004.jpg\n"


def test_splits_come_in_pcams_order_then_the_others(tmp_path: Path) -> None:
    root = _tree(tmp_path / "img", {"holdout/0": ["holdout_000000.jpg"],
                                    "test/0": ["test_000000.jpg"],
                                    "train/0": ["train_000000.jpg"]})
    counts = {"holdout": {"0": 1}, "test": {"0": 1}, "train": {"0": 1}}
    result = build_manifests(ImageDataset(root=str(root), counts=counts), tmp_path / "out",
                             progress=False)
    assert list(result.counts) == ["train", "test", "holdout"]


def test_max_per_class_without_shuffle_keeps_the_lowest_indices(tmp_path: Path) -> None:
    root = _tree(tmp_path / "img", {"train/0": [f"train_{i:06d}.jpg" for i in (9, 3, 7, 1)],
                                    "train/1": ["train_000005.jpg"]})
    dataset = ImageDataset(root=str(root), counts={"train": {"0": 4, "1": 1}})
    result = build_manifests(dataset, tmp_path / "out", shuffle=False, max_per_class=2,
                             progress=False)
    assert Path(result.lst["train"]).read_text() == (
        "1\t0\ttrain/0/train_000001.jpg\n3\t0\ttrain/0/train_000003.jpg\n"
        "5\t1\ttrain/1/train_000005.jpg\n")
    same = build_manifests(dataset, tmp_path / "same", shuffle=False, max_per_class=1000,
                           progress=False)
    assert same.counts == {"train": 5}


@pytest.mark.parametrize("root", ["s3://bucket/images", "missing"])
def test_the_image_root_must_be_a_local_folder(tmp_path: Path, root: str) -> None:
    shown = root if "://" in root else str(tmp_path / root)
    with pytest.raises(DataError) as caught:
        build_manifests(ImageDataset(root=shown, counts={"train": {"0": 0}}), tmp_path / "out",
                        progress=False)
    assert str(caught.value) == f"{Path(shown)}: image root is not a local folder"


def test_the_local_root_of_an_uploaded_tree_is_used(tmp_path: Path) -> None:
    root = _tree(tmp_path / "img", {"train/0": ["train_000000.jpg"]})
    dataset = ImageDataset(root="s3://bucket/images", counts={"train": {"0": 1}},
                           local_root=str(root))
    result = build_manifests(dataset, tmp_path / "out", progress=False)
    assert read_manifest(result.manifests["train"]) == [
        (f"{root.resolve().as_uri()}/train/0/train_000000.jpg", 0)]


@pytest.mark.parametrize(("line", "shown"), [
    ('{"source-ref": 7, "class": "0"}', '{"source-ref": 7, "class": "0"}'),
    ('{"source-ref": "a.jpg", "class": true}', '{"source-ref": "a.jpg", "class": true}'),
    ('{"source-ref": "a.jpg"}', '{"source-ref": "a.jpg"}'),
    ('{"class": "1"}', '{"class": "1"}'),
    ('{"source-ref": "a.jpg", "class": "one"}', '{"source-ref": "a.jpg", "class": "one"}'),
    ("not json " * 20, ("not json " * 20)[:117] + "..."),
    ("x" * 120, "x" * 120),  # up to 120 characters, a line is shown whole
    ("x" * 121, "x" * 117 + "..."),
])
def test_a_bad_line_is_named_by_file_and_number(tmp_path: Path, line: str, shown: str) -> None:
    path = tmp_path / "x.manifest"
    path.write_text('{"source-ref": "a.jpg", "class": "1"}\n\n' + line + "\n")
    with pytest.raises(DataError) as caught:
        read_manifest(path)
    assert str(caught.value) == (f'{path}:3: expected {{"source-ref": "<uri>", "class": '
                                 f'"<label>"}}, got {shown!r}')


def test_the_reader_takes_labels_as_numbers_or_strings_and_skips_blank_lines(
    tmp_path: Path
) -> None:
    path = tmp_path / "x.manifest"
    path.write_text(json.dumps({"source-ref": "a.jpg", "class": 1}) + "\n   \n"
                    + json.dumps({"source-ref": "b.jpg", "class": "0", "extra": 2}) + "\n")
    assert read_manifest(str(path)) == [("a.jpg", 1), ("b.jpg", 0)]
    with pytest.raises(DataError) as caught:
        read_manifest(tmp_path / "none.manifest")
    assert str(caught.value) == f"{tmp_path / 'none.manifest'}: manifest not found"
    (tmp_path / "binary.manifest").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match=r"binary\.manifest: cannot read manifest \("):
        read_manifest(tmp_path / "binary.manifest")


def test_uri_to_path_takes_local_uris_only() -> None:
    assert uri_to_path("file:///data/a%20b.jpg") == Path("/data/a b.jpg")
    assert uri_to_path("file://localhost/data/x.jpg") == Path("/data/x.jpg")
    assert uri_to_path("relative/x.jpg") == Path("relative/x.jpg")
    with pytest.raises(DataError) as caught:
        uri_to_path("file://server/data/x.jpg")
    assert str(caught.value) == ("file://server/data/x.jpg: file URIs on another host (server) "
                                 "are not supported")
    with pytest.raises(DataError) as caught:  # a drive letter is a scheme off Windows
        uri_to_path("c:/data/x.jpg")
    assert str(caught.value) == "c:/data/x.jpg: not a local file (scheme 'c'); expected file://"
    with pytest.raises(DataError) as caught:
        uri_to_path("s3://bucket/x.jpg")
    assert str(caught.value) == "s3://bucket/x.jpg: not a local file (scheme 's3'); expected file://"


def _context(tmp_path: Path, dataset: ImageDataset, seed: int, **manifests: object):
    from pcamflow.config import Settings
    from pcamflow.stages import Context

    settings = Settings.from_dict({"pipeline": {"run_dir": str(tmp_path / "run"), "seed": seed},
                                   "manifests": manifests})
    return Context(settings=settings, run_dir=settings.run_dir,
                   stage_dir=tmp_path / "run" / "manifests", artifacts={"convert": dataset},
                   stage_name="manifests")


def test_the_stage_builds_with_its_settings_and_the_pipeline_seed(tmp_path: Path) -> None:
    from pcamflow.data.manifests import LocalManifestBuilder

    root = _tree(tmp_path / "img", {"train/0": ["train_000004.jpg", "train_000002.jpg"],
                                    "train/1": ["train_000003.jpg"]})
    dataset = ImageDataset(root=str(root), counts={"train": {"0": 5, "1": 1}})
    stage = LocalManifestBuilder()
    context = _context(tmp_path, dataset, 3, shuffle=False, max_per_class=1, check_images=False)
    stage.validate(context)
    result = stage.run(context)
    assert Path(result.lst["train"]).read_text() == (
        "2\t0\ttrain/0/train_000002.jpg\n3\t1\ttrain/1/train_000003.jpg\n")
    assert Path(result.manifests["train"]).parent == (tmp_path / "run" / "manifests").resolve()
    with pytest.raises(ImageError):  # check_images is on by default
        stage.run(_context(tmp_path, dataset, 3))
    shuffled = stage.run(_context(tmp_path, dataset, 3, max_per_class=1, check_images=False))
    by_hand = build_manifests(dataset, tmp_path / "by-hand", seed=3, max_per_class=1,
                              check_images=False, progress=False)
    assert Path(shuffled.lst["train"]).read_text() == Path(by_hand.lst["train"]).read_text()
    fingerprint = stage.fingerprint(context)
    assert fingerprint == stage.fingerprint(
        _context(tmp_path, dataset, 3, shuffle=False, max_per_class=1, check_images=False))
    assert fingerprint != stage.fingerprint(
        _context(tmp_path, dataset, 4, shuffle=False, max_per_class=1, check_images=False))
    assert fingerprint != stage.fingerprint(  # another [manifests] setting: built again
        _context(tmp_path, dataset, 3, shuffle=False, max_per_class=2, check_images=False))
    import attrs

    reconverted = attrs.evolve(context, upstream={"convert": "another-conversion"})
    assert fingerprint != stage.fingerprint(reconverted)  # another input: built again


def test_the_stage_refuses_a_remote_tree_with_no_local_copy(tmp_path: Path) -> None:
    from pcamflow.data.manifests import LocalManifestBuilder

    remote = ImageDataset(root="s3://bucket/images", counts={"train": {"0": 1}})
    with pytest.raises(DataError) as caught:
        LocalManifestBuilder().validate(_context(tmp_path, remote, 0))
    assert str(caught.value) == ("manifest_builder = 'local' needs a local image tree; "
                                 "s3://bucket/images is remote")
    copied = ImageDataset(root="s3://bucket/images", counts={"train": {"0": 1}},
                          local_root=str(tmp_path))
    LocalManifestBuilder().validate(_context(tmp_path, copied, 0))
