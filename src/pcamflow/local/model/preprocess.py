"""The deterministic image geometry training and prediction share.

A model must see the same pixels when it is trained and when it predicts: both decode with
:func:`pil_to_tensor` (resize of the shorter side, PIL's antialiased bilinear filter) and take
the centre with :func:`center_crop`. :func:`dihedral_views` gives the 8 rot90/flip views that
test-time augmentation averages over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pcamflow.errors import ImageError

__all__ = ["center_crop", "decode_image", "dihedral_views", "pil_to_tensor"]


def center_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central ``height x width`` window of ``(..., H, W)`` images."""
    h, w = images.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return images[..., top : top + height, left : left + width]


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rot90/flip views of ``(N, C, H, W)`` images (4 flips if they are not square)."""
    if images.shape[-1] != images.shape[-2]:
        return [images, images.flip(-1), images.flip(-2), images.flip(-1).flip(-2)]
    views = []
    for flipped in (images, images.flip(-1)):
        views += [torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4)]
    return views


def pil_to_tensor(image: Image.Image, channels: int, resize: int | None) -> torch.Tensor:
    """A PIL image as a uint8 ``(C, H, W)`` tensor, its shorter side resized to ``resize``.

    Training and prediction both resize here (PIL's antialiased bilinear filter), so a model
    sees the same pixels in both.
    """
    image = image.convert("RGB" if channels == 3 else "L")
    if resize and min(image.size) != resize:
        width, height = image.size
        scale = resize / min(width, height)
        size = (max(resize, round(width * scale)), max(resize, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


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
