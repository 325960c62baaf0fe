"""DDR tier: KV blocks as Redis strings under ``<namespace>:<16-byte hash>``.

Each batched call is one pipeline (``transaction=False``), so a batch costs one round
trip to a single server.  The same code runs against Redis Cluster: redis-py's cluster
pipeline groups the commands per node (one round trip per node touched), and
``scan_iter`` walks every primary.  See :func:`connect_redis` for the URL forms.

Threading and failures follow :mod:`cache.tiers.base`: one thread at a time per tier;
``redis.RedisError``, ``RedisClusterException`` and ``OSError`` become
:class:`TierError` (``OOM`` from a full ``noeviction`` server: :class:`TierFullError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
import redis.cluster
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from cache.block_hash import BlockHash
from cache.tiers.base import Buffer, StorageTier, TierError, TierFullError, check_namespace

RedisClient = redis.Redis | redis.cluster.RedisCluster
"""Either client flavour: both offer the commands and pipelines this tier uses."""

_SCAN_COUNT = 1000
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_TRUE = {"1", "true", "yes", "on"}


@contextmanager
def wrap_redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except redis.OutOfMemoryError as exc:  # noeviction server at maxmemory
        raise TierFullError(f"redis {what} refused, server full: {exc}") from exc
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        raise TierError(f"redis {what} failed: {exc}") from exc


def connect_redis(
    url: str, *, socket_timeout: float = 10.0, socket_connect_timeout: float = 5.0
) -> RedisClient:
    """Return a bytes-in/bytes-out client for ``url``.

    Accepted URLs: ``redis://host:port/db``, ``rediss://…`` (TLS), ``unix:///path.sock``
    (e.g. :attr:`EmbeddedRedis.url`), and for Redis Cluster ``redis+cluster://host:port``,
    ``rediss+cluster://…``, or any ``redis[s]://`` URL with a ``cluster=true`` query
    parameter; the cluster forms return a ``redis.cluster.RedisCluster`` seeded from
    that node.  ``socket_timeout`` bounds every command, so a hung server surfaces as
    :class:`TierError` rather than blocking the transfer thread forever.  A command
    is retried once after a connection error (a server-closed idle connection), not
    redis-py's default three times with up to seconds of backoff: a dead DDR must fail
    fast so the manager can fall back to recomputation.
    A plain client connects lazily (no I/O here); a cluster client asks the seed node
    for the slot map at once and raises ``redis.RedisError`` or
    ``redis.cluster.RedisClusterException`` if it cannot.  Raises ``ValueError`` for a
    cluster URL over a unix socket.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    is_cluster = scheme in _CLUSTER_SCHEMES
    rest = []
    for name, value in query:
        if name.lower() == "cluster":
            is_cluster = is_cluster or value.lower() in _TRUE
        else:
            rest.append((name, value))
    plain_url = url
    if is_cluster or len(rest) != len(query):
        # Rebuilt by hand: urlunsplit would turn "unix:///p" into "unix:/p".
        plain_url = f"{_CLUSTER_SCHEMES.get(scheme, scheme)}://{parts.netloc}{parts.path}"
        if rest:
            plain_url += "?" + urlencode(rest)
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.005), retries=1),
    }
    if is_cluster:
        if scheme == "unix":
            raise ValueError(f"a Redis Cluster needs a TCP URL, not {url!r}")
        return redis.cluster.RedisCluster.from_url(plain_url, **options)
    return redis.Redis.from_url(plain_url, **options)


