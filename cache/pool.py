"""A DDR pool shared live by every replica on one Redis or Redis Cluster.

Design (docs/architecture.md, "Shared DDR pool"):

* **Books in Redis, index mirrored.** The pool's index lives in Redis (`cache.pool_scripts`:
  an LRU zset, sizes, a byte counter, a write log). Every replica keeps a local copy of
  it (its DDR `TierIndex`), so `CacheManager.match` on the engine thread never waits on
  Redis. A follower thread per replica reads the log (XREAD BLOCK) and queues the
  changes; the engine thread applies them on its next `poll()`. A block any replica
  writes is a hit everywhere about one poll interval later (0.1 s by default).
* **Capacity enforced once.** A write reserves its bytes atomically against the pool's
  counter (Lua) before the value is SET, and becomes visible (committed to the index and
  the log) after, so the values stored never exceed the counter and the counter never
  exceeds `capacity_bytes`, however many replicas write. A full pool refuses the write.
* **One demoter.** The replica holding a short Redis lease (`SET NX PX`, renewed by its
  follower thread) keeps the pool under a high watermark: it claims least recently used
  blocks (Lua: out of the index, announced as removed, into an `evicting` set) and its
  engine demotes them to its flash (GET, LMDB put, DEL, then forget). No other replica
  ever evicts for capacity.
* **Leases.** A replica loading blocks leases them first (and touches them: the pool's
  LRU is every replica's use); the demoter never claims a leased block. A block claimed
  before a load's lease is a miss for that load (the request recomputes), never wrong
  tokens.
* **A shared flash tier** (`share_flash`, `--flash-pool shared`): replicas on one host
  open one LMDB environment. The demoter is its one writer (demoted blocks in, flash
  LRU victims out); its flash lane logs every store and deletion on the pool's log
  (`log_flash`), tagged with the environment's id, and followers on the same environment
  mirror them into their flash index (others ignore them). A follower that becomes the
  demoter first re-reads the flash's keys (`ChangeKind.LEAD`), so its books start from
  what the environment holds; a resync re-reads them too (`FLASH_RESET`).

`SharedPool` holds the books' operations (the Lua scripts on the pool's keys); the
follower thread, which reads the log, renews the demoter lease and claims victims, is
`cache.pool_follower.PoolFollower`, started and stopped here.

Threading: `SharedPool` is shared by the DDR transfer lane (`reserve`, `commit`,
`forget`, `lease`, through its own client), the follower thread and the engine thread
(`drain`). The queue between them is thread-safe; nothing else is shared.
Failures: a Redis error in the follower (or a shared flash it cannot scan) is logged,
retried with backoff, and followed by a full re-read of the index (so a missed change
heals), at start-up too (`start` never raises for them); errors in the lane's calls
raise `TierError` through the tier (`cache.tiers.pooled_redis_tier.PooledRedisTier`).
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cache import pool_scripts
from cache.block_hash import BlockHash
from cache.pool_changes import ChangeKind, PoolChange
from cache.pool_follower import REDIS_ERRORS, PoolFollower
from cache.pool_scripts import PoolKeys

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """How one replica takes part in a shared pool. Every replica of a pool must use the
    same `capacity_bytes` (each enforces the capacity it was given)."""

    capacity_bytes: int
    replica_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    high_watermark: float = 0.9  # the demoter starts claiming above this share ...
    low_watermark: float = 0.8  # ... and claims down to this one
    lease_s: float = 10.0  # a loading replica's hold on its blocks
    reservation_s: float = 30.0  # a write not committed by then is given back
    eviction_s: float = 30.0  # a claim not forgotten by then is re-claimed
    demoter_lease_s: float = 3.0
    poll_s: float = 0.1  # the follower's XREAD block time
    log_maxlen: int = 100_000
    max_victims: int = 256  # per claim


@dataclass(frozen=True, slots=True)
class SharedFlash:
    """The flash environment this replica shares with others on its host."""

    env_id: str  # see cache.tiers.shared_flash.environment_id
    # Its blocks, oldest write first (follower thread; a follower's re-read and a new
    # writer's books alike): reads only the meta records and never writes, since another
    # replica may be writing meanwhile (a repair would take its commit in progress for a
    # crash, read every value and rewrite every record in key order).
    scan: Callable[[], list[BlockHash]]
    close: Callable[[], None] = lambda: None  # after the follower stopped


@dataclass(frozen=True, slots=True)
class PoolUsage:
    used_bytes: int  # counted against the capacity (visible + in flight + evicting)
    evicting_bytes: int


class SharedPool:
    """The Redis-side books of one namespace's shared pool, and this replica's follower.

    `client` is the follower's own connection (the transfer lane passes its own to the
    write-side calls). Call `start()` once, `stop()` at the end.
    """

    def __init__(self, client: Any, namespace: str, config: PoolConfig) -> None:
        self.config = config
        self.keys = PoolKeys.of(namespace)
        self._client = client
        self._scripts = {
            name: client.register_script(getattr(pool_scripts, name))
            for name in (
                "RESERVE",
                "COMMIT",
                "RELEASE",
                "FORGET",
                "LEASE",
                "CLAIM",
                "SNAPSHOT",
                "ELECT",
                "FLASHLOG",
            )
        }
        self._tokens: dict[BlockHash, str] = {}  # reservations held (the DDR lane's)
        self._num_reserves = itertools.count()
        self.flash: SharedFlash | None = None
        self._follower = PoolFollower(self, client)

    @property
    def num_resyncs(self) -> int:
        """Full re-reads of the index so far (start-up's included)."""
        return self._follower.num_resyncs

    # -- write side (the DDR transfer lane) ----------------------------------------------

    def reserve(self, client: Any, hashes: Sequence[BlockHash], size: int) -> list[int]:
        """Reserve `size` bytes for each block: 0 reserved (SET it, then `commit`), 1
        already pooled (touched), 2 refused (pool full), 3 being written or demoted.
        Each reservation gets this call's token, which `commit` and `release` present:
        a reservation that expired and was taken by another writer is not ours."""
        k = self.keys
        token = f"{self.config.replica_id}.{next(self._num_reserves)}"
        args = [self.config.capacity_bytes, int(self.config.reservation_s * 1000), size, token]
        statuses = [
            int(r)
            for r in self._run(
                "RESERVE", [k.lru, k.size, k.used, k.reserved, k.rtoken], [*args, *hashes], client
            )
        ]
        for block_hash, status in zip(hashes, statuses, strict=True):
            if status == 0:
                self._tokens[block_hash] = token
        return statuses

    def commit(self, client: Any, hashes: Sequence[BlockHash]) -> list[int]:
        """Make blocks this pool reserved, and whose values are stored, visible: 1 done;
        0 the reservation expired (the caller deletes its value); 2 it expired and the
        block is another writer's now (reserved, pooled or being demoted: the value, the
        same bytes, is theirs to keep)."""
        return [int(r) for r in self._run(*self.call("COMMIT", hashes), client)]

    def release(self, client: Any, hashes: Sequence[BlockHash]) -> list[bool]:
        """Give back reservations whose SET failed; True where this pool still held it
        (the caller may delete that value), False where it was not ours any more."""
        k = self.keys
        args: list[Any] = []
        for block_hash in hashes:
            args += [block_hash, self._tokens.pop(block_hash, "")]
        reply = self._run("RELEASE", [k.size, k.used, k.reserved, k.rtoken], args, client)
        return [bool(int(r)) for r in reply]

    def forget(self, client: Any, hashes: Sequence[BlockHash]) -> int:
        """Drop deleted blocks from the books (call after their values are DEL'd).
        Returns how many it dropped."""
        return int(self._run(*self.call("FORGET", hashes), client))

    def lease(self, client: Any, hashes: Sequence[BlockHash]) -> list[bool]:
        """Touch and lease blocks about to be read; False: not in the pool's index."""
        return [bool(int(r)) for r in self._run(*self.call("LEASE", hashes), client)]

    def call(self, name: str, hashes: Sequence[BlockHash]) -> tuple[str, list[bytes], list[Any]]:
        """(script, keys, args) of COMMIT, FORGET or LEASE on `hashes` (COMMIT takes the
        blocks' reservation tokens: call it once per reservation)."""
        k, cfg = self.keys, self.config
        if name == "COMMIT":
            args: list[Any] = [cfg.log_maxlen]
            for block_hash in hashes:
                args += [block_hash, self._tokens.pop(block_hash, "")]
            return name, [k.lru, k.size, k.reserved, k.log, k.seq, k.rtoken], args
        if name == "FORGET":
            keys = [k.lru, k.size, k.used, k.evbytes, k.evicting, k.log, k.seq]
            return name, keys, [cfg.log_maxlen, *hashes]
        if name == "LEASE":
            return name, [k.lru, k.lease], [int(cfg.lease_s * 1000), *hashes]
        raise ValueError(f"no call for {name!r}")

    def queue(self, pipe: Any, name: str, hashes: Sequence[BlockHash]) -> None:
        """Queue `call(name, hashes)` on a plain (non-cluster) pipeline by EVALSHA, so it
        shares the pipeline's round trip (the script must be loaded: `load_scripts`)."""
        _, keys, args = self.call(name, hashes)
        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)

    def load_scripts(self, client: Any) -> None:
        """SCRIPT LOAD every script (after a NOSCRIPT from a queued call)."""
        for script in self._scripts.values():
            client.script_load(script.script)

    def share_flash(self, flash: SharedFlash) -> None:
        """Follow a shared flash environment's log records too (before `start`)."""
        self.flash = flash

    def log_flash(self, client: Any, added: bool, blocks: Sequence[tuple[BlockHash, int]]) -> None:
        """Log stores (`added`) or deletions in the shared flash (its writer's flash lane:
        after the LMDB commit of a store, before the deletion). Raises Redis errors."""
        if self.flash is None or not blocks:
            return
        cfg = self.config
        args: list[Any] = [cfg.log_maxlen, "fa" if added else "fr", self.flash.env_id]
        args.append(cfg.replica_id)
        for block_hash, size in blocks:
            args += [block_hash, size]
        self._run("FLASHLOG", [self.keys.log, self.keys.seq], args, client)

    def refused(self, hashes: Sequence[BlockHash]) -> None:
        """Writes of ours the pool did not take: the engine drops them from its index."""
        if hashes:
            self._follower.put(PoolChange(ChangeKind.REMOVE, tuple((h, 0) for h in hashes)))

    # -- read side -----------------------------------------------------------------------

    def snapshot(self, client: Any) -> tuple[bytes, int, list[tuple[BlockHash, int]]]:
        """(log id, log sequence number, every pooled block least recently used first)."""
        k = self.keys
        last_id, seq, flat = self._run("SNAPSHOT", [k.lru, k.size, k.log, k.seq], [], client)
        blocks = [(BlockHash(bytes(flat[i])), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        return bytes(last_id), int(seq), blocks

    def usage(self, client: Any | None = None) -> PoolUsage:
        used, evicting = (client or self._client).mget([self.keys.used, self.keys.evbytes])
        return PoolUsage(int(used or 0), int(evicting or 0))

    def contains_many(self, client: Any, hashes: Sequence[BlockHash]) -> list[bool]:
        """Whether each block is in the pool's index now (one round trip; blocking)."""
        pipe = client.pipeline(transaction=False)
        for h in hashes:
            pipe.zscore(self.keys.lru, h)
        return [r is not None for r in pipe.execute()]

    def drain(self) -> list[PoolChange]:
        """Changes queued since the last call, in order (engine thread; never blocks)."""
        return self._follower.drain()

    def elect(self, client: Any) -> bool:
        """Take or renew the demoter lease (`demoter_lease_s`); True: this replica holds it."""
        cfg = self.config
        ttl = int(cfg.demoter_lease_s * 1000)
        return bool(int(self._run("ELECT", [self.keys.demoter], [cfg.replica_id, ttl], client)))

    def claim(self, client: Any, target: int) -> list[BlockHash]:
        """Claim least recently used, unleased blocks for demotion (out of the index,
        announced as removed, into the `evicting` set) until the live bytes are at most
        `target`, and re-claim those a dead demoter left; at most `max_victims`."""
        k, cfg = self.keys, self.config
        keys = [k.lru, k.size, k.used, k.evbytes, k.evicting, k.lease, k.log, k.seq]
        args = [target, int(cfg.eviction_s * 1000), cfg.log_maxlen, cfg.max_victims]
        return [BlockHash(bytes(v)) for v in self._run("CLAIM", keys, args, client)]

    # -- the follower --------------------------------------------------------------------

    def start(self, notify: Callable[[], None] = lambda: None) -> None:
        """Read the whole index now (queued as a RESET: blocking, call at start-up; if
        Redis does not answer or the shared flash cannot be scanned, the follower
        retries), then follow the log on a daemon thread; `notify()` after changes are
        queued (it wakes the engine so it applies them even when idle)."""
        self._follower.start(notify)

    def stop(self) -> None:
        self._follower.stop()
        if self.flash is not None:
            self.flash.close()
        try:
            self._client.close()
        except REDIS_ERRORS:
            pass

    def _run(self, name: str, keys: list[bytes], args: list[Any], client: Any) -> Any:
        return self._scripts[name](keys=keys, args=args, client=client)

    def clear(self) -> None:
        """Delete the books (tests; block values are the tier's `clear`)."""
        for key in self.keys.all():
            self._client.delete(key)
