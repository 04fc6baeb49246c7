"""Streaming the manifests' JPEGs into training batches.

Like the algorithm's Pipe mode, images are read as they are needed, never all at once:
DataLoader workers decode each JPEG, resize it (``resize``) and crop it to ``image_shape``
(at random when augmenting, in the centre otherwise), and hand back uint8 tensors. The rest of
the augmentation runs on whole batches in the training process
(:mod:`pcamflow.local.training.augment`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from pcamflow.errors import DataError, ImageError
from pcamflow.local.model.preprocess import center_crop, pil_to_tensor
from pcamflow.local.training.augment import random_crop

__all__ = ["ManifestImages", "decode_image", "make_loader", "read_entries"]


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


def decode_image(path: Path, channels: int, resize: int | None = None) -> torch.Tensor:
    """Decode one image file into a uint8 ``(C, H, W)`` tensor, resized as :func:`pil_to_tensor`.

    Raises:
        ImageError: the file is missing or cannot be decoded (the message names it).
    """
    try:
        with Image.open(path) as image:
            return pil_to_tensor(image, channels, resize)
    except FileNotFoundError:
        raise ImageError(f"{path}: image not found (named in the manifest)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None


class ManifestImages(Dataset):
    """The images of one manifest, decoded, resized and cropped to the input size.

    Args:
        entries: (image path, label) pairs.
        image_shape: the network input ``(channels, height, width)``.
        resize: resize so the shorter side is this first (None: as they are).
        random_crop: crop at a random position (training with augmentation), else centre.
        seed: base seed of the random crops.
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
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.entries[index]
        channels, height, width = self.image_shape
        image = decode_image(path, channels, self.resize)
        if self.random_crop:
            # a generator per item and epoch: the same crops whatever the worker count
            gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
            image = random_crop(image, height, width, gen)
        else:
            if image.shape[-2] < height or image.shape[-1] < width:
                raise ImageError(
                    f"{path}: {image.shape[-1]}x{image.shape[-2]} is smaller than image_shape "
                    f"({width}x{height}); set resize"
                )
            image = center_crop(image, height, width)
        return image.contiguous(), label


def default_workers() -> int:
    """One DataLoader worker per core, at most 4, leaving one core to the training loop."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: ManifestImages,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    seed: int,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` whose order depends only on ``seed`` (and the epoch)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
