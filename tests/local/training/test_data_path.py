"""The data path: per-image random draws, batched crops, epoch plans and the decoded cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from pcamflow.artifacts import Manifests
from pcamflow.config import Settings
from pcamflow.errors import ConfigError, ImageError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.local.model.cache import choose_data_path, open_cache
from pcamflow.local.training import augment
from pcamflow.local.training.batches import CachedBatches, epoch_shards, valid_shards
from pcamflow.local.training.dataset import read_entries
from pcamflow.local.training.draws import image_keys, uniform_draws
from pcamflow.local.training.trainer import train_model
from pcamflow.local.tuning.tuner import LocalTuner
from pcamflow.stages import Context

FAST = Hyperparameters(num_layers=20, image_shape="3,32,32", resize=32, epochs=2,
                       mini_batch_size=16, optimizer="adam", learning_rate=0.003)


# --- random draws and batched transforms -------------------------------------------------


def test_an_images_draws_do_not_depend_on_its_batch() -> None:
    keys = image_keys(torch.arange(1000), seed=7, epoch=3)
    draws = uniform_draws(keys)
    assert torch.equal(uniform_draws(keys[100:300]), draws[100:300])  # another split of the batch
    assert torch.equal(uniform_draws(keys.flip(0)), draws.flip(0))  # another order
    assert not torch.equal(uniform_draws(image_keys(torch.arange(1000), 7, 4)), draws)
    assert not torch.equal(uniform_draws(image_keys(torch.arange(1000), 8, 3)), draws)
    # uniform on [0, 1): each stream's mean near 1/2, streams uncorrelated
    assert float(draws.min()) >= 0 and float(draws.max()) < 1
    assert torch.allclose(draws.mean(0), torch.full((draws.shape[1],), 0.5), atol=0.04)
    correlation = torch.corrcoef(draws.T) - torch.eye(draws.shape[1])
    assert float(correlation.abs().max()) < 0.12


@pytest.mark.parametrize(("size", "window"), [((20, 24), (16, 16)), ((16, 16), (16, 16)),
                                              ((12, 12), (16, 16)), ((5, 7), (16, 20))])
def test_a_batched_crop_is_the_reflect_padded_window(size: tuple[int, int],
                                                      window: tuple[int, int]) -> None:
    images = torch.randint(0, 256, (6, *size, 3), dtype=torch.uint8)
    u = torch.rand(2, 6, generator=torch.Generator().manual_seed(0))
    top, left = augment.crop_offsets(*size, *window, u[0], u[1])
    out = augment.crop_images(images, *window, top, left)
    # the reference: F.pad's reflection (one pass for each time the pad exceeds the image)
    padded = images.permute(0, 3, 1, 2).float()
    pad_h, pad_w = augment._padding(*size, *window)
    while pad_h or pad_w:
        step_h, step_w = min(pad_h, padded.shape[-2] - 1), min(pad_w, padded.shape[-1] - 1)
        padded = F.pad(padded, (step_w, step_w, step_h, step_h), mode="reflect")
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    for i in range(6):
        t, lft = int(top[i]), int(left[i])
        expected = padded[i, :, t : t + window[0], lft : lft + window[1]].permute(1, 2, 0)
        assert torch.equal(out[i], expected.to(torch.uint8))


def test_dihedral_puts_each_image_in_the_view_it_is_given() -> None:
    for size in ((8, 8), (8, 6)):
        images = torch.rand(16, 3, *size)
        views = torch.arange(16) % 8
        out = augment.dihedral(images, views)
        for i, view in enumerate(views.tolist()):
            expected = images[i].flip(-1) if view >= 4 else images[i]
            if size[0] == size[1]:
                expected = torch.rot90(expected, view % 4, dims=(-2, -1))
            elif view % 2:
                expected = expected.flip(-2)
            assert torch.equal(out[i], expected)


# --- epoch plans -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch", "world"), [(64, 16, 2), (70, 16, 3), (10, 16, 2)])
def test_each_image_of_an_epochs_batches_goes_to_one_process_once(n: int, batch: int,
                                                                  world: int) -> None:
    one = epoch_shards(n, batch, seed=1, epoch=2)
    ranks = [epoch_shards(n, batch, seed=1, epoch=2, world=world, rank=r) for r in range(world)]
    assert all(len(r) == len(one) for r in ranks)
    for b, (whole, size) in enumerate(one):
        parts = [ranks[r][b][0] for r in range(world)]
        assert np.array_equal(np.concatenate(parts), whole)  # the same batch, split in order
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert all(ranks[r][b][1] == size == len(whole) for r in range(world))
    seen = np.concatenate([whole for whole, _ in one])
    assert len(set(seen.tolist())) == len(seen)
    assert len(seen) == (n if n <= batch else n // batch * batch)  # the last partial dropped
    valid = [valid_shards(n, batch, world=world, rank=r) for r in range(world)]
    assert sorted(np.concatenate([b for rank in valid for b in rank]).tolist()) == list(range(n))


# --- the decoded cache -----------------------------------------------------------------------


def _entries(small_pcam: tuple[Manifests, dict], split: str = "train") -> list:
    return read_entries(small_pcam[0].manifests[split])


def test_the_cache_is_decoded_once_and_reused(small_pcam: tuple[Manifests, dict],
                                              tmp_path: Path) -> None:
    entries = _entries(small_pcam)
    first = open_cache(entries, tmp_path, "train", channels=3, resize=None, progress=False)
    assert first is not None and first.build_seconds is not None
    assert first.images.shape == (len(entries), 96, 96, 3)
    assert np.array_equal(first.images[5], np.asarray(Image.open(entries[5][0]).convert("RGB")))
    assert first.labels.tolist() == [label for _, label in entries]
    again = open_cache(entries, tmp_path, "train", channels=3, resize=None, progress=False)
    assert again is not None and again.build_seconds is None and again.path == first.path
    other = open_cache(entries[:-1], tmp_path, "train", channels=3, resize=None, progress=False)
    assert other is not None and other.path != first.path  # another manifest, another cache
    resized = open_cache(entries, tmp_path, "train", channels=3, resize=48, progress=False)
    assert resized is not None and resized.images.shape == (len(entries), 48, 48, 3)


def test_batches_sliced_on_the_device_equal_those_read_ahead_on_the_host(
    small_pcam: tuple[Manifests, dict], tmp_path: Path
) -> None:
    entries = _entries(small_pcam)
    cache = open_cache(entries, tmp_path, "train", channels=3, resize=None, progress=False)
    shards = [shard for shard, _ in epoch_shards(len(entries), 16, seed=0, epoch=1)]
    cpu = torch.device("cpu")
    resident = list(CachedBatches(cache, cpu, resident=True).batches(shards))
    host = list(CachedBatches(cache, cpu, resident=False).batches(shards))
    assert len(resident) == len(host) == len(shards)
    for (a_img, a_lab, a_idx), (b_img, b_lab, b_idx), shard in zip(resident, host, shards,
                                                                   strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
        assert a_idx.tolist() == b_idx.tolist() == shard.tolist()
        assert torch.equal(a_img, torch.from_numpy(cache.images[shard]))
        assert a_lab.tolist() == [entries[i][1] for i in shard]


def test_a_changed_image_makes_the_cache_decode_again(small_pcam: tuple[Manifests, dict],
                                                      tmp_path: Path, pcam_tools: tuple) -> None:
    x, y = small_pcam[1]["train"]
    manifests = pcam_tools[1](tmp_path / "images", {"train": (x[:8], y[:8])})
    entries = read_entries(manifests.manifests["train"])
    open_cache(entries, tmp_path / "cache", "train", channels=3, resize=None, progress=False)
    Image.fromarray(255 - x[3]).save(entries[3][0], quality=95)
    again = open_cache(entries, tmp_path / "cache", "train", channels=3, resize=None,
                       progress=False)
    assert again is not None and again.build_seconds is not None
    assert np.array_equal(again.images[3], np.asarray(Image.open(entries[3][0])))


def test_a_failed_build_leaves_nothing_that_looks_complete(small_pcam: tuple[Manifests, dict],
                                                           tmp_path: Path,
                                                           pcam_tools: tuple) -> None:
    x, y = small_pcam[1]["train"]
    manifests = pcam_tools[1](tmp_path / "images", {"train": (x, y)})
    entries = read_entries(manifests.manifests["train"])
    entries[-1][0].write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageError, match=entries[-1][0].name):
        open_cache(entries, tmp_path / "cache", "train", channels=3, resize=None,
                   progress=False)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".lock"]


def test_images_of_different_sizes_are_streamed_or_refused(tmp_path: Path) -> None:
    paths = []
    for i, size in enumerate([(32, 32), (32, 32), (40, 32)]):
        path = tmp_path / f"img{i}.jpg"
        Image.new("RGB", size, (i * 40, 80, 120)).save(path)
        paths.append((path, i % 2))
    assert open_cache(paths, tmp_path / "c", "x", channels=3, resize=None, progress=False,
                      required=False) is None
    with pytest.raises(ImageError, match=r"img2\.jpg: decodes to 40x32x3.*data_path"):
        open_cache(paths, tmp_path / "c", "x", channels=3, resize=None, progress=False)
    assert not list((tmp_path / "c").glob("*.npy"))


def test_the_automatic_data_path_weighs_the_size_against_disk_and_memory(tmp_path: Path
                                                                         ) -> None:
    assert choose_data_path("auto", 10_000_000, tmp_path / "new" / "cache") == "cache"
    assert choose_data_path("auto", 10**18, tmp_path) == "stream"
    assert choose_data_path("auto", 10**18, tmp_path, cached=True) == "cache"
    assert choose_data_path("stream", 1, tmp_path) == "stream"
    with pytest.raises(ConfigError, match=r"train\.extensions\.data_path: 'cache' needs"):
        choose_data_path("cache", 10**18, tmp_path)


# --- training on either path -----------------------------------------------------------------


def _weights(out: Path) -> dict[str, torch.Tensor]:
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    return load_file(out / "checkpoints" / state["weights"])


def test_the_cache_and_the_stream_train_the_same_model(small_pcam: tuple[Manifests, dict],
                                                       tmp_path: Path) -> None:
    hp = attrs.evolve(FAST, augmentation_type="crop_color_transform", epochs=1)
    ext = LocalExtensions(num_workers=0, device="cpu", dihedral=True, stain_jitter=0.05)
    cached = train_model(small_pcam[0], hp, attrs.evolve(ext, data_path="cache"),
                         tmp_path / "cache", progress=False)
    streamed = train_model(small_pcam[0], hp, attrs.evolve(ext, data_path="stream"),
                           tmp_path / "stream", progress=False)
    assert list((tmp_path / "cache" / "cache").glob("train-*.npy"))
    assert not (tmp_path / "stream" / "cache").exists()
    assert cached.history[0]["train_images"] == streamed.history[0]["train_images"] == 48
    a, b = _weights(tmp_path / "cache"), _weights(tmp_path / "stream")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same pixels, crops and draws
    assert cached.metrics == streamed.metrics


def test_the_tuners_trials_decode_the_data_once(small_pcam: tuple[Manifests, dict],
                                                tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_dict({
        "tune": {"strategy": "Random", "max_jobs": 2, "epochs": 1,
                 "ranges": {"learning_rate": {"type": "continuous", "min_value": 0.001,
                                              "max_value": 0.01}}},
        "train": {"num_layers": 20, "image_shape": "3,32,32", "resize": 32,
                  "mini_batch_size": 16, "optimizer": "adam",
                  "extensions": {"num_workers": 0, "device": "cpu", "data_path": "cache"}},
    })
    context = Context(settings=settings, run_dir=tmp_path, stage_dir=tmp_path / "tune",
                      artifacts={"Manifests": small_pcam[0]}, stage_name="tune")
    with caplog.at_level(logging.INFO, logger="pcamflow"):
        LocalTuner(progress=False).run(context)
    decoded = [r.message for r in caplog.records if r.message.startswith("cache: decoded")]
    assert len(decoded) == 2 and {m.split()[3] for m in decoded} == {"train", "valid"}
    assert len(list((tmp_path / "tune" / "cache").glob("*.npy"))) == 4  # images + stats, x2
    trials = sorted((tmp_path / "tune" / "trials").iterdir())
    assert len(trials) == 2 and not any((t / "cache").exists() for t in trials)
