"""Random numbers keyed by image: the same draws whatever the batch, process or device.

Each training image gets its random augmentation from a counter-based generator: a 32-bit
integer hash of ``(seed, epoch, image index, stream)``. The draws of an image therefore do not
depend on which batch it lands in, how a batch is split across processes, whether its JPEG was
streamed or read from the decoded cache, or whether the run was resumed; and they are computed
on the device, with no generator state to carry and no host synchronisation.

The hash is Chris Wellons' ``lowbias32``; every product is done in 16-bit halves so that it
stays exact in int64 arithmetic on every device.

>>> keys = image_keys(torch.arange(4), seed=0, epoch=0)
>>> u = uniform_draws(keys, 3)
>>> u.shape, bool((u >= 0).all() and (u < 1).all())
(torch.Size([4, 3]), True)
>>> torch.equal(uniform_draws(keys[2:], 3), u[2:])
True
"""

from __future__ import annotations

import torch

__all__ = ["STREAMS", "epoch_key", "hash32", "image_keys", "uniform_draws"]

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
STREAMS = 16
"""Independent draws per image and epoch (crop, flip, colour, affine, dihedral, stain)."""


def _mul(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``(x * constant) mod 2**32`` for ``0 <= x < 2**32``, exact in int64."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + ((x * high) & 0xFFFF) * 65536) & _MASK


def hash32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` of int64 values in ``[0, 2**32)``, elementwise."""
    x = x ^ (x >> 16)
    x = _mul(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash_int(value: int) -> int:
    return int(hash32(torch.tensor([value & _MASK], dtype=torch.int64))[0])


def epoch_key(seed: int, epoch: int) -> int:
    """The key of one epoch of one run (a 32-bit integer)."""
    return _hash_int(_hash_int(seed) ^ (epoch & _MASK))


def image_keys(indices: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """The keys of training images ``indices`` (their rows in the train manifest) in an epoch."""
    return hash32((indices.to(torch.int64) & _MASK) ^ epoch_key(seed, epoch))


def uniform_draws(keys: torch.Tensor, streams: int = STREAMS) -> torch.Tensor:
    """``(len(keys), streams)`` float32 draws in ``[0, 1)``, on the keys' device."""
    offsets = _mul(torch.arange(1, streams + 1, device=keys.device, dtype=torch.int64), _GOLDEN)
    mixed = hash32((keys.to(torch.int64)[:, None] + offsets[None, :]) & _MASK)
    return (mixed >> 8).to(torch.float32) * (1.0 / (1 << 24))
