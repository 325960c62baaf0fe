"""The transfer threads: every Redis and LMDB operation of the cache manager runs here,
and the encoding of spilled blocks (headers, checksums: see `StoreJob`).

The engine thread submits jobs and later polls their results; it never waits on I/O.
Each lower tier has its own thread running that tier's jobs in submission order (FIFO),
which is what keeps the manager's optimistic index right: a load submitted after a
spill of the same block sees the spilled bytes, a demotion runs after the spill it
demotes. One thread per tier means a stalled Redis never holds up flash loads (see
`TransferWorker` for the demotion, the one job that crosses tiers).

A job never raises into the engine: store failures (`TierError`) and bad blocks are
reported in the result, and the manager repairs its index and recomputes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from operator import itemgetter
from typing import cast

import numpy as np

from cache.block_format import BlockDecoder, encode_blocks, encoded_size
from cache.block_hash import BlockHash
from cache.layout import KVLayout
from cache.stats import Tier, TierOp
from cache.tiers.base import Buffer, StorageTier, TierError
from cache.transfer_jobs import (
    DemoteJob,
    Job,
    JobResult,
    LoadGuard,
    LoadJob,
    LoadStatus,
    RemoveJob,
    StoreJob,
)

logger = logging.getLogger(__name__)


COPY_CHUNK_BLOCKS = 64
"""At most this many blocks a load copies into HBM per `LoadGuard` lock: bounds how long
an abandoning engine thread can wait for the lock (~0.3 ms of 16 KiB blocks)."""

READ_PIECE_BYTES = 256 << 10
"""Stored bytes per piece of a load's read (`StorageTier.get_pieces`): Redis serialises
the next piece while the lane checks and copies this one. 16 blocks of 16 KiB; pieces
of 8 and 16 such blocks were equally fast, 32 and 64 slower (`cache.bench_tiers`)."""


def read_piece_blocks(block_bytes: int) -> int:
    """Blocks per piece of a load's read, for stored blocks of `block_bytes`."""
    return max(1, min(COPY_CHUNK_BLOCKS, READ_PIECE_BYTES // max(1, block_bytes)))


PREFETCH_TASK_BLOCKS = 16
"""Blocks per lane task of a non-urgent load (see `TransferWorker._submit_load`). With
blocks of 16 KiB stored (tiny-llama) such a task is one DDR read piece, so a prefetch
reads it with one MGET, not pipelined; larger blocks make several pieces per task."""

HANDOFF_POLL_S = 0.05
"""How often flash's half of a demotion re-checks whether DDR is down while it waits."""


class _Abandoned(Exception):
    """Raised out of a load's `consume` to stop reading pieces of an abandoned load."""


@dataclass(slots=True)
class _Task:
    run: Callable[[], None] | None  # None stops the lane
    keys: frozenset[BlockHash] = frozenset()
    urgent: bool = False


class _Lane:
    """One tier's transfer thread, running that tier's tasks FIFO, except that an urgent
    load (a request waits for it) passes the queued tasks at the tail that touch none of
    its blocks and are not urgent themselves: spills, removals, prefetches. Order per
    block is kept, so a load still sees the spill of its block queued before it."""

    def __init__(self, tier: Tier) -> None:
        self._tasks: deque[_Task] = deque()
        self._ready = threading.Condition()
        self.thread = threading.Thread(
            target=self._run, name=f"tierkv-transfer-{tier}", daemon=True
        )
        self.thread.start()

    def put(
        self,
        run: Callable[[], None] | None,
        keys: Collection[BlockHash] = frozenset(),
        urgent: bool = False,
    ) -> None:
        """Queue `run`, which touches the blocks `keys`. An urgent task's keys are only
        compared with the queued tasks it passes now (no later task passes it), so they
        are hashed into a set only if tasks are queued; keys are hashed before the lane's
        lock is taken (the queue is peeked without it: a stale answer costs speed only,
        `isdisjoint` takes any collection)."""
        if not urgent or (self._tasks and not isinstance(keys, frozenset)):
            keys = frozenset(keys)  # kept by a non-urgent task: later urgent ones compare
        with self._ready:
            i = len(self._tasks)
            if urgent:
                while i > 0 and _passable(self._tasks[i - 1], keys):
                    i -= 1
                self._tasks.insert(i, _Task(run, frozenset(), urgent))
            else:
                self._tasks.insert(i, _Task(run, frozenset(keys), urgent))  # a set already: no copy
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: bool(self._tasks))
                task = self._tasks.popleft()
            if task.run is None:
                return
            task.run()  # never raises: see TransferWorker._task


def _passable(task: _Task, keys: Collection[BlockHash]) -> bool:
    return task.run is not None and not task.urgent and task.keys.isdisjoint(keys)


class _Parts:
    """The parts of one job run on several lanes; the last part to finish posts it."""

    def __init__(self, job: Job, num_parts: int, post: Callable[[JobResult], None]) -> None:
        self._lock = threading.Lock()
        self._left = num_parts
        self._post = post
        self.result = JobResult(job)

    def add(self, part: JobResult) -> None:
        with self._lock:
            result = self.result
            for tier, n in part.read_bytes.items():  # a job's parts may share a tier
                result.read_bytes[tier] = result.read_bytes.get(tier, 0) + n
            for tier, n in part.write_bytes.items():
                result.write_bytes[tier] = result.write_bytes.get(tier, 0) + n
            for tier, seconds in part.seconds.items():
                result.seconds[tier] = result.seconds.get(tier, 0.0) + seconds
            result.failures.extend(part.failures)
            if part.error:
                result.error = f"{result.error}; {part.error}" if result.error else part.error
            if part.statuses:
                result.statuses = part.statuses
            self._left -= 1
            done = self._left == 0
        if done:
            self._post(result)


class _Handoff:
    """DDR's half of a demotion hands the blocks it read to flash's half."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.payloads: list[tuple[BlockHash, bytes]] = []
        self.statuses: list[LoadStatus] = []

    def give(self, payloads: list[tuple[BlockHash, bytes]], statuses: list[LoadStatus]) -> None:
        with self._lock:
            self.payloads, self.statuses = payloads, statuses
            self._ready.set()

    def take(self, give_up: Callable[[], bool]) -> bool:
        """Wait for the blocks; False (the blocks are given up) once `give_up()` is true."""
        while not self._ready.wait(HANDOFF_POLL_S):
            if give_up():
                break
        with self._lock:
            return self._ready.is_set()


TransferCharge = Callable[[Tier, int, float, bool], object]
"""Charges one finished transfer: (tier, stored bytes, start time, is a write)."""


class TransferWorker:
    """One daemon thread per lower tier ("lane"), each running its tier's jobs FIFO.

    A store, remove or load of one tier runs on that tier's lane, so a load submitted
    after a spill of the same block to the same tier sees the spilled bytes, and a stuck
    Redis call holds up DDR jobs only: flash loads keep flowing. A load that spans
    tiers runs one part per lane and is posted when the last part finishes. A DDR ->
    flash demotion runs in two halves queued at once: DDR's lane reads (then deletes)
    the blocks and hands them to flash's lane, whose half waits for them at its place
    in the flash FIFO, so a flash load submitted after the demotion finds them. It waits
    as long as DDR works, however slowly, but gives the blocks up (reports them failed)
    as soon as `is_down(Tier.DDR)` says DDR is down (the supervisor's verdict on a
    stalled or dead Redis), so a stall holds up the flash lane for about one probe.
    """

    def __init__(
        self,
        tiers: dict[Tier, StorageTier],
        layout: KVLayout,
        kv_pool: np.ndarray | BlockDecoder,
        notify: Callable[[], None] = lambda: None,
        is_down: Callable[[Tier], bool] = lambda tier: False,
        charge: TransferCharge | None = None,
    ) -> None:
        """`charge(tier, stored_bytes, started, write)` is called on the lane after every
        successful read from or write to a tier, with `time.perf_counter()` at the start;
        it may sleep (the server paces lanes to the modelled link, see npu_sim.links).
        `kv_pool`: the HBM pool reloads land in, or a decoder into it (the manager passes
        `HbmBlockPool.block_decoder()`, which counts the writes)."""
        self._charge = charge
        self._tiers = tiers
        self._layout = layout
        self._notify = notify
        self._is_down = is_down
        self._lanes = {tier: _Lane(tier) for tier in tiers}
        self._decode = kv_pool if isinstance(kv_pool, BlockDecoder) else BlockDecoder(kv_pool)
        # DDR in small pieces, pipelined (see READ_PIECE_BYTES); flash reads the whole job
        # in one transaction either way, and a piece costs a lock and a decode call.
        self._pieces = {
            Tier.DDR: read_piece_blocks(encoded_size(layout.block_shape, layout.np_dtype)),
            Tier.FLASH: COPY_CHUNK_BLOCKS,
        }
        self._results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0

    def submit(self, job: Job) -> None:
        with self._idle:
            self._pending += 1
        if isinstance(job, LoadJob):
            self._submit_load(job)
        elif isinstance(job, DemoteJob):
            handoff = _Handoff()
            parts = _Parts(job, 2, self._post)
            keys = frozenset(job.keys)
            read = self._task(job, parts, lambda: self._demote_read(job, handoff))
            # Urgent: its flash half may already hold the flash lane waiting for it, so
            # later urgent DDR loads must not pass it (they could, without end).
            self._lanes[Tier.DDR].put(read, keys, urgent=True)
            write = self._task(job, parts, lambda: self._demote_write(job, handoff))
            self._lanes[Tier.FLASH].put(write, keys)
        else:
            run = self._store if isinstance(job, StoreJob) else self._remove
            parts = _Parts(job, 1, self._post)
            keys = frozenset(job.keys)
            self._lanes[job.tier].put(self._task(job, parts, lambda: run(job)), keys)  # type: ignore[arg-type]

    def poll(self) -> list[JobResult]:
        """Results of finished jobs, in completion order. Never blocks."""
        out: list[JobResult] = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def barrier(self, tier: Tier) -> threading.Event:
        """An event set once every job submitted to `tier`'s lane so far has run (urgent
        loads may pass it, never the other way round). Any thread may wait on it; it says
        nothing of the jobs' success."""
        done = threading.Event()
        self._lanes[tier].put(done.set)
        return done

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted job has finished. Returns False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        """Finish queued jobs, then stop the threads. Tiers are closed by their owner."""
        for lane in self._lanes.values():
            lane.put(None)
        for lane in self._lanes.values():
            lane.thread.join()

    # -- lanes ---------------------------------------------------------------------------

    def _submit_load(self, job: LoadJob) -> None:
        guard = job.guard if job.guard is not None else LoadGuard(len(job.items))

        def post(result: JobResult) -> None:
            with guard.lock:
                result.statuses = list(guard.statuses)
            self._post(result)

        # A load nobody waits for yet (a prefetch) runs in small tasks, so that an urgent
        # load queued behind it waits for one of them at most, not for the whole prefetch.
        step = len(job.items) if job.urgent else PREFETCH_TASK_BLOCKS
        chunks: list[tuple[Tier, list[int]]] = []
        for tier, indices in _split_by_tier(job.items).items():
            chunks += [(tier, indices[j : j + step]) for j in range(0, len(indices), step)]
        parts = _Parts(job, len(chunks), post)
        if not chunks:
            post(parts.result)
        for tier, indices in chunks:

            def part(tier: Tier = tier, indices: list[int] = indices) -> JobResult:
                result = JobResult(job)
                if not guard.abandoned:
                    self._load_from(tier, job, guard, indices, result)
                return result

            keys = list(map(itemgetter(0), _items_at(job.items, indices)))
            self._lanes[tier].put(self._task(job, parts, part), keys, job.urgent)

    def _task(self, job: Job, parts: _Parts, fn: Callable[[], JobResult]) -> Callable[[], None]:
        def run() -> None:
            try:
                part = fn()
            except Exception as exc:  # a bug must not kill the lane and hang the engine
                logger.exception("transfer job failed")
                part = JobResult(job, error=f"{type(exc).__name__}: {exc}")
            parts.add(part)

        return run

    def _post(self, result: JobResult) -> None:
        self._results.put(result)
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()
        self._notify()

    def _store(self, job: StoreJob) -> JobResult:
        """Encode the job's staging copy (off the engine thread), then write it."""
        result = JobResult(job)
        items = list(zip(job.keys, encode_blocks(job.blocks, job.keys), strict=True))
        start = time.perf_counter()  # the modelled link carries the encoded bytes
        try:
            self._tiers[job.tier].put_many(items)
        except TierError as exc:
            result.fail(job.tier, TierOp.STORE, exc)
            result.statuses = [LoadStatus.IO_ERROR] * len(items)
            return result
        result.statuses = [LoadStatus.OK] * len(items)
        result.write_bytes[job.tier] = sum(len(v) for _, v in items)
        self._charged(job.tier, result.write_bytes[job.tier], start, write=True)
        result.seconds[job.tier] = time.perf_counter() - start
        return result

    def _charged(self, tier: Tier, num_bytes: int, started: float, *, write: bool) -> None:
        if self._charge is not None and num_bytes:
            self._charge(tier, num_bytes, started, write)

    def _demote_read(self, job: DemoteJob, handoff: _Handoff) -> JobResult:
        """DDR's half: read the blocks, hand them over, delete them (unless kept)."""
        result = JobResult(job)
        statuses = [LoadStatus.MISSING] * len(job.keys)
        payloads: list[tuple[BlockHash, bytes]] = []
        start = time.perf_counter()

        def keep(i: int, buf: Buffer | None) -> None:
            if buf is not None:
                payloads.append((job.keys[i], bytes(buf)))
                statuses[i] = LoadStatus.OK

        try:
            self._tiers[Tier.DDR].get_many(job.keys, keep)
        except TierError as exc:
            result.fail(Tier.DDR, TierOp.DEMOTE, exc)
            handoff.give([], [LoadStatus.IO_ERROR] * len(job.keys))
            return result
        result.read_bytes[Tier.DDR] = sum(len(v) for _, v in payloads)
        self._charged(Tier.DDR, result.read_bytes[Tier.DDR], start, write=False)
        handoff.give(payloads, statuses)
        if not job.keep_source:
            # Deleted even if flash's half fails: the manager already dropped them from
            # the DDR index, so a copy left in Redis would be untracked.
            try:
                self._tiers[Tier.DDR].remove_many(job.keys)
            except TierError as exc:
                result.fail(Tier.DDR, TierOp.DEMOTE, exc)
        return result

    def _demote_write(self, job: DemoteJob, handoff: _Handoff) -> JobResult:
        """Flash's half: wait (bounded) for DDR's half, then write what it read."""
        result = JobResult(job)
        if not handoff.take(lambda: self._is_down(Tier.DDR)):
            result.fail(Tier.DDR, TierOp.DEMOTE, TierError("DDR went down during the demotion"))
            result.statuses = [LoadStatus.IO_ERROR] * len(job.keys)
            return result
        result.statuses = handoff.statuses
        if not handoff.payloads:
            return result
        start = time.perf_counter()
        try:
            self._tiers[Tier.FLASH].put_many(handoff.payloads)
        except TierError as exc:
            result.fail(Tier.FLASH, TierOp.DEMOTE, exc)
            result.statuses = [LoadStatus.IO_ERROR] * len(job.keys)
            return result
        result.write_bytes[Tier.FLASH] = sum(len(v) for _, v in handoff.payloads)
        self._charged(Tier.FLASH, result.write_bytes[Tier.FLASH], start, write=True)
        return result

    def _remove(self, job: RemoveJob) -> JobResult:
        result = JobResult(job)
        try:
            self._tiers[job.tier].remove_many(job.keys)
        except TierError as exc:
            result.fail(job.tier, TierOp.REMOVE, exc)
        return result

    def _load_from(
        self, tier: Tier, job: LoadJob, guard: LoadGuard, indices: list[int], result: JobResult
    ) -> None:
        """One batched read from `tier`, checked and copied per piece, not per block.

        The tier hands the blocks over in pieces (`get_pieces`: zero-copy views of one LMDB
        read transaction, `COPY_CHUNK_BLOCKS` a piece; pipelined MGETs of
        `READ_PIECE_BYTES`, so Redis reads the next piece while this one is checked), and
        one `decode_blocks` call (the lane's `BlockDecoder`) per piece under the
        `LoadGuard` lock checks their headers, copies their payloads straight into their
        HBM slots and checksums them there. If the store fails part way, the pieces
        already copied count; the rest are reported as I/O errors (recomputed). Once the
        load is abandoned, no further piece is read (nor copied)."""
        part = _items_at(job.items, indices)
        keys = list(map(itemgetter(0), part))
        slots = list(map(itemgetter(1), part))
        valid: list[int] = []  # in their slots, not yet arrived on the modelled link
        nbytes = 0

        def consume(first: int, bufs: list[Buffer | None]) -> None:
            nonlocal nbytes
            end = first + len(bufs)
            with guard.lock:  # see LoadGuard: never write a slot after abandonment
                if guard.abandoned:
                    raise _Abandoned  # read no more pieces either
                ok = self._decode(bufs, keys[first:end], slots[first:end])
                if all(ok):  # the common case, per piece: no per-block bookkeeping
                    valid.extend(range(first, end))
                    nbytes += sum(map(len, cast(list[Buffer], bufs)))
                    return
                for j, (good, buf) in enumerate(zip(ok, bufs, strict=True), first):
                    if good:
                        valid.append(j)
                        nbytes += len(buf or b"")
                    elif buf is not None:
                        logger.warning("corrupt %s block %s", tier, keys[j].hex())
                        guard.statuses[indices[j]] = LoadStatus.CORRUPT

        start = time.perf_counter()
        try:
            self._tiers[tier].get_pieces(keys, self._pieces[tier], consume)
        except _Abandoned:
            pass  # its statuses are the abandoning thread's now
        except TierError as exc:
            result.fail(tier, TierOp.LOAD, exc)
            landed = {indices[j] for j in valid}
            with guard.lock:
                for i in indices:
                    if guard.statuses[i] is LoadStatus.MISSING and i not in landed:
                        guard.statuses[i] = LoadStatus.IO_ERROR
        # The blocks arrive when the modelled link has carried them: a load abandoned at
        # its deadline before then recomputes them, as it would on the modelled device.
        self._charged(tier, nbytes, start, write=False)
        with guard.lock:
            if not guard.abandoned:
                arrived = indices if len(valid) == len(indices) else [indices[j] for j in valid]
                _mark_ok(guard.statuses, arrived)
        result.seconds[tier] = time.perf_counter() - start
        result.read_bytes[tier] = nbytes


