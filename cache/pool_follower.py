"""The follower of a shared DDR pool: one replica's thread that reads the pool's books.

The seam in `cache.pool`: `SharedPool` holds the books' operations (Lua scripts on the
pool's keys, called by the DDR lane, the follower and the engine); `PoolFollower` is the
thread that keeps this replica's copy of the index up to date and does the demoter's
part, and it alone writes its state (log position, the demoter and flash-writer flags,
the resync count). Each pass it reads the write log (XREAD BLOCK on its own connection)
and queues the changes, renews or takes the demoter lease (`SharedPool.elect`) and, as
the demoter, claims blocks above the high watermark (`SharedPool.claim`). A gap in the
log, a Redis error or a shared flash it cannot scan makes it re-read the whole index
(`RESET`, and with a shared flash `FLASH_RESET`) after a backoff.

Threading: `start`, `stop` on the owner's thread; the follower thread writes the queue,
the engine thread drains it (`drain`), and the DDR lane may add to it (`put`, through
`SharedPool.refused`): the queue is thread-safe, nothing else is shared.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions

from cache.block_hash import BlockHash
from cache.pool_changes import ChangeKind, PoolChange
from cache.tiers.base import TierError

if TYPE_CHECKING:
    from cache.pool import SharedPool

logger = logging.getLogger(__name__)

REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


class PoolFollower:
    """Follows `pool`'s books on `client`, the follower's own connection."""

    def __init__(self, pool: SharedPool, client: Any) -> None:
        self._pool = pool
        self._client = client
        self._changes: queue.SimpleQueue[PoolChange] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_id = b"0-0"
        self._last_seq = 0
        self._notify: Callable[[], None] = lambda: None
        self.is_demoter = False
        self.num_resyncs = 0
        self._is_flash_writer = False  # LEAD queued, FOLLOW not yet

    def start(self, notify: Callable[[], None]) -> None:
        """As `SharedPool.start`."""
        self._notify = notify
        resynced = True
        try:
            self._resync()
        except (*REDIS_ERRORS, _FlashScanError) as exc:  # the follower retries (backoff)
            logger.warning("shared pool: cannot read the index yet (%s); retrying", exc)
            resynced = False
        self._thread = threading.Thread(
            target=self._follow, args=(resynced,), name="tierkv-pool", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits up to 10 s for its current pass)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def put(self, change: PoolChange) -> None:
        """Queue `change` for the engine and wake it (any thread)."""
        self._changes.put(change)
        self._notify()

    def drain(self) -> list[PoolChange]:
        """Changes queued since the last call, in order (engine thread; never blocks)."""
        out: list[PoolChange] = []
        while True:
            try:
                out.append(self._changes.get_nowait())
            except queue.Empty:
                return out

    def _resync(self) -> None:
        last_id, seq, blocks = self._pool.snapshot(self._client)
        self._last_id, self._last_seq = last_id, seq
        self.put(PoolChange(ChangeKind.RESET, tuple(blocks)))
        if self._pool.flash is not None:
            # After the log position: a store logged since then is applied again (an
            # add is idempotent), a deletion logged before it and not yet done at the
            # scan leaves an entry whose load misses (the request recomputes).
            self.put(PoolChange(ChangeKind.FLASH_RESET, self._scan_flash()))
        self.num_resyncs += 1

    def _scan_flash(self) -> tuple[tuple[BlockHash, int], ...]:
        flash = self._pool.flash
        assert flash is not None
        try:
            return tuple((h, 0) for h in flash.scan())
        except TierError as exc:  # the follower's caller backs off and re-reads
            raise _FlashScanError(str(exc)) from exc

    def _follow(self, resynced: bool) -> None:
        backoff = 0.0 if resynced else 0.05
        while not self._stop.is_set():
            try:
                if backoff:
                    self._resync()
                    backoff = 0.0
                self._read_log()
                self._demote_if_elected()
            except (*REDIS_ERRORS, _FlashScanError) as exc:
                backoff = min(2.0, backoff * 2 or 0.05)
                logger.warning("shared pool follower: %s; re-reading in %.2fs", exc, backoff)
                self._stop.wait(backoff)

    def _read_log(self) -> None:
        block_ms = max(1, int(self._pool.config.poll_s * 1000))
        reply = self._client.xread({self._pool.keys.log: self._last_id}, count=1000, block=block_ms)
        if not reply:
            return
        changes: list[PoolChange] = []
        for _stream, entries in reply:
            for entry_id, fields in entries:
                seq = int(fields[b"n"])
                # Entries after the snapshot's position number on from its sequence
                # number: a gap means the log was trimmed past us, a step back that the
                # books were lost (Redis restarted empty). Either way, re-read.
                if seq != self._last_seq + 1:
                    logger.warning(
                        "shared pool log at %d after %d: re-reading", seq, self._last_seq
                    )
                    self._resync()
                    return
                self._last_id, self._last_seq = bytes(entry_id), seq
                found = self._kind_of(fields)
                if found is None:
                    continue  # another flash environment's record, or our own
                kind = found
                block = (BlockHash(bytes(fields[b"h"])), int(fields[b"s"] or 0))
                if changes and changes[-1].kind is kind:
                    changes[-1] = PoolChange(kind, (*changes[-1].blocks, block))
                else:
                    changes.append(PoolChange(kind, (block,)))
        for change in changes:
            self.put(change)

    def _kind_of(self, fields: dict[bytes, bytes]) -> ChangeKind | None:
        op = fields[b"op"]
        if op == b"a":
            return ChangeKind.ADD
        if op == b"r":
            return ChangeKind.REMOVE
        flash = self._pool.flash
        if flash is None or fields.get(b"e", b"").decode() != flash.env_id:
            return None  # not our flash environment (another host's, or not shared)
        if fields.get(b"w", b"").decode() == self._pool.config.replica_id:
            return None  # ours: applied when we wrote it
        return ChangeKind.FLASH_ADD if op == b"fa" else ChangeKind.FLASH_REMOVE

    def _demote_if_elected(self) -> None:
        pool, cfg = self._pool, self._pool.config
        self.is_demoter = pool.elect(self._client)
        if pool.flash is not None and self.is_demoter != self._is_flash_writer:
            # Hand the flash's writing over before any claim: the engine applies changes
            # in order, so it holds fresh books before it demotes anything.
            if self.is_demoter:
                self.put(PoolChange(ChangeKind.LEAD, self._scan_flash()))
            else:
                self.put(PoolChange(ChangeKind.FOLLOW, ()))
            self._is_flash_writer = self.is_demoter
        if not self.is_demoter:
            return
        usage = pool.usage()
        live = usage.used_bytes - usage.evicting_bytes
        target = int(cfg.low_watermark * cfg.capacity_bytes)
        if live <= cfg.high_watermark * cfg.capacity_bytes:
            if not usage.evicting_bytes:
                return
            target = live  # claim nothing new; only re-claim what a dead demoter left
        victims = pool.claim(self._client, target)
        if victims:
            self.put(PoolChange(ChangeKind.DEMOTE, tuple((h, 0) for h in victims)))


class _FlashScanError(RuntimeError):
    """The shared flash could not be scanned (the follower backs off and re-reads)."""
