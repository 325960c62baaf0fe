"""Redis-specific behaviour: failures surface as TierError, fast; URL forms."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster

from cache.block_hash import BlockHash
from cache.embedded_redis import EmbeddedRedis
from cache.tiers.base import Buffer, TierError, TierFullError
from cache.tiers.redis_tier import RedisTier, connect_redis


def key(i: int) -> BlockHash:
    return BlockHash(i.to_bytes(16, "big"))


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("own"), maxmemory_bytes=1 << 20)
    yield server.start()
    server.stop()


CALLS: dict[str, Callable[[RedisTier], object]] = {
    "contains": lambda t: t.contains(key(1)),
    "get": lambda t: t.get(key(1)),
    "put": lambda t: t.put(key(1), b"x"),
    "remove": lambda t: t.remove(key(1)),
    "contains_many": lambda t: t.contains_many([key(1), key(2)]),
    "get_many": lambda t: t.get_many([key(1)], lambda i, b: None),
    "get_pieces": lambda t: t.get_pieces([key(i) for i in range(5)], 2, lambda f, b: None),
    "put_many": lambda t: t.put_many([(key(1), b"x")]),
    "remove_many": lambda t: t.remove_many([key(1)]),
    "scan": lambda t: list(t.scan()),
    "clear": lambda t: t.clear(),
}


@pytest.mark.parametrize("call", CALLS)
def test_server_gone_raises_tier_error_quickly(own_server: EmbeddedRedis, call: str) -> None:
    tier = RedisTier(connect_redis(own_server.url), "ddr")
    tier.put(key(1), b"before")  # the connection is established and pooled
    own_server.stop()
    start = time.monotonic()
    with pytest.raises(TierError) as info:
        CALLS[call](tier)
    assert time.monotonic() - start < 2.0  # one retry, no seconds of backoff
    assert isinstance(info.value.__cause__, redis.RedisError | OSError)
    tier.close()


def test_cluster_node_gone_raises_tier_error_quickly(
    private_cluster: list[tuple[subprocess.Popen[bytes], int]],
) -> None:
    tier = RedisTier(connect_redis(f"redis+cluster://127.0.0.1:{private_cluster[0][1]}"), "ddr")
    keys = [key(i) for i in range(30)]  # spread over all three nodes
    tier.put_many([(k, b"v") for k in keys])
    victim, _ = private_cluster[1]
    victim.kill()
    victim.wait()
    calls: list[Callable[[], object]] = [
        lambda: tier.get_many(keys, lambda i, b: None),
        lambda: tier.put_many([(k, b"w") for k in keys]),
        lambda: list(tier.scan()),
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(TierError):
            call()
        assert time.monotonic() - start < 2.0
    tier.close()


def test_noeviction_full_server_raises_tier_error_and_keeps_data(
    own_server: EmbeddedRedis,
) -> None:
    tier = RedisTier(connect_redis(own_server.url), "ddr")
    stored = 0
    with pytest.raises(TierFullError, match="maxmemory"):
        for i in range(1000):  # 64 MiB in total, far past the 1.25 MiB limit
            tier.put(key(i), bytes(64 << 10))
            stored += 1
    assert stored < 1000
    assert all(tier.contains_many([key(i) for i in range(stored)]))  # nothing was evicted
    tier.close()


def test_connect_redis_unix_url_returns_bytes(redis_url: str) -> None:
    client = connect_redis(redis_url)
    assert isinstance(client, redis.Redis)
    assert client.echo(b"\xff\x00") == b"\xff\x00"
    client.close()


@pytest.mark.parametrize(
    "form", ["redis+cluster://127.0.0.1:{port}", "redis://127.0.0.1:{port}?cluster=true"]
)
def test_connect_redis_cluster_forms(redis_cluster_url: str, form: str) -> None:
    port = redis_cluster_url.rsplit(":", 1)[1]
    client = connect_redis(form.format(port=port))
    assert isinstance(client, redis.cluster.RedisCluster)
    assert len(client.get_primaries()) == 3
    client.close()


def test_connect_redis_plain_url_is_not_cluster(redis_cluster_url: str) -> None:
    port = redis_cluster_url.rsplit(":", 1)[1]
    client = connect_redis(f"redis://127.0.0.1:{port}?cluster=false")
    assert isinstance(client, redis.Redis)
    assert client.ping()
    client.close()


def test_connect_redis_rejects_cluster_over_unix_socket(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cluster"):
        connect_redis(f"unix://{tmp_path}/redis.sock?cluster=true")


def test_cluster_spreads_keys_over_nodes(redis_cluster_url: str, namespace: str) -> None:
    with RedisTier(connect_redis(redis_cluster_url), namespace) as tier:
        tier.put_many([(key(i), b"v") for i in range(64)])
        assert len(list(tier.scan())) == 64
        client = connect_redis(redis_cluster_url)
        assert isinstance(client, redis.cluster.RedisCluster)
        per_node = [
            client.dbsize(target_nodes=node)  # type: ignore[call-arg]
            for node in client.get_primaries()
        ]
        assert sum(1 for n in per_node if n) >= 2  # the batch crossed nodes
        assert tier.clear() == 64
        client.close()


def test_get_pieces_fails_the_rest_of_a_job_when_redis_drops_it_midway(
    own_server: EmbeddedRedis,
) -> None:
    """The connection is killed while the first piece is consumed: that piece stays
    consumed, no later piece is handed over, TierError is raised, and the next call
    reads right values on a fresh connection."""
    tier = RedisTier(connect_redis(own_server.url), "ddr")
    admin = redis.Redis.from_url(own_server.url)
    values = {i: bytes([i]) * 1024 for i in range(40)}
    tier.put_many([(key(i), v) for i, v in values.items()])
    keys = [key(i) for i in range(40)]
    firsts: list[int] = []

    def consume(first: int, bufs: list[Buffer | None]) -> None:
        assert [bytes(b) for b in bufs if b is not None] == [values[first + j] for j in range(4)]
        firsts.append(first)
        if first == 0:
            admin.client_kill_filter(_type="normal", skipme=True)

    with pytest.raises(TierError):
        tier.get_pieces(keys, 4, consume)
    assert firsts[0] == 0 and len(firsts) < 10  # at most a reply already on its way
    seen: list[bytes] = []
    tier.get_pieces(keys, 4, lambda _, bufs: seen.extend(bytes(b) for b in bufs if b))
    assert seen == [values[i] for i in range(40)]
    admin.close()
    tier.close()


def test_get_pieces_pairs_every_piece_with_its_own_reply_after_a_health_check_is_due(
    own_server: EmbeddedRedis,
) -> None:
    """With `health_check_interval` in the URL, redis-py PINGs before a command once the
    interval has passed. A PING sent while an MGET reply is still unread took that reply
    as its answer, reconnected and lost it: the next piece got the values of the piece
    after it (a good block then fails its checksum and is deleted), and the last read
    waited for the socket timeout."""
    tier = RedisTier(connect_redis(own_server.url + "?health_check_interval=1"), "ddr")
    values = {i: bytes([i]) * 100 for i in range(12)}
    tier.put_many([(key(i), v) for i, v in values.items()])
    got: list[tuple[int, list[bytes | None]]] = []

    def consume(first: int, bufs: list[Buffer | None]) -> None:
        got.append((first, [bytes(b) if b is not None else None for b in bufs]))
        if first == 0:
            time.sleep(1.1)  # the health-check interval runs out (not a stand-in for work)

    tier.get_pieces([key(i) for i in range(12)], 4, consume)
    assert got == [(f, [values[f + j] for j in range(4)]) for f in (0, 4, 8)]
    tier.close()


def test_get_pieces_on_a_cluster_reads_keys_of_every_slot(
    redis_cluster_url: str, namespace: str
) -> None:
    tier = RedisTier(connect_redis(redis_cluster_url), namespace)
    tier.put_many([(key(i), bytes([i]) * 8) for i in range(50)])  # spread over the nodes
    seen: list[tuple[int, list[bytes]]] = []
    tier.get_pieces(
        [key(i) for i in range(50)], 16, lambda f, bufs: seen.append((f, [bytes(b) for b in bufs]))
    )
    assert [f for f, _ in seen] == [0, 16, 32, 48]
    assert [b for _, bufs in seen for b in bufs] == [bytes([i]) * 8 for i in range(50)]
    tier.clear()
    tier.close()
