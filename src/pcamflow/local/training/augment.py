"""Image transforms in torch: the algorithm's augmentations and PCam's local extensions.

Everything works on whole batches, on whatever device they are on, without a host
synchronisation (no data-dependent shapes, no ``.item()``), so augmentation costs little next
to the forward pass and never stalls a GPU.

- ``crop``: random crop (:func:`crop_images`) and a random horizontal flip (:func:`hflip`).
- ``crop_color``: also random hue, saturation and lightness shifts drawn from [-36, 36],
  [-50, 50] and [-50, 50], in the units of 8-bit HLS images (hue 0..180, the others 0..255),
  as MXNet's image iterator takes them (:func:`shift_hsl`).
- ``crop_color_transform``: also a random affine transform, rotation up to 10 degrees, shear up
  to 0.1 and aspect-ratio change up to 0.25 (:func:`warp_affine`).
- Local extensions: a random one of the 8 dihedral views (:func:`dihedral`) and HED
  stain jitter (:func:`hed_jitter`).

Each transform takes its random parameters as tensors. :class:`Augmenter` draws them per image
from :mod:`pcamflow.local.training.draws` (so an image's augmentation depends only on the seed,
the epoch and the image); the ``random_*`` functions draw them from a ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "Augmenter",
    "crop_images",
    "crop_offsets",
    "dihedral",
    "hed_jitter",
    "hflip",
    "random_affine",
    "random_crop",
    "random_dihedral",
    "random_hed",
    "random_hflip",
    "random_hsl",
    "shift_hsl",
    "warp_affine",
]

HUE_RANGE = 36.0
SATURATION_RANGE = 50.0
LIGHTNESS_RANGE = 50.0
MAX_ROTATE_DEG = 10.0
MAX_SHEAR = 0.1
MAX_ASPECT = 0.25

# the columns of an image's draws (see pcamflow.local.training.draws.uniform_draws)
_TOP, _LEFT, _FLIP, _HUE, _SAT, _LIGHT, _ANGLE, _SHEAR, _ASPECT, _VIEW = range(10)
_HED_ALPHA, _HED_BETA = slice(10, 13), slice(13, 16)


# --- crops -----------------------------------------------------------------------------------


def _padding(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """Reflection padding before a random crop: an image no larger than the window is padded
    by an eighth of the window (at least 2 pixels), so ``crop`` still shifts it."""
    if h > height and w > width:
        return 0, 0
    pad = max(2, min(height, width) // 8)
    return max(0, height - h) + pad, max(0, width - w) + pad


def crop_offsets(
    h: int, w: int, height: int, width: int, u_top: torch.Tensor, u_left: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window positions (in the padded image) from uniform draws in ``[0, 1)``."""
    pad_h, pad_w = _padding(h, w, height, width)
    span_h, span_w = h + 2 * pad_h - height + 1, w + 2 * pad_w - width + 1
    top = (u_top * span_h).long().clamp_(0, span_h - 1)
    left = (u_left * span_w).long().clamp_(0, span_w - 1)
    return top, left


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of reflection padding (``F.pad(mode="reflect")``), repeated as far as needed."""
    period = 2 * (size - 1)
    if period == 0:
        return torch.zeros_like(index)
    index = index.abs() % period
    return torch.where(index >= size, period - index, index)


def crop_images(
    images: torch.Tensor, height: int, width: int, top: torch.Tensor, left: torch.Tensor
) -> torch.Tensor:
    """``height x width`` windows of ``(N, H, W, C)`` images at per-image positions.

    Positions are in the image padded by reflection as :func:`crop_offsets` pads it; the
    window is gathered in one indexing operation, without building the padded images.
    """
    n, h, w = images.shape[:3]
    pad_h, pad_w = _padding(h, w, height, width)
    rows = _reflect(top[:, None] + torch.arange(height, device=top.device) - pad_h, h)
    cols = _reflect(left[:, None] + torch.arange(width, device=left.device) - pad_w, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images[batch, rows.to(images.device)[:, :, None], cols.to(images.device)[:, None, :]]


def random_crop(
    image: torch.Tensor, height: int, width: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random ``height x width`` window of one ``(C, H, W)`` image (reflect-padded first if
    it is no larger than the window, see :func:`crop_offsets`)."""
    u = torch.rand(2, generator=generator)
    top, left = crop_offsets(image.shape[-2], image.shape[-1], height, width, u[:1], u[1:])
    return crop_images(image.permute(1, 2, 0)[None], height, width, top, left)[0].permute(2, 0, 1)


