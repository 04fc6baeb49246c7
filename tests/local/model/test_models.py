"""The algorithm's ResNet family, the augmentations, and the model archive."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pcamflow.errors import HyperparameterError, ModelError
from pcamflow.hyperparameters import NUM_LAYERS
from pcamflow.local.model.archive import (
    LoadedModel,
    ModelMeta,
    load_model_archive,
    save_model_archive,
)
from pcamflow.local.model.preprocess import dihedral_views
from pcamflow.local.model.resnet import _BasicUnit, _BottleneckUnit, build_model
from pcamflow.local.training import augment


def _count(model: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("layers", [20, 32, 44, 56, 110])
def test_small_image_networks_are_6n_plus_2(layers: int) -> None:
    model = build_model(layers, num_classes=2)
    assert _count(model, _BasicUnit) == 3 * (layers - 2) // 6
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)


@pytest.mark.parametrize(
    ("layers", "units", "bottleneck"),
    [(18, 8, False), (34, 16, False), (50, 16, True), (101, 33, True), (152, 50, True),
     (200, 66, True)],
)
def test_imagenet_networks_have_the_papers_units(layers: int, units: int, bottleneck: bool) -> None:
    model = build_model(layers, num_classes=3)
    assert _count(model, _BottleneckUnit if bottleneck else _BasicUnit) == units
    convs_per_unit = 3 if bottleneck else 2
    assert units * convs_per_unit + 2 == layers  # stem + units + classifier


def test_imagenet_stem_takes_pcam_patches_and_grey_images() -> None:
    assert build_model(18, 2)(torch.zeros(2, 3, 96, 96)).shape == (2, 2)
    assert build_model(18, 5, channels=1)(torch.zeros(1, 1, 48, 48)).shape == (1, 5)


def test_unknown_depth_is_refused() -> None:
    with pytest.raises(HyperparameterError, match="num_layers: 19"):
        build_model(19, 2)
    assert set(NUM_LAYERS) == {18, 20, 32, 34, 44, 50, 56, 101, 110, 152, 200}


def _batch(n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_dihedral_views_are_the_eight_symmetries() -> None:
    image = torch.arange(9.0).view(1, 1, 3, 3)
    views = dihedral_views(image)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    out = augment.random_dihedral(_batch(), torch.Generator().manual_seed(1))
    # every output is one of its input's views: the multiset of pixels is unchanged
    assert torch.allclose(out.flatten(1).sort(1).values, _batch().flatten(1).sort(1).values)


def test_colour_and_affine_augmentations_stay_in_range_and_change_images() -> None:
    batch, gen = _batch(), torch.Generator().manual_seed(2)
    for out in (augment.random_hsl(batch, gen), augment.random_affine(batch, gen),
                augment.random_hed(batch, 0.1, gen)):
        assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 1
        assert not torch.allclose(out, batch)


def test_hls_round_trip_is_identity() -> None:
    batch = _batch()
    back = augment._hls_to_rgb(*augment._rgb_to_hls(batch)[:1], *augment._rgb_to_hls(batch)[1:])
    assert torch.allclose(back, batch, atol=1e-5)


def test_hed_jitter_of_zero_is_identity_and_crop_fits() -> None:
    batch = _batch()
    assert augment.random_hed(batch, 0.0) is batch
    image = torch.randint(0, 255, (3, 20, 24), dtype=torch.uint8)
    assert augment.random_crop(image, 16, 16).shape == (3, 16, 16)
    assert augment.random_crop(image[:, :16, :16], 16, 16).shape == (3, 16, 16)


def _meta(**kw: object) -> ModelMeta:
    base = dict(architecture="resnet20", num_layers=20, num_classes=2, image_shape=(3, 32, 32),
                resize=32, mean=(0.6, 0.4, 0.6), std=(0.2, 0.2, 0.2),
                hyperparameters={"num_layers": "20"}, extensions={"dihedral": True})
    base.update(kw)
    return ModelMeta(**base)


def test_archive_round_trip_predicts_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = build_model(20, 2).eval()
    path = save_model_archive(tmp_path / "model.tar.gz", module, _meta())
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == ["model.json", "model.safetensors"]
    loaded = load_model_archive(path)
    assert isinstance(loaded, LoadedModel) and loaded.meta == _meta()
    images = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    batch = loaded.preprocess(images)
    assert batch.shape == (3, 3, 32, 32)
    with torch.no_grad():
        expected = torch.softmax(module(batch), 1).numpy()
    probs = loaded.predict_images(images)
    assert np.allclose(probs, expected, atol=1e-5) and np.allclose(probs.sum(1), 1)
    pil = loaded.predict_images([Image.fromarray(a) for a in images])
    assert np.allclose(pil, probs, atol=1e-5)
    tta = loaded.predict_images(images, tta=True)
    assert tta.shape == (3, 2) and np.allclose(tta.sum(1), 1)


def test_weights_are_plain_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load

    path = save_model_archive(tmp_path / "m.tar.gz", build_model(20, 2), _meta())
    with tarfile.open(path) as tar:
        state = load(tar.extractfile("model.safetensors").read())
        meta = json.loads(tar.extractfile("model.json").read())
    assert "fc.weight" in state and meta["image_shape"] == [3, 32, 32]


def test_bad_archives_raise_model_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model_archive(tmp_path / "missing.tar.gz")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(ModelError, match=r"junk\.tar\.gz"):
        load_model_archive(junk)
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        info = tarfile.TarInfo("model.json")
        data = json.dumps(_meta().to_dict()).encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ModelError, match=r"missing model\.safetensors"):
        load_model_archive(empty)
    wrong = save_model_archive(tmp_path / "wrong.tar.gz", build_model(32, 2), _meta())
    with pytest.raises(ModelError, match=r"wrong\.tar\.gz: weights do not fit"):
        load_model_archive(wrong)


def _with_meta(path: Path, meta_json: str) -> Path:
    """A model.tar.gz with real weights and the given model.json text."""
    good = save_model_archive(path.with_suffix(".good.tar.gz"), build_model(20, 2), _meta())
    with tarfile.open(good) as src, tarfile.open(path, "w:gz") as dst:
        weights = src.extractfile("model.safetensors").read()
        for name, data in (("model.safetensors", weights), ("model.json", meta_json.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"std": [float("nan")] * 3}, "std"),
        ({"std": [0.2, -0.1, 0.2]}, "std"),
        ({"mean": [0.5, float("inf"), 0.5]}, "mean"),
        ({"resize": -1}, "resize"),
        ({"resize": 16}, "resize"),
        ({"resize": "big"}, "resize"),
        ({"image_shape": [3, 0, 32]}, "image_shape"),
        ({"image_shape": "96"}, "image_shape"),
        ({"num_classes": 0}, "num_classes"),
        ({"classes": [1, 2]}, "classes"),
        ({"format_version": 99}, "format_version"),
        ({"hyperparameters": []}, "hyperparameters"),
    ],
)
def test_bad_model_metadata_is_refused_at_load_naming_the_file(tmp_path: Path, change,
                                                               named) -> None:
    meta = {**_meta().to_dict(), **change}
    path = _with_meta(tmp_path / "bad.tar.gz", json.dumps(meta))
    with pytest.raises(ModelError) as caught:
        load_model_archive(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: model.json: ") and named in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["[1, 2, 3]", '"model"', "null", "{", '{"num_layers": 20}'])
def test_model_json_that_is_not_a_metadata_object_is_refused(tmp_path: Path, text) -> None:
    path = _with_meta(tmp_path / "bad.tar.gz", text)
    with pytest.raises(ModelError, match=r"bad\.tar\.gz: model\.json"):
        load_model_archive(path)


def test_preprocess_rejects_wrong_arrays(tmp_path: Path) -> None:
    loaded = load_model_archive(
        save_model_archive(tmp_path / "m.tar.gz", build_model(20, 2), _meta())
    )
    with pytest.raises(ModelError, match="uint8"):
        loaded.preprocess(np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ModelError, match="no images"):
        loaded.preprocess([])
