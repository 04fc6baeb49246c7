"""Manifests and .lst files: format, shuffle, cap, image check, and the shared reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pcamflow.artifacts import ImageDataset
from pcamflow.data.convert import convert_pcam
from pcamflow.data.manifests import build_manifests, read_manifest, uri_to_path
from pcamflow.errors import DataError, ImageError


@pytest.fixture(scope="module")
def images(pcam_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageDataset:
    out = tmp_path_factory.mktemp("images") / "tree with space"
    return convert_pcam(pcam_dir, out, workers=1, progress=False)


def test_manifest_and_lst_lines(images: ImageDataset, tmp_path: Path) -> None:
    result = build_manifests(images, tmp_path, seed=3, progress=False)
    assert set(result.manifests) == {"train", "valid", "test"}
    assert result.counts == {"train": 64, "valid": 32, "test": 32}
    assert result.image_root == str(Path(images.root).resolve())
    for split in ("train", "valid", "test"):
        manifest = Path(result.manifests[split])
        assert manifest.name == f"{split}.manifest"
        lines = manifest.read_text().splitlines()
        first = json.loads(lines[0])
        assert list(first) == ["source-ref", "class"]  # image first, then the label
        entries = read_manifest(manifest)
        lst = [line.split("\t") for line in Path(result.lst[split]).read_text().splitlines()]
        assert len(entries) == len(lst) == result.counts[split]
        for (uri, label), (index, lst_label, relative) in zip(entries, lst, strict=True):
            path = uri_to_path(uri)
            assert uri.startswith("file:///") and "%20" in uri and path.is_file()
            assert path == Path(images.root) / relative
            assert path.parent.name == lst_label == str(label)
            assert path.name == f"{split}_{int(index):06d}.jpg"
        labels = [label for _, label in entries]
        assert labels.count(1) == images.counts[split]["1"]


def test_shuffle_is_deterministic_by_seed(images: ImageDataset, tmp_path: Path) -> None:
    def order(seed: int, shuffle: bool = True) -> list[str]:
        out = tmp_path / f"{seed}-{shuffle}"
        return [u for u, _ in read_manifest(
            build_manifests(images, out, seed=seed, shuffle=shuffle, progress=False)
            .manifests["train"])]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == sorted(order(2))
    plain = order(1, shuffle=False)
    assert [int(Path(u).stem.split("_")[1]) for u in plain] == list(range(64))


def test_max_per_class_caps_each_class(images: ImageDataset, tmp_path: Path) -> None:
    result = build_manifests(images, tmp_path, max_per_class=5, progress=False)
    for split in ("train", "valid", "test"):
        labels = [label for _, label in read_manifest(result.manifests[split])]
        assert labels.count(0) == labels.count(1) == 5
    again = build_manifests(images, tmp_path / "again", max_per_class=5, progress=False)
    assert Path(again.lst["train"]).read_text() == Path(result.lst["train"]).read_text()


def test_max_per_class_keeps_a_seeded_sample_not_the_first_images(
    images: ImageDataset, tmp_path: Path
) -> None:
    def kept(seed: int, shuffle: bool = True) -> dict[int, list[int]]:
        out = tmp_path / f"{seed}-{shuffle}"
        result = build_manifests(images, out, seed=seed, shuffle=shuffle, max_per_class=5,
                                 progress=False)
        by_label: dict[int, list[int]] = {0: [], 1: []}
        for uri, label in read_manifest(result.manifests["train"]):
            by_label[label].append(int(Path(uri).stem.split("_")[1]))
        return {label: sorted(found) for label, found in by_label.items()}

    labels = {label: sorted(int(p.stem.split("_")[1])
                            for p in (Path(images.root) / "train" / str(label)).glob("*.jpg"))
              for label in (0, 1)}
    assert kept(0, shuffle=False) == {label: found[:5] for label, found in labels.items()}
    sample = kept(0)
    assert sample != kept(0, shuffle=False)  # not the first five
    assert sample == kept(0) and sample != kept(1)  # the same for a seed, another for another
    for label, found in sample.items():
        assert len(found) == 5 and set(found) <= set(labels[label])
    # a cap one under a class's size: a sample without repeats, every line a different image
    cap = min(len(found) for found in labels.values()) - 1
    nearly = build_manifests(images, tmp_path / "nearly", max_per_class=cap, progress=False)
    uris = [uri for uri, _ in read_manifest(nearly.manifests["train"])]
    assert len(uris) == len(set(uris)) == 2 * cap


def test_missing_image_is_reported_by_folder(images: ImageDataset, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(images.root, root)
    victim = next((root / "valid" / "1").glob("*.jpg"))
    victim.unlink()
    dataset = ImageDataset(root=str(root), counts=images.counts)
    with pytest.raises(ImageError, match=r"valid/1: 16 images expected \(dataset counts\), 15"):
        build_manifests(dataset, tmp_path / "m", progress=False)
    with pytest.raises(DataError, match="not a local folder"):
        build_manifests(ImageDataset(root="s3://bucket/images", counts=images.counts),
                        tmp_path / "m", progress=False)


def test_read_manifest_names_file_and_line_of_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "train.manifest"
    path.write_text('{"source-ref": "file:///a.jpg", "class": "1"}\n\n'
                    '{"source-ref": "file:///b.jpg", "label": "0"}\n')
    with pytest.raises(DataError, match=r"train.manifest:3: expected"):
        read_manifest(path)
    path.write_text('{"source-ref": "s3://b/a.jpg", "class": "0"}\nnot json\n')
    with pytest.raises(DataError, match=r"train.manifest:2: .*'not json'"):
        read_manifest(path)
    path.write_text('{"source-ref": "s3://b/a.jpg", "class": 1}\n')
    assert read_manifest(path) == [("s3://b/a.jpg", 1)]
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nothing.manifest")


def test_uri_to_path(tmp_path: Path) -> None:
    path = tmp_path / "a b" / "c%d.jpg"
    assert uri_to_path(path.as_uri()) == path
    assert uri_to_path(str(path)) == path
    with pytest.raises(DataError, match="s3"):
        uri_to_path("s3://bucket/key.jpg")
