"""Micro-batching: concurrent requests share one forward pass, fairly.

Requests put their images on an asyncio queue and await a future. One collector task keeps
the requests in progress in a line and composes each forward pass from them, up to
``max_batch_size`` images: each request in the line gets the same number of images in it (an
equal share of the batch, ``max_batch_size // requests``, and no more than a waiting small
request takes), so a request of many images is interleaved with the others in slices as small
as theirs rather than run to its end, or in large slices, while they wait. Requests served in
a batch go to the back of the line.

The collector waits up to ``max_wait_ms`` for more only while other requests are known to be
on their way (announced with :meth:`MicroBatcher.expect` while their bodies are decoded): a
lone request that finds the model idle starts at once, and under load requests pile up while
the previous batch runs, so batches grow with concurrency. A request whose client has gone
(its future cancelled) is dropped before its next slice is predicted. The forward pass runs in
one worker thread, so the event loop keeps accepting requests meanwhile.

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
from collections import deque
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
        abandoned: requests whose client went away before their answer.
        dropped: images of abandoned requests that were never predicted.
    """

    batches: int = 0
    images: int = 0
    largest: int = 0
    failures: int = 0
    abandoned: int = 0
    dropped: int = 0

    @property
    def mean_batch(self) -> float:
        """Images per forward pass, on average."""
        return self.images / self.batches if self.batches else 0.0


@attrs.define
class Ticket:
    """A request announced to the batcher that has not submitted yet."""

    open: bool = True


@attrs.define(eq=False)
class _Item:
    images: list[np.ndarray]
    future: asyncio.Future[np.ndarray]
    done: int = 0  # images predicted so far
    parts: list[np.ndarray] = attrs.Factory(list)

    @property
    def left(self) -> int:
        return len(self.images) - self.done


class MicroBatcher:
    """Groups images from concurrent requests into fair batches for ``predict``.

    Args:
        predict: takes a list of uint8 (H, W, 3) arrays and returns an (N, classes) array;
            it runs in a worker thread, one call at a time.
        max_batch_size: the most images in one call of ``predict``; a request with more
            images is predicted in slices, interleaved with other requests.
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
        self._line: deque[_Item] = deque()
        self._running: set[int] = set()  # ids of the requests in the batch now running
        self._expected = 0

    # --- request side ----------------------------------------------------------------------

    @contextlib.contextmanager
    def expect(self) -> Iterator[Ticket]:
        """Announce a request that will :meth:`submit` soon (while its body is decoded).

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

        Cancelling the call (the client went away) drops the images not yet predicted.

        Args:
            images: the request's images.
            ticket: the ticket :meth:`expect` gave this request, if it announced itself.

        Returns:
            An (len(images), classes) array of probabilities.

        Raises:
            Whatever ``predict`` raised for a batch these images were in.
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
        try:
            return await future
        except asyncio.CancelledError:
            self.stats.abandoned += 1
            raise

    @property
    def waiting(self) -> int:
        """Requests waiting for (the rest of) their answer, outside the batch now running."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return queued + sum(1 for item in self._line if id(item) not in self._running)

    # --- lifecycle -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._queue = asyncio.Queue()
        self._changed = asyncio.Event()
        self._line.clear()
        # one thread: forward passes never overlap, so torch's own threads are not contended
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcamflow-predict")
        self._task = asyncio.get_running_loop().create_task(self._collect_forever())

    async def aclose(self) -> None:
        """Stop the collector; requests still waiting fail with ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        waiting = list(self._line)
        self._line.clear()
        if self._queue is not None:
            while not self._queue.empty():
                waiting.append(self._queue.get_nowait())
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # --- collector -------------------------------------------------------------------------

    async def _collect_forever(self) -> None:
        assert self._queue is not None
        while True:
            if not self._line:
                self._line.append(await self._queue.get())
            await self._gather()
            self._drop_abandoned()
            if self._line:
                await self._run(self._compose())

    async def _gather(self) -> None:
        """Take every queued request; wait briefly for announced ones while the batch has room."""
        assert self._queue is not None and self._changed is not None
        deadline = time.monotonic() + self.max_wait_s
        while True:
            while not self._queue.empty():
                self._line.append(self._queue.get_nowait())
            if sum(item.left for item in self._line) >= self.max_batch_size:
                return
            remaining = deadline - time.monotonic()
            if self._expected <= 0 or remaining <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _drop_abandoned(self) -> None:
        kept = deque(item for item in self._line if not item.future.done())
        for item in self._line:
            if item.future.cancelled():
                self.stats.dropped += item.left
        self._line = kept

    def _compose(self) -> list[tuple[_Item, int]]:
        """The next batch: (request, images taken) pairs, the same number for each request.

        That number is the share of the batch each request would get
        (``max_batch_size // requests``), but no more than what the largest of the requests
        that fit in a share has left: a request of many images slices as much per pass as a
        waiting single-image request gets, so it cannot make the pass that one waits for long.
        """
        share = max(1, self.max_batch_size // len(self._line))
        small = [item.left for item in self._line if item.left <= share]
        quantum = max(small) if small else share
        room, batch = self.max_batch_size, []
        for item in self._line:
            if room == 0:
                break
            take = min(item.left, quantum, room)
            batch.append((item, take))
            room -= take
        # those served go to the back of the line, in their order; the rest come first
        served = {id(item) for item, _ in batch}
        self._line = deque(
            [item for item in self._line if id(item) not in served] + [item for item, _ in batch]
        )
        return batch

    async def _run(self, batch: list[tuple[_Item, int]]) -> None:
        images = [
            image for item, take in batch for image in item.images[item.done : item.done + take]
        ]
        loop = asyncio.get_running_loop()
        self._running = {id(item) for item, _ in batch}
        try:
            probabilities = await loop.run_in_executor(
                self._executor, self._predict_checked, images
            )
        except Exception as error:
            self.stats.failures += 1
            for item, _ in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            self._line = deque(item for item in self._line if not item.future.done())
            return
        finally:
            self._running = set()
        start = 0
        for item, take in batch:
            item.parts.append(probabilities[start : start + take])
            item.done += take
            start += take
            if item.left == 0:
                if not item.future.done():  # a client that went away leaves it cancelled
                    item.future.set_result(np.concatenate(item.parts))
                self._line.remove(item)

    def _predict_checked(self, images: list[np.ndarray]) -> np.ndarray:
        out = np.asarray(self._predict(images))
        if out.ndim != 2 or out.shape[0] != len(images):
            raise ValueError(
                f"the model returned shape {out.shape} for {len(images)} images, "
                "expected (images, classes)"
            )
        self.stats.batches += 1
        self.stats.images += len(images)
        self.stats.largest = max(self.stats.largest, len(images))
        return out
