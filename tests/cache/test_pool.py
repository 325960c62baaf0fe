"""The shared DDR pool (cache.pool) on a real Redis and a real 3-node Redis Cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from cache.block_hash import BlockHash
from cache.embedded_redis import EmbeddedRedis
from cache.pool import PoolConfig, SharedFlash, SharedPool
from cache.pool_changes import ChangeKind, PoolChange
from cache.tiers.base import TierError
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.pooled_redis_tier import PooledRedisTier
from cache.tiers.redis_tier import RedisClient, RedisTier, connect_redis

SIZE = 1024
DEADLINE_S = 20.0  # generous: the machine is shared; polled, never slept for


def block(i: int, tag: int = 0) -> BlockHash:
    return BlockHash(i.to_bytes(8, "little") + tag.to_bytes(8, "little"))


@pytest.fixture(params=["redis", "redis-cluster"])
def url(request: pytest.FixtureRequest) -> str:
    fixture = "redis_url" if request.param == "redis" else "redis_cluster_url"
    value: str = request.getfixturevalue(fixture)
    return value


@pytest.fixture
def open_pool(url: str, namespace: str) -> Iterator[Callable[..., PooledRedisTier]]:
    """Replicas of one pool: each a PooledRedisTier with its own SharedPool and clients."""
    made: list[PooledRedisTier] = []

    def open_(capacity_blocks: int = 20, **config: float) -> PooledRedisTier:
        pool_config = PoolConfig(capacity_bytes=capacity_blocks * SIZE, poll_s=0.02, **config)  # type: ignore[arg-type]
        pool = SharedPool(connect_redis(url), namespace, pool_config)
        tier = PooledRedisTier(connect_redis(url), namespace, pool)
        made.append(tier)
        return tier

    yield open_
    if made:
        made[0].clear()
    for tier in made:
        tier.pool.stop()
        tier.close()


def wait_for(
    pool: SharedPool, want: Callable[[list[PoolChange]], bool], seen: list[PoolChange]
) -> list[PoolChange]:
    """Drain `pool` into `seen` until `want(seen)`; fail after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not want(seen):
        assert time.monotonic() < deadline, f"not seen in time: {seen}"
        seen += pool.drain()
        time.sleep(0.005)  # poll interval
    return seen


