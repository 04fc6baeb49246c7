"""Micro-batching: concurrent requests share one forward pass.

Requests put their images on an asyncio queue and await a future. One collector task takes
the first waiting request and every other one already queued, up to ``max_batch_size``
images. It waits up to ``max_wait_ms`` for more only while other requests are known to be on
their way (announced with :meth:`MicroBatcher.expect`, while their bodies are read and
decoded): a lone request is never held back, so latency at concurrency 1 stays close to the
model's own, and under load requests pile up while the previous batch runs, so batches grow
with concurrency. The forward pass runs in one worker thread, so the event loop keeps
accepting requests meanwhile.

>>> import asyncio, numpy as np
>>> def predict(images):
...     return np.array([[0.25, 0.75]] * len(images))
>>> async def main():
...     batcher = MicroBatcher(predict, max_batch_size=4, max_wait_ms=1.0)
...     try:
...         return await batcher.submit([np.zeros((2, 2, 3), np.uint8)])
...     finally:
...         await batcher.aclose()
>>> asyncio.run(main()).tolist()
[[0.25, 0.75]]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs
import numpy as np

__all__ = ["BatchStats", "MicroBatcher", "Ticket"]

log = logging.getLogger("pcamflow.server")

Predict = Callable[[list[np.ndarray]], np.ndarray]


@attrs.define
class BatchStats:
    """Counters of what the batcher has done (for ``/info`` and the benchmark).

    Attributes:
        batches: forward passes run.
        images: images predicted.
        largest: the largest batch so far.
        failures: forward passes that raised.
    """

    batches: int = 0
    images: int = 0
    largest: int = 0
    failures: int = 0

    @property
    def mean_batch(self) -> float:
        """Images per forward pass, on average."""
        return self.images / self.batches if self.batches else 0.0


@attrs.define
class Ticket:
    """A request announced to the batcher that has not submitted yet."""

    open: bool = True


@attrs.define
class _Item:
    images: list[np.ndarray]
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Groups images from concurrent requests into batches for ``predict``.

    Args:
        predict: takes a list of uint8 (H, W, 3) arrays and returns an (N, classes) array;
            it runs in a worker thread, one call at a time.
        max_batch_size: the most images in one call of ``predict``; a request with more images
            than this is run on its own, in slices of this size.
        max_wait_ms: how long a batch waits for requests announced with :meth:`expect`.
    """

    def __init__(self, predict: Predict, *, max_batch_size: int, max_wait_ms: float) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._expected = 0

    # --- request side ----------------------------------------------------------------------

    @contextlib.contextmanager
    def expect(self) -> Iterator[Ticket]:
        """Announce a request that will :meth:`submit` soon (while its body is read).

        A batch being gathered waits (up to ``max_wait_ms``) for announced requests, and
        stops waiting as soon as none is left on its way: pass the ticket to :meth:`submit`,
        or leave the block (a request that fails before submitting) to withdraw it.
        """
        ticket = Ticket()
        self._expected += 1
        try:
            yield ticket
        finally:
            self._withdraw(ticket)

    def _withdraw(self, ticket: Ticket) -> None:
        if ticket.open:
            ticket.open = False
            self._expected -= 1
            if self._changed is not None:
                self._changed.set()

    async def submit(
        self, images: Sequence[np.ndarray], ticket: Ticket | None = None
    ) -> np.ndarray:
        """Predict ``images`` (uint8 (H, W, 3) arrays) with whatever else is waiting.

        Args:
            images: the request's images.
            ticket: the ticket :meth:`expect` gave this request, if it announced itself.

        Returns:
            An (len(images), classes) array of probabilities.

        Raises:
            Whatever ``predict`` raised for the batch these images were in.
        """
        if not images:
            raise ValueError("submit needs at least one image")
        self._start()
        assert self._queue is not None and self._changed is not None
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(list(images), future))
        if ticket is not None:
            self._withdraw(ticket)
        self._changed.set()
        return await future

    @property
    def waiting(self) -> int:
        """Requests queued for the next batch."""
        return self._queue.qsize() if self._queue is not None else 0

    # --- lifecycle -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._queue = asyncio.Queue()
        self._changed = asyncio.Event()
        # one thread: forward passes never overlap, so torch's own threads are not contended
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcamflow-predict")
        self._task = asyncio.get_running_loop().create_task(self._collect_forever())

    async def aclose(self) -> None:
        """Stop the collector; requests still queued fail with ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # --- collector -------------------------------------------------------------------------

    async def _collect_forever(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            batch = await self._gather(first)
            await self._run(batch)

    async def _gather(self, first: _Item) -> list[_Item]:
        assert self._queue is not None and self._changed is not None
        batch, size = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch_size:
            if not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item.images)
                continue
            remaining = deadline - time.monotonic()
            if self._expected <= 0 or remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        images = [image for item in batch for image in item.images]
        loop = asyncio.get_running_loop()
        try:
            probabilities = await loop.run_in_executor(self._executor, self._predict_all, images)
        except Exception as error:
            self.stats.failures += 1
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        start = 0
        for item in batch:
            end = start + len(item.images)
            if not item.future.done():  # a client that went away leaves a cancelled future
                item.future.set_result(probabilities[start:end])
            start = end

    def _predict_all(self, images: list[np.ndarray]) -> np.ndarray:
        parts = []
        for start in range(0, len(images), self.max_batch_size):
            chunk = images[start : start + self.max_batch_size]
            out = np.asarray(self._predict(chunk))
            if out.ndim != 2 or out.shape[0] != len(chunk):
                raise ValueError(
                    f"the model returned shape {out.shape} for {len(chunk)} images, "
                    "expected (images, classes)"
                )
            parts.append(out)
            self.stats.batches += 1
            self.stats.images += len(chunk)
            self.stats.largest = max(self.stats.largest, len(chunk))
        return np.concatenate(parts)
