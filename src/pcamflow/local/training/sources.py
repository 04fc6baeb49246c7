"""Where a run's batches come from: the decoded cache or the JPEG stream, chosen once.

``train.extensions.data_path`` picks: ``cache`` decodes each split once into a uint8 array
(:mod:`pcamflow.local.model.cache`) and reads batches from it; ``stream`` decodes the JPEGs
every epoch in DataLoader workers (for data too large to decode once); ``auto`` caches when the
decoded splits fit in half the free disk and in the available memory, or are cached already.
Both paths give a model the same pixels and the same random crops, so they train alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.local.model.cache import (
    DecodedImages,
    choose_data_path,
    decoded_size,
    find_cache,
    open_cache,
)
from pcamflow.local.training.batches import CachedBatches
from pcamflow.local.training.dataset import ManifestImages, default_workers
from pcamflow.local.training.distributed import Distribution, share
from pcamflow.local.training.loop import Split, stream_split

__all__ = ["RunData", "cache_folder", "channel_stats", "open_data"]

Entries = Sequence[tuple[Path, int]]
_STATS_SAMPLE = 256


class RunData:
    """The train and validation splits of a run, on its device.

    Attributes:
        train: the training split's batches.
        valid: the validation split's batches.
        path: ``cache`` or ``stream`` (the train split's; validation follows it).
        caches: the decoded caches opened (name -> cache), empty when streaming.
    """

    def __init__(self, train: Split, valid: Split, path: str,
                 caches: dict[str, DecodedImages]) -> None:
        self.train, self.valid, self.path, self.caches = train, valid, path, caches


def open_data(
    train: Entries,
    valid: Entries,
    hp: Hyperparameters,
    ext: LocalExtensions,
    *,
    cache_dir: Path,
    seed: int,
    device: torch.device,
    dist: Distribution,
    progress: bool,
) -> RunData:
    """Choose the data path (rank 0 decides for every process) and open both splits."""
    shape = (hp.channels, hp.height, hp.width)
    choice = "stream"
    if ext.data_path != "stream":
        decision = None
        if dist.is_main:
            cached = all(find_cache(e, cache_dir, name, channels=hp.channels, resize=hp.resize)
                         for name, e in (("train", train), ("valid", valid)))
            needed = 0 if cached else sum(decoded_size(e, hp.channels, hp.resize)
                                          for e in (train, valid))
            decision = choose_data_path(ext.data_path, needed, cache_dir, cached=cached)
        choice = share(decision, dist)
    workers = default_workers() if ext.num_workers is None else ext.num_workers
    splits: dict[str, Split] = {}
    caches: dict[str, DecodedImages] = {}
    for name, entries in (("train", train), ("valid", valid)):
        opened = None
        if choice == "cache":
            opened = open_cache(entries, cache_dir, name, channels=hp.channels,
                                resize=hp.resize, workers=ext.num_workers,
                                progress=progress and dist.is_main,
                                required=ext.data_path == "cache")
        if opened is not None:
            caches[name] = opened
            splits[name] = Split(device, cached=CachedBatches(opened, device))
        else:
            dataset = ManifestImages(entries, shape, hp.resize,
                                     random_crop=name == "train" and hp.augmentation_type
                                     is not None, seed=seed)
            splits[name] = stream_split(dataset, device, workers)
    path = "cache" if "train" in caches else "stream"
    return RunData(splits["train"], splits["valid"], path, caches)


def channel_stats(entries: Entries, hp: Hyperparameters, seed: int,
                  cache: DecodedImages | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of the centre crops of 256 training images."""
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(entries))[:_STATS_SAMPLE]
    _, height, width = hp.channels, hp.height, hp.width
    if cache is not None:
        rows = torch.from_numpy(np.ascontiguousarray(cache.images[pick]))
        top, left = (rows.shape[1] - height) // 2, (rows.shape[2] - width) // 2
        batch = rows[:, top : top + height, left : left + width]
    else:
        data = ManifestImages(entries, (hp.channels, height, width), hp.resize)
        batch = torch.stack([data.image(int(i)) for i in pick])
    values = batch.permute(0, 3, 1, 2).float() / 255.0
    mean = values.mean(dim=(0, 2, 3))
    std = values.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def cache_folder(ext: LocalExtensions, out_dir: Path) -> Path:
    """``train.extensions.cache_dir``, or ``cache/`` in the training output folder."""
    return Path(ext.cache_dir) if ext.cache_dir else Path(out_dir) / "cache"
