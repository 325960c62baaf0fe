"""A flash tier shared by the replicas of one host (`--flash-pool shared`).

LMDB lets many processes open one environment: readers run in parallel on MVCC
snapshots (a block deleted after a read transaction began stays readable in it),
writers are serialised by its lock. So replicas on one host that point at one flash
directory share its blocks. What LMDB does not give is one set of books: who decides
what to delete when the flash is full. The design (docs/architecture.md, "Shared flash"):

* **One writer.** The shared DDR pool's demoter (`cache.pool`) is the only replica that
  stores blocks in the shared flash or evicts them from it; the others only read (and
  delete a block their load found corrupt).
* **Logged changes.** `SharedFlashTier` wraps the `LmdbTier` of every replica: each
  store is logged on the pool's Redis log after its LMDB commit, each deletion before
  it is done (`SharedPool.log_flash`), tagged with the environment's id. Followers on the
  same environment apply them to their flash index, so a block demoted by one replica
  is a flash hit for every replica of that host about one poll later.
* **Environment id** (`environment_id`): the kernel's boot id (one per host, shared by its
  containers) and a random id created once in the flash directory. Replicas whose ids
  differ (another host, another directory) ignore each other's records: a block
  demoted on another host is not a hit here (it is recomputed).

A failure to log is counted and logged, never fatal: a store others did not hear of is a
miss for them until their next re-read, a deletion they did not hear of is a load that
finds the block missing (the request recomputes it and the entry is dropped).

Threading: one thread at a time, like every tier (the flash transfer lane); `client` is
that lane's own Redis connection.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
import redis.exceptions

from cache.block_hash import BlockHash
from cache.pool import SharedFlash, SharedPool
from cache.tiers.base import Buffer, StorageTier
from cache.tiers.lmdb_tier import LmdbTier

logger = logging.getLogger(__name__)

ENV_ID_FILE = "env_id"
"""File in the flash directory holding its random id (created once, atomically)."""

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_LOG_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


def _host_id() -> str:
    """One id per running kernel: every process and container of a host shares it."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return socket.gethostname()


def environment_id(path: Path) -> str:
    """The id of the flash environment at `path` as this host sees it.

    `<path>/env_id` is created on first use (written to a temporary file, then linked into
    place, so processes racing to create it all read the winner's)."""
    path.mkdir(parents=True, exist_ok=True)
    target = path / ENV_ID_FILE
    if not target.exists():
        tmp = path / f".{ENV_ID_FILE}.{os.getpid()}.{uuid.uuid4().hex}"
        tmp.write_text(uuid.uuid4().hex)
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass  # another replica won
        finally:
            tmp.unlink()
    return f"{_host_id()}/{target.read_text().strip()}"


class SharedFlashTier(StorageTier):
    """`inner` (an `LmdbTier` on the shared directory) whose stores and deletions are
    logged on `pool`'s log. Owns `inner` and `client` (closes them)."""

    name = "flash"

    def __init__(self, inner: LmdbTier, pool: SharedPool, client: Any) -> None:
        self.inner = inner
        self.pool = pool
        self.env_id = environment_id(inner.path)
        self._client = client
        self.num_log_errors = 0

    @staticmethod
    def share(
        inner: LmdbTier, pool: SharedPool, client: Any, map_size: int, block_size: int
    ) -> SharedFlashTier:
        """Wrap `inner` (opened with `map_size`) and make `pool`'s follower mirror its
        environment's blocks of `block_size` stored bytes (call before the pool starts).
        The follower scans through its own handle on the environment, closed with it."""
        tier = SharedFlashTier(inner, pool, client)
        reader = LmdbTier(inner.path, map_size, inner.namespace)
        size = block_size

        def scan() -> list[BlockHash]:
            # Keys only, repairing nothing (another replica may be writing): the repair
            # of `scan_keys_of_size` is for a single process's cold start.
            return reader.scan_recorded_keys(size)

        pool.share_flash(SharedFlash(tier.env_id, scan, reader.close))
        return tier

    def _log(self, added: bool, blocks: Sequence[tuple[BlockHash, int]]) -> None:
        try:
            self.pool.log_flash(self._client, added, blocks)
        except _LOG_ERRORS as exc:
            self.num_log_errors += 1
            logger.warning(
                "shared flash: could not log %d %s (%s); other replicas learn of them at "
                "their next re-read",
                len(blocks),
                "stores" if added else "deletions",
                exc,
            )

    def put(self, key: BlockHash, value: bytes) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: Sequence[tuple[BlockHash, bytes]]) -> None:
        self.inner.put_many(items)  # committed before anyone hears of it
        self._log(True, [(k, len(v)) for k, v in items])

    def remove(self, key: BlockHash) -> None:
        self.remove_many([key])

    def remove_many(self, keys: Sequence[BlockHash]) -> None:
        self._log(False, [(k, 0) for k in keys])  # heard of before it is gone
        self.inner.remove_many(keys)

    def contains(self, key: BlockHash) -> bool:
        return self.inner.contains(key)

    def get(self, key: BlockHash) -> bytes | None:
        return self.inner.get(key)

    def contains_many(self, keys: Sequence[BlockHash]) -> list[bool]:
        return self.inner.contains_many(keys)

    def get_many(
        self, keys: Sequence[BlockHash], consume: Callable[[int, Buffer | None], None]
    ) -> None:
        self.inner.get_many(keys, consume)

    def get_all(
        self, keys: Sequence[BlockHash], consume: Callable[[list[Buffer | None]], None]
    ) -> None:
        self.inner.get_all(keys, consume)

    def get_pieces(
        self,
        keys: Sequence[BlockHash],
        piece: int,
        consume: Callable[[int, list[Buffer | None]], None],
    ) -> None:
        self.inner.get_pieces(keys, piece, consume)

    def scan(self) -> Iterator[tuple[BlockHash, int]]:
        return self.inner.scan()

    def scan_keys_of_size(
        self, size: int, other_sizes: list[BlockHash] | None = None
    ) -> list[BlockHash]:
        return self.inner.scan_keys_of_size(size, other_sizes)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            try:
                self._client.close()
            except _LOG_ERRORS:
                pass
