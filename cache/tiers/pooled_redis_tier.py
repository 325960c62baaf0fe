"""DDR tier on a pool shared with other replicas: :class:`RedisTier` plus the pool's books.

Split from :mod:`cache.tiers.redis_tier` (same values, same keys); the books are
:class:`cache.pool.SharedPool`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis

from cache.block_hash import BlockHash
from cache.pool import SharedPool
from cache.tiers.base import Buffer, StorageTier, TierError
from cache.tiers.redis_tier import RedisClient, RedisTier, wrap_redis_errors


class PooledRedisTier(RedisTier):
    """A :class:`RedisTier` whose keyspace is a pool shared with other replicas.

    Same values under the same keys; every write, read and delete also keeps the pool's
    books (:class:`cache.pool.SharedPool`): a write reserves its bytes first and is
    committed after its SET (or refused when the pool is full, reported to the pool so
    the engine drops it from its index; a reservation carries a token, so a writer that
    stalled past it never commits or releases another writer's later one), a read leases
    and touches its blocks, a delete DELs and then forgets. ``scan`` lists the pool's
    index, least recently used first.
    On a plain Redis the bookkeeping shares its round trip where order allows (LEASE and
    MGET, DELs and FORGET each in one pipeline); RESERVE must answer before any SET, and
    COMMIT runs only after every SET succeeded (a pipeline would run it even after a
    refused SET, publishing a block that does not exist). On a cluster the books live on
    one node and the values on others, so they are separate calls. Threading and failures
    as :class:`RedisTier` (the transfer lane's thread).
    """

    def __init__(self, client: RedisClient, namespace: str, pool: SharedPool) -> None:
        super().__init__(client, namespace)
        self.pool = pool
        self._is_plain = isinstance(client, redis.Redis)

    def _with_books(
        self,
        what: str,
        queue: Callable[[Any], None],
        book: str,
        hashes: Sequence[BlockHash],
        books_first: bool = False,
    ) -> list[Any]:
        """One plain-Redis pipeline: ``queue(pipe)``'s commands, then the `book` script on
        `hashes` (before them if `books_first`); returns every reply. Reloads the scripts
        once if the server lost them (NOSCRIPT)."""
        for attempt in (0, 1):
            with wrap_redis_errors(what):
                pipe = self._client.pipeline(transaction=False)
                if books_first:
                    self.pool.queue(pipe, book, hashes)
                queue(pipe)
                if not books_first:
                    self.pool.queue(pipe, book, hashes)
                try:
                    return list(pipe.execute())
                except redis.exceptions.NoScriptError:
                    if attempt:
                        raise
                    self.pool.load_scripts(self._client)
        raise AssertionError("unreachable")

    def put(self, key: BlockHash, value: bytes) -> None:
        self.put_many([(key, value)])

    def get(self, key: BlockHash) -> bytes | None:
        found: list[bytes | None] = [None]

        def keep(_: int, buf: Buffer | None) -> None:
            found[0] = None if buf is None else bytes(buf)

        self.get_many([key], keep)
        return found[0]

    def remove(self, key: BlockHash) -> None:
        self.remove_many([key])

    def put_many(self, items: Sequence[tuple[BlockHash, bytes]]) -> None:
        by_size: dict[int, list[tuple[BlockHash, bytes]]] = {}
        for key, value in items:
            by_size.setdefault(len(value), []).append((key, value))
        refused: list[BlockHash] = []
        for size, group in by_size.items():
            keys = [k for k, _ in group]
            with wrap_redis_errors("pool reserve"):
                statuses = self.pool.reserve(self._client, keys, size)
            todo = [item for item, status in zip(group, statuses, strict=True) if status == 0]
            refused += [k for k, status in zip(keys, statuses, strict=True) if status >= 2]
            if not todo:
                continue
            # SET, then COMMIT only after every SET succeeded: a pipeline runs all its
            # commands before it raises, so a refused SET would still be committed. After a
            # failed SET the reservations are given back (FORGET) before the error goes up.
            todo_keys = [k for k, _ in todo]
            try:
                super().put_many(todo)
            except TierError:
                with contextlib.suppress(TierError), wrap_redis_errors("pool release"):
                    ours = self.pool.release(self._client, todo_keys)
                    mine = [k for k, held in zip(todo_keys, ours, strict=True) if held]
                    super().remove_many(mine)
                raise
            with wrap_redis_errors("pool commit"):
                committed = self.pool.commit(self._client, todo_keys)
            # 0: our reservation expired, the value is ours to delete; 2: it expired and
            # another writer holds the block now (same bytes): leave its value alone.
            late = [k for k, status in zip(todo_keys, committed, strict=True) if status == 0]
            if late:
                super().remove_many(late)
            refused += [k for k, status in zip(todo_keys, committed, strict=True) if status != 1]
        self.pool.refused(refused)

    def get_many(
        self, keys: Sequence[BlockHash], consume: Callable[[int, Buffer | None], None]
    ) -> None:
        """Lease (and touch) the blocks, then MGET them. A block the pool's index lists
        but Redis lacks (an evicting Redis, a lost write) is forgotten pool-wide, so no
        replica keeps missing it."""
        if not keys:
            return
        if self._is_plain:
            full = [self._key(k) for k in keys]
            leased, values = self._with_books(
                "lease + MGET", lambda pipe: pipe.mget(full), "LEASE", keys, books_first=True
            )
            leased = [bool(int(r)) for r in leased]
        else:
            with wrap_redis_errors("pool lease"):
                leased = self.pool.lease(self._client, keys)
            values = self._mget([self._key(k) for k in keys])
        lost = [k for k, held, v in zip(keys, leased, values, strict=True) if held and v is None]
        if lost:
            with wrap_redis_errors("pool forget"):
                self.pool.forget(self._client, lost)
        for i, value in enumerate(values):  # outside the error wrapper: the caller's
            consume(i, value)

    def get_pieces(
        self,
        keys: Sequence[BlockHash],
        piece: int,
        consume: Callable[[int, list[Buffer | None]], None],
    ) -> None:
        """Lease (and touch) the blocks, then read them as ``RedisTier.get_pieces`` does
        (pipelined MGET pieces); a block the books list but Redis lacks is forgotten
        pool-wide once every piece was read, as in ``get_many``. On a plain Redis the
        lease takes a round trip of its own here (``get_many`` shares it with the MGET),
        which the pipelining more than pays for at two pieces or more; a cluster, or a
        job of one piece, takes ``get_many``'s path."""
        if piece < 1:
            raise ValueError(f"piece must be >= 1, got {piece}")
        one_connection = isinstance(self._client, redis.Redis) and self._client.connection
        if not self._is_plain or one_connection or len(keys) <= piece:
            StorageTier.get_pieces(self, keys, piece, consume)
            return
        with wrap_redis_errors("pool lease"):
            leased = self.pool.lease(self._client, keys)
        lost: list[BlockHash] = []

        def check(first: int, bufs: list[Buffer | None]) -> None:
            for j, buf in enumerate(bufs, first):
                if buf is None and leased[j]:
                    lost.append(keys[j])
            consume(first, bufs)

        super().get_pieces(keys, piece, check)
        if lost:
            with wrap_redis_errors("pool forget"):
                self.pool.forget(self._client, lost)

    def remove_many(self, keys: Sequence[BlockHash]) -> None:
        if not keys:
            return
        if self._is_plain:

            def dels(pipe: Any) -> None:
                for k in keys:
                    pipe.delete(self._key(k))

            self._with_books("pipelined DEL + forget", dels, "FORGET", keys)
            return
        super().remove_many(keys)
        with wrap_redis_errors("pool forget"):
            self.pool.forget(self._client, keys)

    def contains_many(self, keys: Sequence[BlockHash]) -> list[bool]:
        with wrap_redis_errors("pool contains"):
            return self.pool.contains_many(self._client, keys)

    def contains(self, key: BlockHash) -> bool:
        return self.contains_many([key])[0]

    def scan(self) -> Iterator[tuple[BlockHash, int]]:
        with wrap_redis_errors("pool snapshot"):
            _, _, blocks = self.pool.snapshot(self._client)
        yield from blocks

    def clear(self) -> int:
        num_deleted = super().clear()
        with wrap_redis_errors("pool clear"):
            for key in self.pool.keys.all():
                self._client.delete(key)
        return num_deleted
