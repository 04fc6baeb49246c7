"""Which images each batch holds, and batches read from the decoded cache.

:func:`epoch_shards` is the plan of an epoch: one shuffle of the whole train split (the same
in every process), cut into global batches, each split into one shard per process. Every image
of the epoch's batches is trained on exactly once, by exactly one process, whatever the number
of processes. :class:`CachedBatches` turns shards into uint8 batches read from a
:class:`~pcamflow.local.model.cache.DecodedImages`: a background thread slices rows of the
memory map (into pinned memory for a GPU) while the device works on the previous batch, or,
when the whole cache fits in a GPU's memory, it is copied there once and batches are sliced
on the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from pcamflow.local.model.cache import DecodedImages, prefetch

__all__ = ["Batch", "CachedBatches", "epoch_shards", "valid_shards"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""uint8 images ``(N, H, W, C)``, int64 labels, int64 image indices (rows of the manifest)."""
_DEVICE_SHARE = 0.3  # at most this share of a GPU's free memory holds a resident cache


def epoch_shards(
    n: int, global_batch: int, *, seed: int, epoch: int, world: int = 1, rank: int = 0
) -> list[tuple[np.ndarray, int]]:
    """This process's part of each batch of an epoch: ``(image indices, global batch size)``.

    The order is a permutation of ``range(n)`` drawn from ``seed`` and ``epoch``; batches are
    ``global_batch`` consecutive images of it, the last (smaller) one dropped when there is more
    than one batch (a one-image batch breaks batch normalisation); each batch is split into
    ``world`` shards as evenly as possible, and this process takes shard ``rank``.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator).numpy()
    starts = range(0, n, global_batch)
    batches = [order[s : s + global_batch] for s in starts]
    if len(batches) > 1 and len(batches[-1]) < global_batch:
        batches.pop()
    return [(np.array_split(b, world)[rank], len(b)) for b in batches]


def valid_shards(n: int, batch: int, *, world: int = 1, rank: int = 0) -> list[np.ndarray]:
    """This process's validation batches: a contiguous ``1/world`` of the split, in order."""
    mine = np.array_split(np.arange(n), world)[rank]
    return [mine[s : s + batch] for s in range(0, len(mine), batch)]


class CachedBatches:
    """Batches of a decoded cache on ``device``.

    Args:
        cache: the decoded split.
        device: where batches go.
        resident: copy the whole cache to the device once (None: when it is a GPU and the
            cache takes at most 30% of its free memory).
    """

    def __init__(self, cache: DecodedImages, device: torch.device,
                 resident: bool | None = None) -> None:
        self.cache = cache
        self.device = device
        if resident is None:
            resident = device.type == "cuda" and (
                cache.nbytes <= _DEVICE_SHARE * torch.cuda.mem_get_info(device)[0])
        self.images: torch.Tensor | None = None
        self.labels = torch.from_numpy(cache.labels)
        if resident:
            self.images = _upload(cache.images, device)
            self.labels = self.labels.to(device)

    def batches(self, shards: Sequence[np.ndarray]) -> Iterator[Batch]:
        """The batches whose image indices are ``shards``."""
        if not shards:
            return iter(())
        if self.images is not None:
            return self._resident(shards)
        return self._host(shards)

    def _resident(self, shards: Sequence[np.ndarray]) -> Iterator[Batch]:
        assert self.images is not None
        order = torch.from_numpy(np.concatenate(shards)).to(self.device)  # one copy an epoch
        start = 0
        for shard in shards:
            index = order[start : start + len(shard)]
            start += len(shard)
            yield self.images.index_select(0, index), self.labels.index_select(0, index), index

    def _host(self, shards: Sequence[np.ndarray]) -> Iterator[Batch]:
        pin = self.device.type == "cuda"
        images, labels = self.cache.images, self.labels

        def read() -> Iterator[Batch]:
            for shard in shards:
                rows = torch.empty((len(shard), *images.shape[1:]), dtype=torch.uint8,
                                   pin_memory=pin)
                np.take(images, shard, axis=0, out=rows.numpy())  # releases the GIL
                index = torch.from_numpy(shard)
                yield rows, labels[index], index

        for rows, label, index in prefetch(read()):
            yield (rows.to(self.device, non_blocking=True),
                   label.to(self.device, non_blocking=True),
                   index.to(self.device, non_blocking=True))


def _upload(images: np.ndarray, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), chunk):  # a copy: the memory map is read-only
        out[start : start + chunk].copy_(torch.from_numpy(np.array(images[start : start + chunk])))
    return out