def reserve_when_free(pool: SharedPool, client: RedisClient, h: BlockHash) -> None:
    """Reserve `h` in `pool`, retrying while it is refused or someone else's (until an
    earlier reservation expires); fail after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while pool.reserve(client, [h], SIZE) != [0]:
        assert time.monotonic() < deadline
        time.sleep(0.01)  # poll interval


def blocks_of(changes: list[PoolChange], kind: ChangeKind) -> set[BlockHash]:
    return {h for c in changes if c.kind is kind for h, _ in c.blocks}


def stored_bytes(url: str, namespace: str) -> int:
    with RedisTier(connect_redis(url), namespace) as plain:
        return sum(size for _, size in plain.scan())


def test_a_block_written_after_a_follower_started_reaches_it(open_pool):
    a, b = open_pool(), open_pool()
    b.pool.start()
    seen = wait_for(b.pool, lambda s: any(c.kind is ChangeKind.RESET for c in s), [])
    a.put_many([(block(i), bytes([i]) * SIZE) for i in range(3)])
    wanted = {block(i) for i in range(3)}
    wait_for(b.pool, lambda s: wanted <= blocks_of(s, ChangeKind.ADD), seen)
    got: list[bytes | None] = []
    b.get_many([block(1)], lambda _, buf: got.append(None if buf is None else bytes(buf)))
    assert got == [bytes([1]) * SIZE]


def test_pool_capacity_holds_under_concurrent_writers(open_pool, url, namespace):
    capacity = 20
    writers = [open_pool(capacity) for _ in range(4)]
    errors: list[BaseException] = []
    done = threading.Event()
    samples: list[tuple[int, int]] = []

    def write(w: int, tier: PooledRedisTier) -> None:
        try:
            for start in range(0, 60, 5):
                tier.put_many([(block(i, w), b"x" * SIZE) for i in range(start, start + 5)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    def watch() -> None:
        while not done.is_set():
            samples.append((writers[0].pool.usage().used_bytes, stored_bytes(url, namespace)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=write, args=(w, t)) for w, t in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert not errors
    assert samples
    # The books never exceed the capacity, and what Redis stores never exceeds the books.
    assert max(counted for counted, _ in samples) <= capacity * SIZE
    assert max(stored for _, stored in samples) <= capacity * SIZE
    final = writers[0].pool.usage().used_bytes
    assert final == stored_bytes(url, namespace) == capacity * SIZE
    # Every writer learns which of its blocks the pool refused.
    refused = sum(len(blocks_of(t.pool.drain(), ChangeKind.REMOVE)) for t in writers)
    assert refused == 4 * 60 - capacity


def test_the_demoter_never_claims_a_leased_block(open_pool):
    a = open_pool(10, high_watermark=0.5, low_watermark=0.1)
    b = open_pool(10, high_watermark=0.5, low_watermark=0.1)
    b.put_many([(block(i), b"x" * SIZE) for i in range(8)])  # oldest first
    b.get_many([block(0), block(1)], lambda _, buf: None)  # B loads them: leased, touched
    a.pool.start()  # A becomes the demoter: 8 blocks > 50% of 10
    seen = wait_for(a.pool, lambda s: bool(blocks_of(s, ChangeKind.DEMOTE)), [])
    victims = blocks_of(seen, ChangeKind.DEMOTE)
    assert victims == {block(i) for i in range(2, 8)}  # down to 1 block or leased ones
    # Claimed blocks leave every replica's view at once, and stay counted until deleted.
    assert b.pool.usage().evicting_bytes == len(victims) * SIZE
    a.remove_many(sorted(victims))
    assert b.pool.usage() == type(b.pool.usage())(2 * SIZE, 0)


def test_a_claim_whose_demoter_died_is_claimed_again(open_pool):
    a = open_pool(10, high_watermark=0.5, low_watermark=0.1, eviction_s=0.05)
    a.put_many([(block(i), b"x" * SIZE) for i in range(8)])
    a.pool.start()
    first = blocks_of(
        wait_for(a.pool, lambda s: bool(blocks_of(s, ChangeKind.DEMOTE)), []), ChangeKind.DEMOTE
    )
    # Nobody demotes them (the demoter "died"): after eviction_s they are handed out again.
    again = wait_for(a.pool, lambda s: first <= blocks_of(s, ChangeKind.DEMOTE), [])
    assert first <= blocks_of(again, ChangeKind.DEMOTE)


def test_a_writer_that_died_before_committing_gives_its_bytes_back(open_pool, url, namespace):
    a = open_pool(2, reservation_s=0.05)
    client = connect_redis(url)
    assert a.pool.reserve(client, [block(1), block(2)], SIZE) == [0, 0]  # then "dies"
    assert a.pool.reserve(client, [block(3)], SIZE) == [2]  # full while they are live
    reserve_when_free(a.pool, client, block(3))
    assert a.pool.usage().used_bytes == SIZE
    client.close()


def test_a_follower_that_missed_log_entries_reads_the_index_again(open_pool, url):
    a, b = open_pool(), open_pool()
    b.pool.start()
    seen = wait_for(b.pool, lambda s: any(c.kind is ChangeKind.RESET for c in s), [])
    resyncs = b.pool.num_resyncs
    a.put_many([(block(1), b"x" * SIZE)])
    wait_for(b.pool, lambda s: block(1) in blocks_of(s, ChangeKind.ADD), seen)
    # An entry whose sequence number skips some, as after the log was trimmed past a
    # slow follower: it must re-read the whole index rather than trust the log.
    client = connect_redis(url)
    seq = int(client.get(a.pool.keys.seq))
    fields = {"op": "a", "h": block(2), "s": SIZE, "n": seq + 5}
    client.xadd(a.pool.keys.log, fields)
    a.put_many([(block(3), b"x" * SIZE)])
    seen = wait_for(b.pool, lambda s: sum(c.kind is ChangeKind.RESET for c in s) == 2, seen)
    assert b.pool.num_resyncs == resyncs + 1
    resets = [c for c in seen if c.kind is ChangeKind.RESET]
    assert {h for h, _ in resets[-1].blocks} >= {block(1)}
    assert block(2) not in {h for h, _ in resets[-1].blocks}  # never really written
    client.close()


def test_a_follower_started_while_redis_is_away_catches_up_when_it_is_back(tmp_path):
    with EmbeddedRedis(tmp_path, maxmemory_bytes=64 << 20) as server:
        url = server.url
    # Redis is gone: starting must not raise (the replica serves, recomputing) ...
    config = PoolConfig(capacity_bytes=4 * SIZE, poll_s=0.02)
    follower = SharedPool(connect_redis(url), "back", config)
    follower.start()
    with EmbeddedRedis(tmp_path, maxmemory_bytes=64 << 20):  # ... and it comes back
        writer = PooledRedisTier(
            connect_redis(url), "back", SharedPool(connect_redis(url), "back", config)
        )
        writer.put_many([(block(1), b"x" * SIZE)])
        wanted = {block(1)}
        wait_for(
            follower,
            lambda s: wanted <= blocks_of(s, ChangeKind.ADD) | blocks_of(s, ChangeKind.RESET),
            [],
        )
        follower.stop()
        writer.pool.stop()
        writer.close()


def test_a_flash_that_cannot_be_read_at_start_up_is_read_again_by_the_follower(
    redis_url, namespace, tmp_path
):
    # A real LMDB environment holding one block; its first scan fails as a transient
    # LMDB read error would (TierError), the later ones read it.
    flash = LmdbTier(tmp_path / "flash", 1 << 24, "t")
    flash.put(block(1), b"x" * SIZE)
    failures = [TierError("lmdb scan failed: injected")]

    def scan() -> list[BlockHash]:
        if failures:
            raise failures.pop()
        return flash.scan_recorded_keys(SIZE)

    pool = SharedPool(connect_redis(redis_url), namespace, PoolConfig(4 * SIZE, poll_s=0.02))
    pool.share_flash(SharedFlash("env", scan))
    try:
        pool.start()  # must not raise: the follower retries
        seen = wait_for(pool, lambda s: block(1) in blocks_of(s, ChangeKind.FLASH_RESET), [])
        assert not failures and pool.num_resyncs == 1
        assert blocks_of(seen, ChangeKind.RESET) == set()
    finally:
        pool.stop()
        flash.close()


def test_a_follower_notices_the_books_were_lost_and_reads_the_index_again(open_pool):
    a, b = open_pool(), open_pool()
    b.pool.start()
    seen = wait_for(b.pool, lambda s: any(c.kind is ChangeKind.RESET for c in s), [])
    a.put_many([(block(i), b"x" * SIZE) for i in range(3)])
    wait_for(b.pool, lambda s: block(2) in blocks_of(s, ChangeKind.ADD), seen)
    a.clear()  # as a Redis that restarted empty: the log starts again from 1
    a.put_many([(block(7), b"x" * SIZE)])
    seen = wait_for(b.pool, lambda s: sum(c.kind is ChangeKind.RESET for c in s) == 2, seen)
    assert {h for h, _ in seen[-1].blocks} == {block(7)}


def test_a_server_that_lost_the_scripts_gets_them_again(open_pool, url):
    a = open_pool()
    a.put_many([(block(1), b"x" * SIZE)])
    client = connect_redis(url)
    client.script_flush()  # as a restarted Redis (on a cluster: every master)
    client.close()
    a.put_many([(block(2), b"y" * SIZE)])
    got: list[bytes | None] = []
    a.get_many([block(1), block(2)], lambda _, buf: got.append(None if buf is None else bytes(buf)))
    assert got == [b"x" * SIZE, b"y" * SIZE]
    a.remove_many([block(1), block(2)])
    assert a.pool.usage().used_bytes == 0


def test_a_block_redis_lost_behind_the_books_is_forgotten_pool_wide(open_pool, url, namespace):
    a, b = open_pool(), open_pool()
    a.put_many([(block(i), b"x" * SIZE) for i in range(3)])
    b.pool.start()
    seen = wait_for(b.pool, lambda s: any(c.kind is ChangeKind.RESET for c in s), [])
    with RedisTier(connect_redis(url), namespace) as plain:
        plain.remove(block(1))  # as an evicting Redis would: the books still list it
    got: list[bytes | None] = []
    a.get_many([block(0), block(1)], lambda _, buf: got.append(None if buf is None else bytes(buf)))
    assert got == [b"x" * SIZE, None]
    assert a.pool.usage().used_bytes == 2 * SIZE
    wait_for(b.pool, lambda s: block(1) in blocks_of(s, ChangeKind.REMOVE), seen)


def test_a_block_lost_behind_the_books_is_forgotten_by_a_read_in_pieces(open_pool, url, namespace):
    a = open_pool()
    a.put_many([(block(i), bytes([i]) * SIZE) for i in range(10)])
    with RedisTier(connect_redis(url), namespace) as plain:
        plain.remove(block(6))  # as an evicting Redis would: the books still list it
    got: list[tuple[int, list[bytes | None]]] = []
    a.get_pieces(
        [block(i) for i in range(10)],
        4,
        lambda first, bufs: got.append((first, [None if b is None else bytes(b) for b in bufs])),
    )
    assert [first for first, _ in got] == [0, 4, 8]
    values = [v for _, bufs in got for v in bufs]
    assert values == [None if i == 6 else bytes([i]) * SIZE for i in range(10)]
    assert a.contains_many([block(5), block(6)]) == [True, False]
    assert a.pool.usage().used_bytes == 9 * SIZE


def test_a_single_connection_client_reads_in_pieces_with_one_lease(redis_url, namespace):
    """A client with one fixed connection cannot pipeline on a pooled connection, so the
    read takes `get_many`'s path; it leased the blocks first and then again in there."""
    pool = SharedPool(connect_redis(redis_url), namespace, PoolConfig(capacity_bytes=20 * SIZE))
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    tier = PooledRedisTier(client, namespace, pool)
    try:
        tier.put_many([(block(i), bytes([i]) * SIZE) for i in range(10)])
        admin = connect_redis(redis_url)

        def scripts_run() -> int:  # every pool script (LEASE here) runs as EVALSHA or EVAL
            stats = admin.info("commandstats")
            return sum(
                int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval")
            )

        keys = [block(i) for i in range(10)]
        tier.get_pieces(keys, 4, lambda _, bufs: None)  # the scripts are loaded by now
        before = scripts_run()
        got: list[bytes | None] = []
        tier.get_pieces(
            keys, 4, lambda _, bufs: got.extend(None if b is None else bytes(b) for b in bufs)
        )
        assert got == [bytes([i]) * SIZE for i in range(10)]
        assert scripts_run() - before == 1
        admin.close()
    finally:
        tier.clear()
        pool.stop()
        tier.close()