def _split_by_tier(items: list[tuple[BlockHash, int, Tier]]) -> dict[Tier, list[int]]:
    """The indices of `items` by source tier, DDR first (a load from one tier, the
    common case, takes no per-item Python)."""
    tiers = set(map(itemgetter(2), items))
    if len(tiers) == 1:
        return {tiers.pop(): list(range(len(items)))}
    return {
        tier: [i for i, item in enumerate(items) if item[2] is tier]
        for tier in (Tier.DDR, Tier.FLASH)
        if tier in tiers
    }


def _items_at(
    items: list[tuple[BlockHash, int, Tier]], indices: list[int]
) -> list[tuple[BlockHash, int, Tier]]:
    """`items` at `indices` (ascending; all of them: `items` itself, no copy)."""
    return items if len(indices) == len(items) else [items[i] for i in indices]


def _mark_ok(statuses: list[LoadStatus], arrived: list[int]) -> None:
    """Set `statuses[i]` OK for each `i` in `arrived` (ascending): one slice assignment
    when they are a run, as a whole load from one tier is."""
    if arrived and arrived[-1] - arrived[0] == len(arrived) - 1:
        statuses[arrived[0] : arrived[-1] + 1] = [LoadStatus.OK] * len(arrived)
        return
    for i in arrived:
        statuses[i] = LoadStatus.OK
