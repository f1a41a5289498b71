"""Dynamic batching: concurrent requests coalesce into one ``guard.classify_requests`` call.

One worker task takes the first queued request with whatever else is queued (up to ``max_batch``) and judges
them in one forward pass in the batcher's own thread; batches run one at a time, so the model is
never used by two batches at once, and they never wait behind other work in asyncio's shared thread pool
(where the server decodes images). Requests that queued while a batch ran form the next batch at once; an
idle worker waits up to ``max_wait_ms`` only for requests already in the server and decoding their images
(:meth:`DynamicBatcher.expect`), so batching never holds a request back for batch-mates nobody has sent.
Each item is a whole request (its images are judged together, as on every other path).
A psaguard error of one request (bad input, or a failure under
``on_error="block"``) would fail the whole ``classify_requests`` call, so the batch is then judged again one
request at a time and only the failing request gets the error. Stopping drains the queue first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from psaguard.errors import PsaGuardError
from psaguard.request import GuardRequest
from psaguard.serving.admission import Ticket
from psaguard.serving.metrics import ServeMetrics
from psaguard.serving.protocol import ApiError
from psaguard.verdict import SafetyVerdict

__all__ = ["ClassifyBatch", "DynamicBatcher"]

logger = logging.getLogger(__name__)

ClassifyBatch = Callable[[Sequence[GuardRequest]], list[SafetyVerdict]]
"""``guard.classify_requests`` (with the server's ``on_text_only``)."""


@dataclass
class _Item:
    request: GuardRequest
    future: asyncio.Future[SafetyVerdict]
    ticket: Ticket | None = None
    queued: float = field(default_factory=time.perf_counter)

    def done(self) -> None:
        """The item's work is over (judged, failed or skipped): its images no longer count as in flight."""
        if self.ticket is not None:
            self.ticket.release()
            self.ticket = None


class DynamicBatcher:
    """Queue plus worker task around a ``classify_requests`` function; start it inside the serving event loop."""

    def __init__(
        self,
        classify_requests: ClassifyBatch,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: ServeMetrics,
    ) -> None:
        self._classify_batch = classify_requests
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._metrics = metrics
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        self._expected = 0
        self._arrival: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        """Start the worker task in the running event loop."""
        self._queue = asyncio.Queue()
        self._arrival = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="psaguard-classify")
        self._worker = asyncio.create_task(self._work(), name="psaguard-batcher")
        self._accepting = True

    async def stop(self) -> None:
        """Refuse new requests, judge every queued one, then end the worker."""
        self._accepting = False
        if self._queue is not None and self._worker is not None:
            await self._queue.put(None)
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def expect(self, count: int) -> None:
        """``count`` more requests (fewer when negative) are on their way to the queue, decoding their images:
        an idle worker waits for them, up to ``max_wait_ms``, before it starts a batch."""
        self._expected = max(0, self._expected + count)
        self._wake()

    async def classify(self, image: Image.Image, prompt: str, ticket: Ticket | None = None) -> SafetyVerdict:
        """The verdict of a one-image request (see :meth:`submit`)."""
        return await self.submit(GuardRequest(images=(image,), prompt=prompt), ticket)

    def submit(self, request: GuardRequest, ticket: Ticket | None = None) -> asyncio.Future[SafetyVerdict]:
        """Queue one request now; the future gives its verdict, judged with whichever requests are queued with
        it (cancelling it skips the request if not yet judged). ``ticket`` (the request's image charge) is
        held until the batch that judges it ends, even if the request gives up."""
        if not self._accepting or self._queue is None:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
        if self._queue.qsize() + 1 > self.max_queue:
            raise ApiError(503, "the guard's queue is full; retry later", type="server_error", code="overloaded")
        future: asyncio.Future[SafetyVerdict] = asyncio.get_running_loop().create_future()
        if ticket is not None:
            ticket.retain()
        self._queue.put_nowait(_Item(request, future, ticket))
        self._metrics.queue_depth.set(self._queue.qsize())
        self._wake()
        return future

    def _wake(self) -> None:
        if self._arrival is not None:
            self._arrival.set()

    async def _work(self) -> None:
        assert self._queue is not None
        stopping = False
        while not stopping:
            # Busy: requests queued while the last batch ran; they are judged at once, never kept waiting.
            busy = not self._queue.empty()
            first = await self._queue.get()
            if first is None:
                break
            batch, stopping = await self._collect(first, busy)
            self._metrics.queue_depth.set(self._queue.qsize())
            for item in batch:
                if item.future.done():  # its client gave up (timed out): no model work for it
                    item.done()
            await self._run([item for item in batch if not item.future.done()])

    async def _collect(self, first: _Item, busy: bool) -> tuple[list[_Item], bool]:
        """``first`` plus what is queued, up to the batch size; True on the stop mark. An idle worker (nothing
        was queued) also waits, up to ``max_wait_ms``, for requests announced by :meth:`expect` but never for
        requests nobody has sent: waiting then would only delay ``first``."""
        assert self._queue is not None and self._arrival is not None
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if busy or self._expected == 0 or remaining <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                continue
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _run(self, batch: list[_Item]) -> None:
        try:
            await self._judge(batch)
        finally:
            for item in batch:
                item.done()

    async def _judge(self, batch: list[_Item]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        for item in batch:
            self._metrics.observe("queue", started - item.queued)
        self._metrics.batch_size.observe(len(batch))
        try:
            verdicts = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._classify_batch, [item.request for item in batch]
            )
        except PsaGuardError as err:
            if len(batch) == 1:
                _settle(batch[0].future, error=err)
            else:
                logger.info("batch of %d failed (%s); judging its requests one by one", len(batch), err)
                for item in batch:
                    await self._judge([item])
            return
        except Exception as err:  # a bug, not an input problem: every request of the batch fails closed
            logger.exception("classify_requests failed on a batch of %d", len(batch))
            for item in batch:
                _settle(item.future, error=err)
            return
        self._metrics.observe("classify", time.perf_counter() - started)
        for item, verdict in zip(batch, verdicts):
            _settle(item.future, result=verdict)


def _settle(
    future: asyncio.Future[SafetyVerdict], *, result: SafetyVerdict | None = None, error: BaseException | None = None
) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):  # cancelled meanwhile (the request timed out)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