def test_forget_counts_the_blocks_it_dropped(open_pool, url, namespace):
    """FORGET's count was shadowed by a local in its loop (always 0)."""
    a = open_pool()
    a.put_many([(block(i), b"x" * SIZE) for i in range(3)])
    with RedisTier(connect_redis(url), namespace) as plain:
        plain.remove_many([block(i) for i in range(3)])
    client = connect_redis(url)
    try:
        assert a.pool.forget(client, [block(i) for i in range(3)]) == 3
    finally:
        client.close()
    assert a.pool.usage().used_bytes == 0


def test_a_set_redis_refuses_is_not_published_to_the_pool(tmp_path, namespace):
    """A refused SET must not be committed: on plain Redis the SETs and the COMMIT went in
    one pipeline, which runs every command before raising, so the pool listed (and
    counted) a block whose value did not exist."""
    with EmbeddedRedis(tmp_path / "r", 64 << 20) as server:
        client = connect_redis(server.url)
        pool = SharedPool(connect_redis(server.url), namespace, PoolConfig(10_000_000))
        tier = PooledRedisTier(connect_redis(server.url), namespace, pool)
        try:
            tier.put_many([(block(1), b"x" * SIZE)])
            client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 100_000)
            with pytest.raises(TierError):
                tier.put_many([(block(2), b"z" * 300_000)])
            client.config_set("maxmemory", 0)
            with RedisTier(connect_redis(server.url), namespace) as plain:
                assert plain.contains_many([block(1), block(2)]) == [True, False]
            assert pool.contains_many(client, [block(1), block(2)]) == [True, False]
            assert pool.usage(client).used_bytes == SIZE
        finally:
            tier.close()
            client.close()


