"""Image transforms in torch: the algorithm's augmentations and PCam's local extensions.

Everything works on whole batches of float images in ``[0, 1]``, shaped ``(N, C, H, W)``, on
whatever device they are on, so augmentation costs little next to the forward pass.

- ``crop``: random crop (done per image when decoding, see :func:`random_crop`) and a random
  horizontal flip (:func:`random_hflip`).
- ``crop_color``: also random hue, saturation and lightness shifts drawn from [-36, 36],
  [-50, 50] and [-50, 50], in the units of 8-bit HLS images (hue 0..180, the others 0..255),
  as MXNet's image iterator takes them (:func:`random_hsl`).
- ``crop_color_transform``: also a random affine transform, rotation up to 10 degrees, shear up
  to 0.1 and aspect-ratio change up to 0.25 (:func:`random_affine`).
- Local extensions: a random one of the 8 dihedral views (:func:`random_dihedral`) and HED
  stain jitter (:func:`random_hed`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "Augmenter",
    "random_affine",
    "random_crop",
    "random_dihedral",
    "random_hed",
    "random_hflip",
    "random_hsl",
]

HUE_RANGE = 36.0
SATURATION_RANGE = 50.0
LIGHTNESS_RANGE = 50.0
MAX_ROTATE_DEG = 10.0
MAX_SHEAR = 0.1
MAX_ASPECT = 0.25


# --- random geometry -------------------------------------------------------------------------


def random_crop(
    image: torch.Tensor, height: int, width: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random ``height x width`` window of one ``(C, H, W)`` image.

    An image no larger than the window is first padded by reflection (an eighth of the
    window, at least 2 pixels), so that ``crop`` still shifts images of exactly the input size.
    """
    h, w = image.shape[-2:]
    if h <= height or w <= width:
        pad = max(2, min(height, width) // 8)
        pad_h = max(0, height - h) + pad
        pad_w = max(0, width - w) + pad
        image = F.pad(image.unsqueeze(0).float(), (pad_w, pad_w, pad_h, pad_h), mode="reflect")
        image = image.squeeze(0).to(torch.uint8) if image.dtype != torch.uint8 else image
        h, w = image.shape[-2:]
    top = int(torch.randint(0, h - height + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - width + 1, (1,), generator=generator))
    return image[..., top : top + height, left : left + width]




# --- random augmentation on batches --------------------------------------------------------


def _uniform(n: int, low: float, high: float, like: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    draw = torch.rand(n, generator=generator, device="cpu")
    return (low + (high - low) * draw).to(device=like.device, dtype=like.dtype)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    mask = torch.rand(images.shape[0], generator=generator) < 0.5
    if not mask.any():
        return images
    out = images.clone()
    index = mask.nonzero().flatten().to(images.device)
    out[index] = images[index].flip(-1)
    return out


def random_dihedral(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Put each image in one of its 8 dihedral views, drawn uniformly."""
    choice = torch.randint(0, 8, (images.shape[0],), generator=generator)
    square = images.shape[-1] == images.shape[-2]
    out = images.clone()
    for view in range(8):
        index = (choice == view).nonzero().flatten()
        if index.numel() == 0 or view == 0:
            continue
        index = index.to(images.device)
        part = images[index]
        if view >= 4:
            part = part.flip(-1)
        turns = view % 4
        if square:
            part = torch.rot90(part, turns, dims=(-2, -1))
        elif turns % 2:
            part = part.flip(-2)  # a half turn is all a non-square image allows
        out[index] = part
    return out


def _rgb_to_hls(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = rgb.unbind(1)
    high, _ = rgb.max(1)
    low, _ = rgb.min(1)
    light = (high + low) / 2
    delta = high - low
    safe = torch.where(delta > 1e-6, delta, torch.ones_like(delta))
    denom = torch.where(light < 0.5, high + low, 2 - high - low).clamp_min(1e-6)
    sat = torch.where(delta > 1e-6, delta / denom, torch.zeros_like(delta))
    hue = torch.where(
        high == r,
        ((g - b) / safe) % 6,
        torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 1e-6, hue / 6, torch.zeros_like(hue))  # in [0, 1)
    return hue, light, sat


def _hls_to_rgb(hue: torch.Tensor, light: torch.Tensor, sat: torch.Tensor) -> torch.Tensor:
    chroma = (1 - (2 * light - 1).abs()) * sat
    h6 = hue * 6
    x = chroma * (1 - ((h6 % 2) - 1).abs())
    m = light - chroma / 2
    zero = torch.zeros_like(hue)
    sector = h6.floor().long() % 6
    choices = [
        (chroma, x, zero), (x, chroma, zero), (zero, chroma, x),
        (zero, x, chroma), (x, zero, chroma), (chroma, zero, x),
    ]
    r, g, b = zero.clone(), zero.clone(), zero.clone()
    for i, (cr, cg, cb) in enumerate(choices):
        pick = sector == i
        r = torch.where(pick, cr, r)
        g = torch.where(pick, cg, g)
        b = torch.where(pick, cb, b)
    return torch.stack((r + m, g + m, b + m), 1).clamp_(0, 1)


def random_hsl(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add random hue, saturation and lightness shifts (the ``crop_color`` ranges)."""
    if images.shape[1] != 3:
        return images
    n = images.shape[0]
    hue, light, sat = _rgb_to_hls(images)
    shape = (n, 1, 1)
    dh = _uniform(n, -HUE_RANGE, HUE_RANGE, images, generator).view(shape) / 180.0
    ds = _uniform(n, -SATURATION_RANGE, SATURATION_RANGE, images, generator).view(shape) / 255.0
    dl = _uniform(n, -LIGHTNESS_RANGE, LIGHTNESS_RANGE, images, generator).view(shape) / 255.0
    return _hls_to_rgb((hue + dh) % 1.0, (light + dl).clamp(0, 1), (sat + ds).clamp(0, 1))


def random_affine(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation (<= 10 deg), shear (<= 0.1) and aspect change (<= 0.25), reflecting edges."""
    n = images.shape[0]
    angle = _uniform(n, -MAX_ROTATE_DEG, MAX_ROTATE_DEG, images, generator) * (math.pi / 180)
    shear = _uniform(n, -MAX_SHEAR, MAX_SHEAR, images, generator)
    aspect = 1 + _uniform(n, -MAX_ASPECT, MAX_ASPECT, images, generator)
    sx, sy = aspect.sqrt(), 1 / aspect.sqrt()
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    # rotation @ shear @ scale, as the inverse map grid_sample wants (small angles: symmetric)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = (-sin + cos * shear) * sy
    theta[:, 1, 0] = sin * sx
    theta[:, 1, 1] = (cos + sin * shear) * sy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


# Ruifrok & Johnston's haematoxylin-eosin-DAB stain vectors (as scikit-image uses them)
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)


def random_hed(
    images: torch.Tensor, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """HED stain jitter: each stain scaled by U(1-sigma, 1+sigma), shifted by U(-sigma, sigma)."""
    if sigma <= 0 or images.shape[1] != 3:
        return images
    n = images.shape[0]
    to_hed = _HED_FROM_RGB.to(images.device, images.dtype)
    to_rgb = _RGB_FROM_HED.to(images.device, images.dtype)
    rgb = images.clamp_min(1e-6).permute(0, 2, 3, 1)
    stains = ((rgb.log() / _LOG_ADJUST) @ to_hed).clamp_min(0)
    alpha = torch.rand(n, 1, 1, 3, generator=generator).to(images) * 2 * sigma + (1 - sigma)
    beta = (torch.rand(n, 1, 1, 3, generator=generator).to(images) * 2 - 1) * sigma
    stains = stains * alpha + beta
    out = torch.exp((stains * _LOG_ADJUST) @ to_rgb).clamp_(0, 1)
    return out.permute(0, 3, 1, 2).contiguous()


class Augmenter:
    """The batch augmentation of one training run.

    Args:
        augmentation_type: None, ``crop``, ``crop_color`` or ``crop_color_transform``.
        dihedral: also put each image in a random one of its 8 dihedral views.
        stain_jitter: sigma of the HED stain jitter (0: off).
        generator: the random generator (CPU), for reproducible runs.
    """

    def __init__(
        self,
        augmentation_type: str | None,
        *,
        dihedral: bool = False,
        stain_jitter: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.augmentation_type = augmentation_type
        self.dihedral = dihedral
        self.stain_jitter = stain_jitter
        self.generator = generator

    @property
    def crops(self) -> bool:
        """Whether images are cropped at random positions when decoded."""
        return self.augmentation_type is not None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augment a float batch ``(N, C, H, W)`` in ``[0, 1]``."""
        kind, gen = self.augmentation_type, self.generator
        if kind is not None:
            images = random_hflip(images, gen)
        if kind in ("crop_color", "crop_color_transform"):
            images = random_hsl(images, gen)
        if kind == "crop_color_transform":
            images = random_affine(images, gen)
        if self.dihedral:
            images = random_dihedral(images, gen)
        if self.stain_jitter > 0:
            images = random_hed(images, self.stain_jitter, gen)
        return images
