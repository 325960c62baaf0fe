"""AsyncEngine: the bridge between the asyncio front end and the engine thread.

The event loop only enqueues commands and awaits per-request output queues. One
dedicated engine thread owns the `EngineCore` (scheduler, cache manager, executor) and
runs steps back to back while there is work, sleeping on an event otherwise (woken by
new commands and by finished transfers). Outputs go back with `call_soon_threadsafe`,
one callback per step, together with the requests that finished meanwhile: each finish
(stop, length or abort) is counted there exactly once, whoever decided it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cache.stats import CacheStats
from server.engine.core import EngineCore, EngineStats
from server.engine.request import EngineRequest, FinishedRequest, RequestOutput
from server.metrics import ServerMetrics

if TYPE_CHECKING:
    from server.vllm_metrics import VllmMetrics

logger = logging.getLogger(__name__)
T = TypeVar("T")


class QueueFullError(RuntimeError):
    """The engine already holds as many requests as it accepts."""


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an internal error."""


class AsyncEngine:
    """Owns the engine thread; safe to call from the event loop only."""

    def __init__(
        self,
        core: EngineCore,
        max_num_requests: int,
        metrics: ServerMetrics,
        wakeup: threading.Event,
    ) -> None:
        """`wakeup` is the event the engine thread sleeps on; other threads set it."""
        self._core = core
        self._max_num_requests = max_num_requests
        self._metrics = metrics
        self._inbox: deque[Callable[[], None]] = deque()
        self._wakeup = wakeup
        self._streams: dict[str, asyncio.Queue[RequestOutput | Exception]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self.cache_stats = CacheStats()
        self.engine_stats = EngineStats()
        self.vllm_metrics: VllmMetrics | None = None  # set by the app before start()

    @property
    def num_requests(self) -> int:
        return len(self._streams)

    @property
    def is_healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="tierkv-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the engine thread (requests still running are dropped)."""
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- event-loop API ------------------------------------------------------------------

    def check_capacity(self) -> None:
        """Raise if a new request would be refused (engine dead or full)."""
        if self._error is not None:
            raise EngineDeadError(str(self._error))
        if len(self._streams) >= self._max_num_requests:
            raise QueueFullError(f"{len(self._streams)} requests in flight")

    def add(self, request: EngineRequest) -> RequestStream:
        """Hand `request` to the engine now; iterate the returned stream for its outputs.

        Raises QueueFullError / EngineDeadError at once, before any response is sent.
        The caller must `close()` the stream (it aborts the request if unfinished).
        """
        self.check_capacity()
        queue: asyncio.Queue[RequestOutput | Exception] = asyncio.Queue()
        self._streams[request.request_id] = queue
        self._submit(lambda: self._core.add(request))
        return RequestStream(self, request.request_id, queue)

    async def call(self, fn: Callable[[EngineCore], T]) -> T:
        """Run `fn(core)` on the engine thread (between steps) and await its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(self._core))
            except Exception as exc:
                future.set_exception(exc)

        self._submit(run)
        return await asyncio.wrap_future(future)

    # -- engine thread -------------------------------------------------------------------

    def _submit(self, command: Callable[[], None]) -> None:
        self._inbox.append(command)
        self._wakeup.set()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._wakeup.clear()
                while self._inbox:  # FIFO: an abort of a request comes after its add
                    self._inbox.popleft()()
                self._core.poll_transfers()
                if self._core.has_work():
                    outputs = self._core.step()
                else:
                    outputs = []
                    self._core.idle()
                # Publish before dispatch: a client that sees a token and then asks
                # /metrics must find the stats of the step that made it.
                self._publish_stats()
                finished = self._core.take_finished()
                if outputs or finished:
                    self._dispatch(outputs, finished)
                # Running requests may all be waiting for the rest of their prefix
                # (a tail load): then sleep until a transfer wakes us, do not spin.
                if outputs or (self._core.scheduler.running and self._core.ran_step):
                    continue
                self._core.idle()  # whatever wakes us, the device idled meanwhile
                self._wakeup.wait(timeout=1.0)
        except BaseException as exc:  # surface engine bugs to every waiting client
            logger.exception("engine thread crashed")
            self._error = exc
            self._fail_all(EngineDeadError(f"engine stopped: {type(exc).__name__}: {exc}"))

    def _publish_stats(self) -> None:
        # Copies, swapped in as whole objects: readers on other threads never see a
        # half-updated record.
        self.engine_stats = copy.copy(self._core.refresh_stats())
        self.cache_stats = self._core.cache.snapshot_stats()

    def _dispatch(self, outputs: list[RequestOutput], finished: list[FinishedRequest]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, outputs, finished)

    def _deliver(self, outputs: list[RequestOutput], finished: list[FinishedRequest]) -> None:
        # Count finishes before handing out the outputs that carry them: a client that
        # got its last token and then asks /metrics finds its request counted.
        for done in finished:
            self._metrics.e2e_latency.observe(done.e2e_seconds)
            self._metrics.request_success.labels(done.reason.value).inc()
            if self.vllm_metrics is not None:
                self.vllm_metrics.observe_finished(done)
        for out in outputs:
            if self.vllm_metrics is not None:
                self.vllm_metrics.observe_output(out)
            queue = self._streams.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)
                if out.is_finished:
                    # Finished requests no longer count against capacity, even if
                    # their consumer has not read (or never reads) the last output.
                    del self._streams[out.request_id]

    def _close_stream(self, request_id: str, finished: bool) -> None:
        if self._streams.pop(request_id, None) is not None and not finished:
            self._submit(lambda: self._core.abort(request_id))

    def _fail_all(self, error: Exception) -> None:
        def fail() -> None:
            for queue in self._streams.values():
                queue.put_nowait(error)

        if self._loop is not None:
            self._loop.call_soon_threadsafe(fail)


class RequestStream:
    """The outputs of one request, consumed on the event loop.

    Observes TTFT and inter-token latency as outputs arrive (finishes and end-to-end
    latency are counted by the engine side, see `AsyncEngine._deliver`). `close()` is
    idempotent; closing before the final output aborts the request in the engine.
    """

    def __init__(
        self, engine: AsyncEngine, request_id: str, queue: asyncio.Queue[RequestOutput | Exception]
    ) -> None:
        self._engine = engine
        self.request_id = request_id
        self._queue = queue
        self._arrival = time.perf_counter()
        self._last_token_time: float | None = None
        self._finished = False
        self._closed = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._finished or self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, Exception):
            self.close()
            raise item
        metrics = self._engine._metrics
        vllm = self._engine.vllm_metrics
        now = time.perf_counter()
        if item.new_token_ids:
            if self._last_token_time is None:
                metrics.time_to_first_token.observe(now - self._arrival)
                if vllm is not None:
                    vllm.observe_first_token(now - self._arrival)
            else:
                metrics.inter_token_latency.observe(now - self._last_token_time)
                if vllm is not None:
                    vllm.observe_token_gap(now - self._last_token_time)
            self._last_token_time = now
        if item.is_finished:
            self._finished = True
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine._close_stream(self.request_id, self._finished)


def engine_summary(engine: AsyncEngine) -> dict[str, Any]:
    """A JSON-able view of the engine's latest stats (for /health and /cache/stats)."""
    s = engine.engine_stats
    return {
        "running": s.num_running,
        "waiting": s.num_waiting,
        "loading_kv": s.num_loading,
        "preemptions": s.num_preemptions,
        "steps": s.num_steps,
    }
