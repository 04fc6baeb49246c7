"""One epoch of training and one pass of validation, without stalling the device.

Batches arrive as uint8 images on the device (from the decoded cache or the JPEG stream);
cropping, augmentation and normalisation run there on whole batches. The running sums
(loss, correct predictions, images) stay on the device and are read once every
:data:`SYNC_EVERY` steps, for the progress bar and the divergence check, and at the end of the
epoch, where they are summed over the processes of a distributed run.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence

import attrs
import numpy as np
import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from pcamflow.errors import DivergedError
from pcamflow.local.training.augment import Augmenter
from pcamflow.local.training.batches import Batch, CachedBatches, epoch_shards, valid_shards
from pcamflow.local.training.dataset import ManifestImages, StreamLoader
from pcamflow.local.training.distributed import Distribution, sum_over_ranks
from pcamflow.local.training.draws import image_keys, uniform_draws

__all__ = ["SYNC_EVERY", "Inputs", "Split", "train_epoch", "validate"]

SYNC_EVERY = 25
"""Steps between reads of the device's running sums (progress bar, divergence check)."""


class Split:
    """One split's batches on the device, from the decoded cache or streamed from JPEGs.

    Args:
        cached: the split's decoded cache (None: stream through ``loader``).
        loader: the JPEG stream (None: read ``cached``).
        device: where batches go.
    """

    def __init__(self, device: torch.device, *, cached: CachedBatches | None = None,
                 loader: StreamLoader | None = None) -> None:
        if (cached is None) == (loader is None):
            raise ValueError("a split is either cached or streamed")
        self.device = device
        self.cached = cached
        self.loader = loader

    @property
    def streamed(self) -> bool:
        """Whether images arrive already cropped to the input (decoded by loader workers)."""
        return self.loader is not None

    def batches(self, epoch: int, shards: Sequence[np.ndarray]) -> Iterator[Batch]:
        """The batches of ``shards`` (image indices), uint8 ``(N, H, W, C)`` on the device."""
        if self.cached is not None:
            return self.cached.batches(shards)
        assert self.loader is not None
        return ((images.to(self.device, non_blocking=True),
                 labels.to(self.device, non_blocking=True),
                 index.to(self.device, non_blocking=True))
                for images, labels, index in self.loader.batches(epoch, shards))


@attrs.define
class Inputs:
    """Turns uint8 batches into the network's normalised, augmented float input.

    Attributes:
        shape: the input ``(channels, height, width)``.
        mean: per-channel mean (0..1 scale).
        std: per-channel standard deviation.
        augmenter: the run's augmentation.
        seed: the run's seed (keys each image's random draws with the epoch).
        device: the training device.
        channels_last: give the network NHWC-strided input.
    """

    shape: tuple[int, int, int]
    mean: Sequence[float]
    std: Sequence[float]
    augmenter: Augmenter
    seed: int
    device: torch.device
    channels_last: bool = False
    _scale: torch.Tensor = attrs.field(init=False)  # uint8 values -> normalised
    _unit_scale: torch.Tensor = attrs.field(init=False)  # 0..1 values -> normalised
    _shift: torch.Tensor = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        std = torch.tensor(self.std, dtype=torch.float32, device=self.device)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device)
        self._unit_scale = (1.0 / std).view(1, -1, 1, 1)
        self._scale = self._unit_scale / 255.0
        self._shift = (-mean / std).view(1, -1, 1, 1)

    def __call__(self, batch: Batch, split: Split, *, epoch: int, train: bool) -> torch.Tensor:
        """The network input of ``batch``; ``train`` crops at random and augments."""
        images, _, index = batch
        _, height, width = self.shape
        augment = train and self.augmenter.active
        draws = uniform_draws(image_keys(index, self.seed, epoch)) if augment else None
        if not split.streamed:
            if train and self.augmenter.crops:
                images = self.augmenter.crop(images, height, width, draws)
            elif images.shape[1:3] != (height, width):
                top, left = (images.shape[1] - height) // 2, (images.shape[2] - width) // 2
                images = images[:, top : top + height, left : left + width]
        x = images.permute(0, 3, 1, 2).float()
        scale = self._scale
        if augment:
            x, scale = self.augmenter(x.div_(255.0), draws), self._unit_scale
        x = torch.addcmul(self._shift, x, scale)
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()


@attrs.define
class EpochResult:
    """The training sums of an epoch, over every process."""

    loss_sum: float
    correct: float
    top_k_correct: float
    images: int