def test_a_stalled_writers_commit_does_not_publish_a_later_reservation(open_pool, url):
    """A writer stalled past its reservation: another replica reserved the same block
    since. The stalled writer's COMMIT published that reservation (before its owner's
    SET), and the owner's own COMMIT then found nothing to commit and deleted the value."""
    stalled, other = open_pool(reservation_s=0.05), open_pool()
    client = connect_redis(url)
    h = block(7)
    try:
        assert stalled.pool.reserve(client, [h], SIZE) == [0]
        reserve_when_free(other.pool, client, h)  # 3 until the stalled one's expires
        # The stalled writer wakes up (its SET wrote the same bytes: content-addressed).
        assert stalled.pool.commit(client, [h]) == [2]  # not committed, not its value
        assert stalled.pool.contains_many(client, [h]) == [False]  # not published
        assert other.pool.commit(client, [h]) == [1]
        assert other.pool.contains_many(client, [h]) == [True]
        assert other.pool.usage(client).used_bytes == SIZE
    finally:
        client.close()


def test_a_stalled_writers_failed_set_does_not_give_back_a_later_reservation(open_pool, url):
    stalled, other = open_pool(reservation_s=0.05), open_pool()
    client = connect_redis(url)
    h = block(8)
    try:
        assert stalled.pool.reserve(client, [h], SIZE) == [0]
        reserve_when_free(other.pool, client, h)  # 3 until the stalled one's expires
        assert stalled.pool.release(client, [h]) == [False]  # its SET failed: not its to free
        assert other.pool.usage(client).used_bytes == SIZE
        assert other.pool.commit(client, [h]) == [1]
    finally:
        client.close()