def _chunks(iterable: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    while chunk := list(islice(iterable, size)):
        yield chunk


class RedisTier(StorageTier):
    """A :class:`StorageTier` over one Redis (or Redis Cluster) keyspace prefix.

    ``client`` must return bytes (``decode_responses=False``, as from
    :func:`connect_redis`).  The tier takes ownership: :meth:`close` closes it.
    ``namespace`` must match ``[A-Za-z0-9_.-]{1,100}``; tiers with different namespaces
    never see each other's keys.
    """

    name = "ddr"

    def __init__(self, client: RedisClient, namespace: str) -> None:
        self._owned_client: RedisClient | None = client
        self.namespace = check_namespace(namespace)
        self._prefix = namespace.encode() + b":"

    @property
    def _client(self) -> RedisClient:
        # A closed RedisCluster cannot be reused (it drops its slot map), so a closed
        # tier refuses all calls, for both client flavours alike.
        if self._owned_client is None:
            raise TierError(f"Redis tier {self.namespace!r} is closed")
        return self._owned_client

    def _key(self, key: BlockHash) -> bytes:
        return self._prefix + key

    def contains(self, key: BlockHash) -> bool:
        with wrap_redis_errors("EXISTS"):
            return bool(self._client.exists(self._key(key)))

    def get(self, key: BlockHash) -> bytes | None:
        with wrap_redis_errors("GET"):
            return self._client.get(self._key(key))  # type: ignore[return-value]

    def put(self, key: BlockHash, value: bytes) -> None:
        with wrap_redis_errors("SET"):
            self._client.set(self._key(key), value)

    def remove(self, key: BlockHash) -> None:
        with wrap_redis_errors("DEL"):
            self._client.delete(self._key(key))

    def _pipelined(self, what: str, command: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``command *a`` for every ``a`` in ``args`` in one pipeline; return replies."""
        if not args:
            return []
        with wrap_redis_errors(what):
            pipe = self._client.pipeline(transaction=False)
            for a in args:
                pipe.execute_command(command, *a)
            return pipe.execute()

    def contains_many(self, keys: Sequence[BlockHash]) -> list[bool]:
        replies = self._pipelined("pipelined EXISTS", "EXISTS", [(self._key(k),) for k in keys])
        return [bool(r) for r in replies]

    def get_many(
        self, keys: Sequence[BlockHash], consume: Callable[[int, Buffer | None], None]
    ) -> None:
        replies = self._mget([self._key(k) for k in keys])
        # consume runs outside the error wrapper: its exceptions are the caller's own.
        for i, value in enumerate(replies):
            consume(i, value)

    def _mget(self, keys: list[bytes]) -> list[Any]:
        """Values of ``keys`` (None where absent) by MGET: at 16 KiB values one MGET was
        ~1.3x the throughput of a pipeline of GETs (``tierkv-load bench tiers``). A
        cluster's MGET may not span hash slots; redis-py's ``mget_nonatomic`` splits it
        per slot and runs the parts in one pipeline."""
        if not keys:
            return []
        with wrap_redis_errors("MGET"):
            if isinstance(self._client, redis.cluster.RedisCluster):
                return list(self._client.mget_nonatomic(keys))
            return list(self._client.mget(keys))

    def get_pieces(
        self,
        keys: Sequence[BlockHash],
        piece: int,
        consume: Callable[[int, list[Buffer | None]], None],
    ) -> None:
        """One MGET per piece on one connection, the next piece's MGET sent before this
        piece's values are handed to ``consume``: Redis serialises piece k+1 (in its own
        process) while ``consume`` checks and copies piece k. Sending ahead by one piece
        of 16 blocks made even a bare MGET-and-copy of 128 x 16 KiB blocks about 1.3x
        faster than one MGET (``bench tiers``, README), while sending every piece at once
        was not faster than one MGET: the two processes overlap only when the client has
        a reply to work on while Redis builds the next. A cluster (pieces may span
        slots) takes ``get_all``'s path. The first exchange is retried once after a
        connection error, as every command is (``connect_redis``); an error after that
        fails the rest of the job. A connection left with replies unread (an error, or
        ``consume`` raising) is closed, never handed back to the pool."""
        client = self._client
        if piece < 1:
            raise ValueError(f"piece must be >= 1, got {piece}")
        if not isinstance(client, redis.Redis) or client.connection is not None:
            super().get_pieces(keys, piece, consume)
            return
        full = [self._key(k) for k in keys]
        parts = [full[first : first + piece] for first in range(0, len(full), piece)]
        if len(parts) < 2:
            super().get_pieces(keys, piece, consume)
            return
        pool = client.connection_pool
        with wrap_redis_errors("MGET"):
            conn = pool.get_connection()
        drained = False
        try:
            # No health check (PING) while a reply is unread: its answer would be read as
            # the PING's, and every later piece paired with the next piece's reply.
            def start() -> Any:
                conn.send_command("MGET", *parts[0])
                conn.send_command("MGET", *parts[1], check_health=False)
                return conn.read_response()

            with wrap_redis_errors("MGET"):
                values = conn.retry.call_with_retry(start, lambda _: conn.disconnect())
            for k in range(len(parts)):
                if k:
                    with wrap_redis_errors("MGET"):
                        if k + 1 < len(parts):
                            conn.send_command("MGET", *parts[k + 1], check_health=False)
                        values = conn.read_response()
                consume(k * piece, values)  # outside the error wrapper: the caller's
            drained = True
        finally:
            if not drained:
                conn.disconnect()  # replies may be in flight: start afresh next time
            pool.release(conn)

    def put_many(self, items: Sequence[tuple[BlockHash, bytes]]) -> None:
        self._pipelined("pipelined SET", "SET", [(self._key(k), v) for k, v in items])

    def remove_many(self, keys: Sequence[BlockHash]) -> None:
        self._pipelined("pipelined DEL", "DEL", [(self._key(k),) for k in keys])

    def _scan_keys(self) -> Iterator[bytes]:
        return self._client.scan_iter(match=self._prefix + b"*", count=_SCAN_COUNT)

    def scan(self) -> Iterator[tuple[BlockHash, int]]:
        """Yield ``(key, STRLEN)`` per stored key: SCAN pages plus one pipelined STRLEN each."""
        start = len(self._prefix)
        with wrap_redis_errors("SCAN"):
            for chunk in _chunks(self._scan_keys(), _SCAN_COUNT):
                sizes = self._pipelined("pipelined STRLEN", "STRLEN", [(k,) for k in chunk])
                for full_key, size in zip(chunk, sizes, strict=True):
                    if size:  # 0: deleted between SCAN and STRLEN
                        yield BlockHash(full_key[start:]), int(size)

    def clear(self) -> int:
        """Delete every key of this namespace; return how many were deleted."""
        num_deleted = 0
        with wrap_redis_errors("clear"):
            keys = list(self._scan_keys())
        for chunk in _chunks(iter(keys), _SCAN_COUNT):
            replies = self._pipelined("pipelined DEL", "DEL", [(k,) for k in chunk])
            num_deleted += sum(int(r) for r in replies)
        return num_deleted

    def close(self) -> None:
        client, self._owned_client = self._owned_client, None
        if client is not None:
            with wrap_redis_errors("close"):
                client.close()
