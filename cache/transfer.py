"""The transfer thread: every Redis and LMDB operation of the cache manager runs here.

The engine thread submits jobs and later polls their results; it never waits on I/O.
Jobs run one at a time in submission order (FIFO), which is what keeps the manager's
optimistic index right: a load submitted after a spill of the same block sees the
spilled bytes, a demotion runs after the spill it demotes.

A job never raises into the engine: store failures (`TierError`) and bad blocks are
reported in the result, and the manager repairs its index and recomputes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from cache.block_format import CorruptBlockError, decode_block
from cache.block_hash import BlockHash
from cache.layout import KVLayout
from cache.stats import Tier, TierOp
from cache.tiers.base import Buffer, StorageTier, TierError

logger = logging.getLogger(__name__)


class LoadStatus(StrEnum):
    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"
    IO_ERROR = "io_error"


@dataclass(slots=True)
class StoreJob:
    """Write encoded blocks into `tier`."""

    tier: Tier
    items: list[tuple[BlockHash, bytes]]


@dataclass(slots=True)
class DemoteJob:
    """Move blocks from DDR to flash (read, write, delete), or copy them (`keep_source`)."""

    keys: list[BlockHash]
    keep_source: bool = False


@dataclass(slots=True)
class RemoveJob:
    tier: Tier
    keys: list[BlockHash]


class LoadGuard:
    """Makes abandoning a load and copying its blocks into HBM mutually exclusive.

    The transfer thread copies each block under `lock` and only if the load is not
    abandoned; `abandon()` (engine thread, at the load's deadline) takes the same lock,
    so once it returns no byte of this load reaches HBM again and the slots can be
    recomputed into. `statuses[i]` is OK once block i is in its slot.
    """

    __slots__ = ("lock", "abandoned", "statuses")

    def __init__(self, num_items: int) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.statuses = [LoadStatus.MISSING] * num_items

    def abandon(self) -> list[LoadStatus]:
        """Stop the load; return the statuses as of now (OK blocks are in their slots)."""
        with self.lock:
            self.abandoned = True
            return list(self.statuses)


@dataclass(slots=True)
class LoadJob:
    """Copy blocks from lower tiers into reserved HBM slots, validating every block."""

    ticket: int
    items: list[tuple[BlockHash, int, Tier]]  # (hash, HBM block id, source tier)
    guard: LoadGuard | None = None  # None: never abandoned


Job = StoreJob | DemoteJob | RemoveJob | LoadJob


@dataclass(slots=True)
class JobResult:
    """What a job did. `statuses` is per item for loads and stores (OK or IO_ERROR).

    `failures` lists each failed tier operation once, as (tier, operation).
    """

    job: Job
    statuses: list[LoadStatus] = field(default_factory=list)
    read_bytes: dict[Tier, int] = field(default_factory=dict)
    write_bytes: dict[Tier, int] = field(default_factory=dict)
    seconds: dict[Tier, float] = field(default_factory=dict)
    error: str | None = None
    failures: list[tuple[Tier, TierOp]] = field(default_factory=list)

    def fail(self, tier: Tier, op: TierOp, exc: Exception) -> None:
        self.failures.append((tier, op))
        self.error = f"{self.error}; {exc}" if self.error else str(exc)


class TransferWorker:
    """One daemon thread executing transfer jobs FIFO against the lower tiers."""

    def __init__(
        self,
        tiers: dict[Tier, StorageTier],
        layout: KVLayout,
        kv_pool: np.ndarray,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self._tiers = tiers
        self._layout = layout
        self._kv_pool = kv_pool
        self._notify = notify
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="tierkv-transfer", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._idle:
            self._pending += 1
        self._jobs.put(job)

    def poll(self) -> list[JobResult]:
        """Results of finished jobs, in completion order. Never blocks."""
        out: list[JobResult] = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted job has finished. Returns False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        """Finish queued jobs, then stop the thread. Tiers are closed by their owner."""
        self._jobs.put(None)
        self._thread.join()

    # -- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                result = self._execute(job)
            except Exception as exc:  # a bug must not kill the thread and hang the engine
                logger.exception("transfer job failed")
                result = JobResult(job, error=f"{type(exc).__name__}: {exc}")
            self._results.put(result)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            self._notify()

    def _execute(self, job: Job) -> JobResult:
        if isinstance(job, LoadJob):
            return self._load(job)
        if isinstance(job, StoreJob):
            return self._store(job)
        if isinstance(job, DemoteJob):
            return self._demote(job)
        return self._remove(job)

    def _store(self, job: StoreJob) -> JobResult:
        result = JobResult(job)
        start = time.perf_counter()
        try:
            self._tiers[job.tier].put_many(job.items)
        except TierError as exc:
            result.fail(job.tier, TierOp.STORE, exc)
            result.statuses = [LoadStatus.IO_ERROR] * len(job.items)
            return result
        result.statuses = [LoadStatus.OK] * len(job.items)
        result.write_bytes[job.tier] = sum(len(v) for _, v in job.items)
        result.seconds[job.tier] = time.perf_counter() - start
        return result

    def _demote(self, job: DemoteJob) -> JobResult:
        """DDR -> flash. Blocks gone from DDR are reported MISSING and not written."""
        result = JobResult(job, statuses=[LoadStatus.MISSING] * len(job.keys))
        payloads: list[tuple[BlockHash, bytes]] = []

        def keep(i: int, buf: Buffer | None) -> None:
            if buf is not None:
                payloads.append((job.keys[i], bytes(buf)))
                result.statuses[i] = LoadStatus.OK

        ddr, flash = self._tiers[Tier.DDR], self._tiers[Tier.FLASH]
        for tier, step in (
            (Tier.DDR, lambda: ddr.get_many(job.keys, keep)),
            (Tier.FLASH, lambda: flash.put_many(payloads)),
        ):
            try:
                step()
            except TierError as exc:
                result.fail(tier, TierOp.DEMOTE, exc)
                result.statuses = [LoadStatus.IO_ERROR] * len(job.keys)
                return result
        try:
            if not job.keep_source:
                ddr.remove_many(job.keys)
        except TierError as exc:  # flash holds them: the demotion stands, DDR keeps a copy
            result.fail(Tier.DDR, TierOp.DEMOTE, exc)
        moved = sum(len(v) for _, v in payloads)
        result.read_bytes[Tier.DDR] = moved
        result.write_bytes[Tier.FLASH] = moved
        return result

    def _remove(self, job: RemoveJob) -> JobResult:
        result = JobResult(job)
        try:
            self._tiers[job.tier].remove_many(job.keys)
        except TierError as exc:
            result.fail(job.tier, TierOp.REMOVE, exc)
        return result

    def _load(self, job: LoadJob) -> JobResult:
        guard = job.guard if job.guard is not None else LoadGuard(len(job.items))
        result = JobResult(job, statuses=guard.statuses)
        for tier in (Tier.DDR, Tier.FLASH):
            indices = [i for i, item in enumerate(job.items) if item[2] is tier]
            if indices and not guard.abandoned:
                self._load_from(tier, job, guard, indices, result)
        with guard.lock:
            result.statuses = list(guard.statuses)
        return result

    def _load_from(
        self, tier: Tier, job: LoadJob, guard: LoadGuard, indices: list[int], result: JobResult
    ) -> None:
        """One batched read from `tier`, each block checked and copied into its HBM slot."""
        shape, dtype = self._layout.block_shape, self._layout.np_dtype
        nbytes = 0

        def consume(j: int, buf: Buffer | None) -> None:
            nonlocal nbytes
            i = indices[j]
            if buf is None:
                return
            try:
                block = decode_block(buf, shape, dtype, key=job.items[i][0])
            except CorruptBlockError as exc:
                logger.warning("corrupt %s block %s: %s", tier, job.items[i][0].hex(), exc)
                with guard.lock:
                    guard.statuses[i] = LoadStatus.CORRUPT
                return
            with guard.lock:  # see LoadGuard: never write a slot after abandonment
                if guard.abandoned:
                    return
                self._kv_pool[job.items[i][1]] = block
                guard.statuses[i] = LoadStatus.OK
            nbytes += len(memoryview(buf))

        start = time.perf_counter()
        try:
            self._tiers[tier].get_many([job.items[i][0] for i in indices], consume)
        except TierError as exc:
            result.fail(tier, TierOp.LOAD, exc)
            with guard.lock:
                for i in indices:
                    if guard.statuses[i] is not LoadStatus.OK:
                        guard.statuses[i] = LoadStatus.IO_ERROR
        result.seconds[tier] = time.perf_counter() - start
        result.read_bytes[tier] = nbytes
