"""Streaming the manifests' JPEGs into training batches.

Like the algorithm's Pipe mode, images are read as they are needed, never all at once:
DataLoader workers decode each JPEG, resize it (``resize``) and crop it to ``image_shape``
(at random when augmenting, in the centre otherwise), and hand back whole uint8 batches
``(N, H, W, C)``. The rest of the augmentation runs on whole batches on the training device
(:mod:`pcamflow.local.training.augment`). This is the path for data too large to decode once
(:mod:`pcamflow.local.model.cache` is the other).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pcamflow.errors import DataError, ImageError
from pcamflow.local.model.preprocess import center_crop, decode_image
from pcamflow.local.training.augment import crop_images, crop_offsets
from pcamflow.local.training.draws import image_keys, uniform_draws

__all__ = ["ManifestImages", "StreamLoader", "decode_image", "default_workers", "read_entries"]


def read_entries(path: str | Path) -> list[tuple[Path, int]]:
    """The (image path, label) pairs of a manifest, through the one manifest reader."""
    from pcamflow.data.manifests import read_manifest, uri_to_path

    out = []
    for uri, label in read_manifest(path):
        local = uri_to_path(uri)
        out.append((local, int(label)))
    if not out:
        raise DataError(f"{path}: the manifest has no images")
    return out


class ManifestImages(Dataset):
    """The images of one manifest, decoded, resized and cropped to the input size.

    Items are fetched a batch at a time (:meth:`__getitems__`), by keys ``(epoch, index)``:
    the random crop of an image is drawn from its key
    (:mod:`pcamflow.local.training.draws`), so it is the same whichever worker decodes it, and
    the same as the decoded cache's crop of that image in that epoch.

    Args:
        entries: (image path, label) pairs.
        image_shape: the network input ``(channels, height, width)``.
        resize: resize so the shorter side is this first (None: as they are).
        random_crop: crop at a random position (training with augmentation), else centre.
        seed: the run's seed (with the epoch and the index, it keys the random crops).
    """

    def __init__(
        self,
        entries: Sequence[tuple[Path, int]],
        image_shape: tuple[int, int, int],
        resize: int | None = None,
        *,
        random_crop: bool = False,
        seed: int = 0,
    ) -> None:
        self.entries = list(entries)
        self.image_shape = image_shape
        self.resize = resize
        self.random_crop = random_crop
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def image(self, index: int, epoch: int = 0) -> torch.Tensor:
        """Image ``index`` as a uint8 ``(H, W, C)`` tensor of the input size."""
        path, _ = self.entries[index]
        channels, height, width = self.image_shape
        image = decode_image(path, channels, self.resize).permute(1, 2, 0)
        if self.random_crop:
            draws = uniform_draws(image_keys(torch.tensor([index]), self.seed, epoch), 2)
            top, left = crop_offsets(image.shape[0], image.shape[1], height, width,
                                     draws[:, 0], draws[:, 1])
            return crop_images(image[None], height, width, top, left)[0]
        if image.shape[0] < height or image.shape[1] < width:
            raise ImageError(
                f"{path}: {image.shape[1]}x{image.shape[0]} is smaller than image_shape "
                f"({width}x{height}); set resize"
            )
        return center_crop(image.permute(2, 0, 1), height, width).permute(1, 2, 0)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        return self.image(index, epoch), self.entries[index][1]

    def __getitems__(
        self, keys: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch: uint8 images ``(N, H, W, C)``, labels and the images' indices."""
        images = torch.stack([self.image(index, epoch) for epoch, index in keys])
        labels = torch.tensor([self.entries[index][1] for _, index in keys], dtype=torch.int64)
        indices = torch.tensor([index for _, index in keys], dtype=torch.int64)
        return images, labels, indices


def default_workers() -> int:
    """One DataLoader worker per core, at most 4, leaving one core to the training loop."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _as_is(batch: Any) -> Any:
    return batch


class _Keys(Sampler):
    """The batches of keys the loader fetches next; set before each pass over the data."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamLoader:
    """Batches of a :class:`ManifestImages` decoded by DataLoader workers that live as long as
    the loader (not one epoch), several batches ahead, pinned for the GPU when asked.

    Args:
        dataset: the images.
        workers: worker processes (0: decode in this process).
        pin_memory: pin batches (for asynchronous copies to a GPU).
    """

    def __init__(self, dataset: ManifestImages, workers: int, pin_memory: bool = False) -> None:
        self.keys = _Keys()
        self.loader = DataLoader(
            dataset, batch_sampler=self.keys, num_workers=workers, collate_fn=_as_is,
            pin_memory=pin_memory, persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def batches(self, epoch: int, shards: Sequence[np.ndarray]
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Decode the batches whose image indices are ``shards`` (of epoch ``epoch``)."""
        self.keys.batches = [[(epoch, int(i)) for i in shard] for shard in shards]
        return iter(self.loader)