# --- transforms with explicit parameters -----------------------------------------------------


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip left-right the images of ``(N, C, H, W)`` where ``mask`` is true."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


def dihedral(images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Put each image in dihedral view ``views[i]`` (0..7): a left-right flip for views 4..7,
    then ``views % 4`` quarter turns (a non-square image gets an up-down flip for odd turns)."""
    views = views.view(-1, 1, 1, 1)
    out = torch.where(views >= 4, images.flip(-1), images)
    turns = views % 4
    if images.shape[-1] != images.shape[-2]:
        return torch.where(turns % 2 == 1, out.flip(-2), out)
    out = torch.where(turns >= 2, out.flip(-2, -1), out)  # two quarter turns
    return torch.where(turns % 2 == 1, torch.rot90(out, 1, dims=(-2, -1)), out)


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


def shift_hsl(images: torch.Tensor, hue: torch.Tensor, saturation: torch.Tensor,
              lightness: torch.Tensor) -> torch.Tensor:
    """Shift each RGB image's hue, saturation and lightness by per-image amounts, in 8-bit HLS
    units (hue 0..180, the others 0..255)."""
    if images.shape[1] != 3:
        return images
    h, light, sat = _rgb_to_hls(images)
    shape = (-1, 1, 1)
    h = (h + hue.to(images).view(shape) / 180.0) % 1.0
    light = (light + lightness.to(images).view(shape) / 255.0).clamp(0, 1)
    sat = (sat + saturation.to(images).view(shape) / 255.0).clamp(0, 1)
    return _hls_to_rgb(h, light, sat)


def warp_affine(images: torch.Tensor, angle: torch.Tensor, shear: torch.Tensor,
                aspect: torch.Tensor) -> torch.Tensor:
    """Rotate (radians), shear and change the aspect ratio (a factor) of each image,
    reflecting at the edges."""
    angle, shear, aspect = (t.to(images) for t in (angle, shear, aspect))
    sx, sy = aspect.sqrt(), 1 / aspect.sqrt()
    cos, sin = angle.cos(), angle.sin()
    # rotation @ shear @ scale, as the inverse map grid_sample wants (small angles: symmetric)
    theta = torch.stack([
        torch.stack([cos * sx, (-sin + cos * shear) * sy, torch.zeros_like(cos)], 1),
        torch.stack([sin * sx, (cos + sin * shear) * sy, torch.zeros_like(cos)], 1),
    ], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


# Ruifrok & Johnston's haematoxylin-eosin-DAB stain vectors (as scikit-image uses them)
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)


def hed_jitter(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Scale each image's three stains by ``alpha`` and shift them by ``beta`` (``(N, 3)``)."""
    if images.shape[1] != 3:
        return images
    to_hed = _HED_FROM_RGB.to(images.device, images.dtype)
    to_rgb = _RGB_FROM_HED.to(images.device, images.dtype)
    rgb = images.clamp_min(1e-6).permute(0, 2, 3, 1)
    stains = ((rgb.log() / _LOG_ADJUST) @ to_hed).clamp_min(0)
    stains = stains * alpha.to(images).view(-1, 1, 1, 3) + beta.to(images).view(-1, 1, 1, 3)
    out = torch.exp((stains * _LOG_ADJUST) @ to_rgb).clamp_(0, 1)
    return out.permute(0, 3, 1, 2).contiguous()


# --- the same, with parameters drawn from a generator ----------------------------------------


def _between(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    return hflip(images, (torch.rand(images.shape[0], generator=generator) < 0.5).to(
        images.device))


def random_dihedral(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Put each image in one of its 8 dihedral views, drawn uniformly."""
    views = torch.randint(0, 8, (images.shape[0],), generator=generator)
    return dihedral(images, views.to(images.device))


def random_hsl(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add random hue, saturation and lightness shifts (the ``crop_color`` ranges)."""
    u = torch.rand(3, images.shape[0], generator=generator)
    return shift_hsl(images, _between(u[0], -HUE_RANGE, HUE_RANGE),
                     _between(u[1], -SATURATION_RANGE, SATURATION_RANGE),
                     _between(u[2], -LIGHTNESS_RANGE, LIGHTNESS_RANGE))


def _affine_parameters(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    angle = _between(u[0], -MAX_ROTATE_DEG, MAX_ROTATE_DEG) * (math.pi / 180)
    return angle, _between(u[1], -MAX_SHEAR, MAX_SHEAR), 1 + _between(u[2], -MAX_ASPECT,
                                                                       MAX_ASPECT)


def random_affine(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation (<= 10 deg), shear (<= 0.1) and aspect change (<= 0.25), reflecting edges."""
    u = torch.rand(3, images.shape[0], generator=generator)
    return warp_affine(images, *_affine_parameters(u))


def random_hed(
    images: torch.Tensor, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """HED stain jitter: each stain scaled by U(1-sigma, 1+sigma), shifted by U(-sigma, sigma)."""
    if sigma <= 0 or images.shape[1] != 3:
        return images
    u = torch.rand(2, images.shape[0], 3, generator=generator)
    return hed_jitter(images, _between(u[0], 1 - sigma, 1 + sigma), _between(u[1], -sigma, sigma))


class Augmenter:
    """The augmentation of one training run, its randomness drawn per image.

    Args:
        augmentation_type: None, ``crop``, ``crop_color`` or ``crop_color_transform``.
        dihedral: also put each image in a random one of its 8 dihedral views.
        stain_jitter: sigma of the HED stain jitter (0: off).
    """

    def __init__(
        self,
        augmentation_type: str | None,
        *,
        dihedral: bool = False,
        stain_jitter: float = 0.0,
    ) -> None:
        self.augmentation_type = augmentation_type
        self.dihedral = dihedral
        self.stain_jitter = stain_jitter

    @property
    def crops(self) -> bool:
        """Whether images are cropped at random positions."""
        return self.augmentation_type is not None

    @property
    def active(self) -> bool:
        """Whether :meth:`__call__` changes images at all."""
        return self.crops or self.dihedral or self.stain_jitter > 0

    def crop(self, images: torch.Tensor, height: int, width: int,
             draws: torch.Tensor) -> torch.Tensor:
        """Random ``height x width`` windows of uint8 ``(N, H, W, C)`` images."""
        top, left = crop_offsets(images.shape[1], images.shape[2], height, width,
                                 draws[:, _TOP], draws[:, _LEFT])
        return crop_images(images, height, width, top, left)

    def __call__(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Augment a float batch ``(N, C, H, W)`` in ``[0, 1]``; ``draws`` are its images'
        uniform draws, ``(N, STREAMS)`` (:func:`pcamflow.local.training.draws.uniform_draws`)."""
        kind = self.augmentation_type
        if kind is not None:
            images = hflip(images, draws[:, _FLIP] < 0.5)
        if kind in ("crop_color", "crop_color_transform"):
            images = shift_hsl(images, _between(draws[:, _HUE], -HUE_RANGE, HUE_RANGE),
                               _between(draws[:, _SAT], -SATURATION_RANGE, SATURATION_RANGE),
                               _between(draws[:, _LIGHT], -LIGHTNESS_RANGE, LIGHTNESS_RANGE))
        if kind == "crop_color_transform":
            images = warp_affine(images, *_affine_parameters(draws[:, _ANGLE:_ASPECT + 1].T))
        if self.dihedral:
            images = dihedral(images, (draws[:, _VIEW] * 8).long().clamp_(0, 7))
        if self.stain_jitter > 0:
            sigma = self.stain_jitter
            images = hed_jitter(images, _between(draws[:, _HED_ALPHA], 1 - sigma, 1 + sigma),
                                _between(draws[:, _HED_BETA], -sigma, sigma))
        return images