def _diverged(first_bad: torch.Tensor, bad_loss: torch.Tensor, dist: Distribution,
              message: Callable[[int, float], str]) -> None:
    """Raise :class:`DivergedError` on every process if any saw a non-finite loss."""
    step = first_bad.clone()
    if dist.distributed:
        torch.distributed.all_reduce(step, op=torch.distributed.ReduceOp.MIN)
    if math.isfinite(float(step)):
        mine = float(first_bad) == float(step)
        raise DivergedError(message(int(step), float(bad_loss) if mine else math.nan))


def train_epoch(
    model: torch.nn.Module,
    step_fn: Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]],
    split: Split,
    inputs: Inputs,
    *,
    n: int,
    global_batch: int,
    seed: int,
    epoch: int,
    dist: Distribution,
    top_k: int | None,
    diverged_message: Callable[[int, float], str],
    desc: str,
    progress: bool,
) -> EpochResult:
    """Train one epoch over this process's shards; return the sums over all processes.

    ``step_fn(inputs, labels, loss_scale)`` runs one optimisation step and returns the logits
    and the summed loss of the batch (the loss it minimised is ``sum * loss_scale``).

    Raises:
        DivergedError: the loss became NaN or infinite (the message names the first batch).
    """
    model.train()
    shards = epoch_shards(n, global_batch, seed=seed, epoch=epoch, world=dist.world_size,
                          rank=dist.rank)
    device = inputs.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    first_bad = torch.tensor(math.inf, dtype=torch.float64, device=device)
    bad_loss = torch.tensor(math.nan, dtype=torch.float64, device=device)
    bar = tqdm(total=len(shards), desc=desc, unit="batch", leave=False, file=sys.stderr,
               disable=None if progress and dist.is_main else True)
    batches = iter(split.batches(epoch, [shard for shard, _ in shards]))
    for step, (_, size) in enumerate(shards):
        # named regions, so that torch.profiler shows where an epoch's time goes
        with record_function("pcamflow.batch"):
            batch = next(batches)
        with record_function("pcamflow.inputs"):
            x = inputs(batch, split, epoch=epoch, train=True)
        labels = batch[1]
        with record_function("pcamflow.step"):
            # the global batch's mean loss: each process's sum over its share, averaged by DDP
            logits, loss_sum = step_fn(x, labels, dist.world_size / size)
        with record_function("pcamflow.metrics"), torch.no_grad():  # kept on the device
            bad = ~torch.isfinite(loss_sum)
            first_bad = torch.where(bad & torch.isinf(first_bad), float(step), first_bad)
            bad_loss = torch.where(bad & (first_bad == step), loss_sum.double(), bad_loss)
            sums[0] += loss_sum.detach()
            sums[1] += (logits.argmax(1) == labels).sum()
            if top_k:
                picks = logits.topk(min(top_k, logits.shape[1]), dim=1).indices
                sums[2] += (picks == labels[:, None]).any(1).sum()
            sums[3] += labels.shape[0]
        bar.update(1)
        if (step + 1) % SYNC_EVERY == 0:
            _diverged(first_bad, bad_loss, dist, diverged_message)
            loss, correct, _, seen = sums.tolist()
            bar.set_postfix(loss=f"{loss / max(seen, 1):.4f}", acc=f"{correct / max(seen, 1):.4f}")
    bar.close()
    _diverged(first_bad, bad_loss, dist, diverged_message)
    loss, correct, top_correct, seen = sum_over_ranks(sums, dist).tolist()
    return EpochResult(loss_sum=loss, correct=correct, top_k_correct=top_correct,
                       images=int(seen))


@torch.no_grad()
def validate(model: torch.nn.Module, split: Split, inputs: Inputs, *, n: int, batch: int,
             dist: Distribution, autocast: Callable[[], object]) -> float:
    """Accuracy on the whole validation split (centre crops, no augmentation)."""
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=inputs.device)
    shards = valid_shards(n, batch, world=dist.world_size, rank=dist.rank)
    for images in split.batches(0, shards):
        with record_function("pcamflow.validate"), autocast():  # type: ignore[attr-defined]
            logits = model(inputs(images, split, epoch=0, train=False))
        counts[0] += (logits.argmax(1) == images[1]).sum()
        counts[1] += images[1].shape[0]
    correct, total = sum_over_ranks(counts, dist).tolist()
    return correct / max(total, 1)


def stream_split(dataset: ManifestImages, device: torch.device, workers: int) -> Split:
    """A split streamed from JPEGs by ``workers`` loader processes kept for the whole run."""
    return Split(device, loader=StreamLoader(dataset, workers, pin_memory=device.type == "cuda"))
