"""Replicas of one shared DDR pool sharing one flash environment (`--flash-pool shared`):
real Redis (and a local 3-master cluster), real LMDB in a temp dir."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import cache.tiers.lmdb_tier
from cache.block_hash import BlockHash
from cache.pool import PoolConfig, SharedPool
from cache.pool_changes import ChangeKind, PoolChange
from cache.pooled_manager import SharedPoolCacheManager
from cache.records import CacheConfig
from cache.stats import Tier
from cache.tiers.faulty import FaultSpec, FaultyTier
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.pooled_redis_tier import PooledRedisTier
from cache.tiers.redis_tier import connect_redis
from cache.tiers.shared_flash import SharedFlashTier, environment_id
from tests.cache.conftest import PoolStore
from tests.cache.test_manager import BLOCK, LAYOUT, chain, fill_and_cache, push_out_of_hbm
from tests.cache.test_manager_pool import load_all, poll_until

MAP_SIZE = 64 << 20
# A pool of 10 blocks demoting above 5 down to 2, as in test_manager_pool.
POOL = dict(high_watermark=0.5, low_watermark=0.2)


@pytest.fixture
def replicas(
    pool_store: PoolStore, tmp_path: Path
) -> Iterator[Callable[..., SharedPoolCacheManager]]:
    """Managers of one pool; each shares the flash directory it is given (default: one
    for all), as replicas of one host do."""
    url, namespace = pool_store.url, pool_store.namespace
    made: list[SharedPoolCacheManager] = []

    def make(
        flash_dir: str = "shared", flash_blocks: int = 64, ddr_blocks: int = 10, hbm: int = 8
    ) -> SharedPoolCacheManager:
        config = PoolConfig(capacity_bytes=ddr_blocks * BLOCK, poll_s=0.02, **POOL)  # type: ignore[arg-type]
        pool = SharedPool(connect_redis(url), namespace, config)
        ddr = PooledRedisTier(connect_redis(url), namespace, pool)
        inner = LmdbTier(tmp_path / flash_dir, MAP_SIZE, LAYOUT.namespace)
        flash = SharedFlashTier.share(inner, pool, connect_redis(url), MAP_SIZE, BLOCK)
        cache_config = CacheConfig(hbm, ddr_blocks * BLOCK, flash_blocks * BLOCK)
        m = SharedPoolCacheManager(LAYOUT, cache_config, ddr, flash, pool=pool)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def settle(managers: list[SharedPoolCacheManager]) -> None:
    for m in managers:
        m.wait_transfers()
        m.poll()


def fill_pool(writer: SharedPoolCacheManager, n: int, seed: int) -> tuple[list, dict]:
    """`n` blocks computed by `writer`, spilled to the pool in batches of 4."""
    hashes = chain(n, seed=seed)
    data: dict = {}
    for start in range(0, n, 4):
        data |= fill_and_cache(writer, hashes[start : start + 4], seed=seed + start)
        push_out_of_hbm(writer)
    return hashes, data


def lmdb_keys(path: Path) -> set[bytes]:
    with LmdbTier(path, MAP_SIZE, LAYOUT.namespace) as tier:
        return {bytes(k) for k, _ in tier.scan()}


def agreed(managers: list[SharedPoolCacheManager], path: Path) -> set[bytes] | None:
    """What the flash at `path` holds, once every replica's flash index is exactly that
    and their DDR indexes agree (None before)."""
    settle(managers)
    on_disk = lmdb_keys(path)
    ddr = [set(m._index[Tier.DDR]) for m in managers]
    flash = [{bytes(h) for h in m._index[Tier.FLASH]} for m in managers]
    same = all(d == ddr[0] for d in ddr) and all(f == on_disk for f in flash)
    return on_disk if same else None


def demoted_and_agreed(managers: list[SharedPoolCacheManager], path: Path, total: int) -> bool:
    """Some blocks reached the flash, and the replicas agree on where all `total` are."""
    on_disk = agreed(managers, path)
    return bool(on_disk) and len(managers[0]._index[Tier.DDR]) + len(on_disk or ()) == total


def test_a_block_demoted_by_one_replica_is_a_flash_hit_in_another(replicas, tmp_path):
    b = replicas()  # started first: it learns of the flash blocks from the log
    a = replicas()
    hashes, data = fill_pool(a, 8, seed=3)
    # The demoter (either) moves most of the 8 to the one flash; both indexes list them.
    poll_until(a, lambda: demoted_and_agreed([a, b], tmp_path / "shared", 8))
    num_flash = len(a._index[Tier.FLASH])
    writer, follower = (a, b) if a.is_flash_writer else (b, a)
    assert not follower.is_flash_writer
    hit = follower.match(hashes, len(hashes))
    assert [t for _, t in hit.lower].count(Tier.FLASH) == num_flash
    ids, loaded = load_all(follower, hashes)
    assert loaded == 8
    for block_id, h in zip(ids, hashes, strict=True):
        np.testing.assert_array_equal(follower.kv[block_id], data[h])
    assert follower.stats.tiers[Tier.FLASH].hit_blocks == num_flash


def test_one_writer_keeps_the_shared_flash_within_its_capacity(replicas, tmp_path):
    a = replicas(flash_blocks=5)
    b = replicas(flash_blocks=5)
    managers = [a, b]
    for round_ in range(4):  # 4 x 8 blocks through a pool of 10 and a flash of 5
        fill_pool((a, b)[round_ % 2], 8, seed=10 * round_)
        settle(managers)
        assert len(lmdb_keys(tmp_path / "shared")) <= 5

    def converged() -> bool:  # both replicas agree, and on what LMDB holds
        settle(managers)
        on_disk = lmdb_keys(tmp_path / "shared")
        assert len(on_disk) <= 5
        ddr_a, ddr_b = (set(m._index[Tier.DDR]) for m in managers)
        return ddr_a == ddr_b and all(
            {bytes(h) for h in m._index[Tier.FLASH]} == on_disk for m in managers
        )

    poll_until(a, converged)
    assert len(lmdb_keys(tmp_path / "shared")) == 5
    assert [m.is_flash_writer for m in managers].count(True) == 1


def test_a_new_writer_starts_from_what_the_flash_holds(replicas, tmp_path):
    a = replicas(flash_blocks=6)
    b = replicas(flash_blocks=6)
    fill_pool(a, 8, seed=20)
    poll_until(a, lambda: demoted_and_agreed([a, b], tmp_path / "shared", 8))
    old, new = (a, b) if a.is_flash_writer else (b, a)
    # Behind every replica's back: one block gone from the flash (a lost log record).
    gone = next(iter(new._index[Tier.FLASH]))
    with LmdbTier(tmp_path / "shared", MAP_SIZE, LAYOUT.namespace) as tier:
        tier.remove(gone)
    old.close()  # the writer leaves; its lease runs out and the other takes over
    poll_until(new, lambda: new.is_flash_writer)
    assert gone not in new._index[Tier.FLASH]
    assert {bytes(h) for h in new._index[Tier.FLASH]} == lmdb_keys(tmp_path / "shared")
    # The new writer keeps the capacity: its demotions evict the oldest flash blocks.
    hashes, _ = fill_pool(new, 8, seed=30)

    def written() -> bool:
        on_disk = agreed([new], tmp_path / "shared")
        assert len(lmdb_keys(tmp_path / "shared")) <= 6
        return bool(on_disk) and any(bytes(h) in on_disk for h in hashes)

    poll_until(new, written)


def test_another_hosts_flash_records_are_not_hits(replicas, tmp_path):
    a = replicas(flash_dir="host1")
    b = replicas(flash_dir="host1")
    c = replicas(flash_dir="host2")  # same pool, another flash environment
    assert environment_id(tmp_path / "host1") != environment_id(tmp_path / "host2")
    hashes, _ = fill_pool(a, 8, seed=40)

    def demoted() -> bool:
        settle([a, b, c])
        ddr = [set(m._index[Tier.DDR]) for m in (a, b, c)]
        written = any(len(m._index[Tier.FLASH]) for m in (a, b, c))
        return written and ddr[0] == ddr[1] == ddr[2] and len(ddr[0]) < 8

    poll_until(a, demoted)
    writer = next(m for m in (a, b, c) if m.is_flash_writer)
    others = [c] if writer is not c else [a, b]
    writer.wait_transfers()  # its demotions stored and logged
    writer_dir = tmp_path / ("host2" if writer is c else "host1")
    assert lmdb_keys(writer_dir)
    # A later pool write, logged after those flash records: once every replica has it,
    # every replica has read them.
    later = chain(2, seed=41)
    fill_and_cache(writer, later)
    push_out_of_hbm(writer)
    poll_until(a, lambda: settle([a, b, c]) or all(later[0] in m._index[Tier.DDR] for m in others))
    for m in others:  # they heard of the demotions and applied none
        assert len(m._index[Tier.FLASH]) == 0
        hit = m.match(hashes, len(hashes))
        assert all(t is Tier.DDR for _, t in hit.lower)


def test_replicas_in_other_processes_read_the_same_environment(tmp_path):
    """LMDB across processes: a block another process stores is readable here."""
    path = tmp_path / "shared"
    key = chain(1, seed=50)[0]
    code = (
        "import sys; from pathlib import Path; from cache.tiers.lmdb_tier import LmdbTier\n"
        f"t = LmdbTier(Path(sys.argv[1]), {MAP_SIZE}, {LAYOUT.namespace!r})\n"
        "t.put(bytes.fromhex(sys.argv[2]), b'x' * 100); t.close()\n"
    )
    with LmdbTier(path, MAP_SIZE, LAYOUT.namespace) as here:
        root = Path(__file__).resolve().parents[2]
        subprocess.run([sys.executable, "-c", code, str(path), key.hex()], check=True, cwd=root)
        assert here.get(key) == b"x" * 100
    assert environment_id(path) == environment_id(path)  # stable


def test_a_block_deleted_before_the_follower_heard_of_it_is_a_miss(replicas, tmp_path):
    """The writer evicted a block and the follower has not applied the record yet: its
    load finds the block missing, the prefix ends there (the request recomputes the rest),
    the entry is dropped; the blocks before it arrive intact."""
    a, b = replicas(), replicas()
    hashes, data = fill_pool(a, 8, seed=60)
    poll_until(a, lambda: demoted_and_agreed([a, b], tmp_path / "shared", 8))
    follower = b if a.is_flash_writer else a
    gone = next(h for h in reversed(hashes) if h in follower._index[Tier.FLASH])
    with LmdbTier(tmp_path / "shared", MAP_SIZE, LAYOUT.namespace) as tier:
        tier.remove(gone)  # no log record: as if it had not arrived yet
    ids, loaded = load_all(follower, hashes)
    assert loaded == hashes.index(gone)
    for block_id, h in zip(ids[:loaded], hashes[:loaded], strict=True):
        np.testing.assert_array_equal(follower.kv[block_id], data[h])
    assert gone not in follower._index[Tier.FLASH]
    assert follower.stats.tiers[Tier.FLASH].index_repairs == 1


def test_a_new_writers_scan_reads_the_records_only_while_the_old_writer_commits(
    pool_store, tmp_path, monkeypatch
):
    # Blocks written in an order that is not key order; the meta records keep it.
    path = tmp_path / "shared"
    written = [BlockHash(bytes([i]) * 16) for i in (5, 1, 4, 2, 3)]
    old_writer = LmdbTier(path, MAP_SIZE, LAYOUT.namespace)
    old_writer.put_many([(h, bytes(BLOCK)) for h in written])
    late = BlockHash(bytes([0]) * 16)
    real_read = cache.tiers.lmdb_tier._read_sequentially
    committed = threading.Event()

    def read_while_the_old_writer_commits(meta_data: Path) -> None:
        # Between a scan's count of the values and its read of the records, on the
        # follower thread's LEAD scan: the old writer (another handle) commits a block.
        if threading.current_thread().name == "tierkv-pool" and not committed.is_set():
            old_writer.put(late, bytes(BLOCK))
            committed.set()
        real_read(meta_data)

    monkeypatch.setattr(
        cache.tiers.lmdb_tier, "_read_sequentially", read_while_the_old_writer_commits
    )
    url, namespace = pool_store.url, pool_store.namespace
    pool = SharedPool(connect_redis(url), namespace, PoolConfig(10 * BLOCK, poll_s=0.02))
    inner = LmdbTier(path, MAP_SIZE, LAYOUT.namespace)
    flash = SharedFlashTier.share(inner, pool, connect_redis(url), MAP_SIZE, BLOCK)
    try:
        pool.start()  # no other demoter: its follower takes the lease (LEAD)
        seen: list[PoolChange] = []
        deadline = time.monotonic() + 20.0
        while not any(c.kind is ChangeKind.LEAD for c in seen):
            assert time.monotonic() < deadline, f"no LEAD: {seen}"
            seen += pool.drain()
            time.sleep(0.005)  # poll interval
        lead = next(c for c in seen if c.kind is ChangeKind.LEAD)
        assert committed.is_set()
        # The records, oldest write first: nothing repaired, nothing reordered.
        assert [h for h, _ in lead.blocks] == [*written, late]
        assert [k for k, _ in old_writer.scan()] == [*written, late]
    finally:
        pool.stop()
        flash.close()
        old_writer.close()


def test_a_writer_that_leads_again_keeps_its_flash_stores_still_queued(pool_store, tmp_path):
    url, namespace = pool_store.url, pool_store.namespace
    path = tmp_path / "shared"
    config = PoolConfig(capacity_bytes=10 * BLOCK, poll_s=0.02, **POOL)  # type: ignore[arg-type]
    pool = SharedPool(connect_redis(url), namespace, config)
    ddr = PooledRedisTier(connect_redis(url), namespace, pool)
    inner = LmdbTier(path, MAP_SIZE, LAYOUT.namespace)
    shared = SharedFlashTier.share(inner, pool, connect_redis(url), MAP_SIZE, BLOCK)
    flash = FaultyTier(shared, FaultSpec())
    a = SharedPoolCacheManager(
        LAYOUT, CacheConfig(8, 10 * BLOCK, 64 * BLOCK), ddr, flash, pool=pool
    )
    client = connect_redis(url)
    try:

        def poll_until_without_waiting(done: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 20.0
            while not done():
                assert time.monotonic() < deadline, "not reached in time"
                a.poll()
                time.sleep(0.005)  # poll interval

        poll_until_without_waiting(lambda: a.is_flash_writer)
        flash.spec = FaultSpec(latency_ms=3000)  # its flash stores stall on the lane
        fill_pool(a, 8, seed=40)
        poll_until_without_waiting(lambda: len(a._index[Tier.FLASH]) > 0)  # demoting
        queued = {bytes(h) for h in a._index[Tier.FLASH]}
        # Another replica holds the lease for a moment: FOLLOW, then LEAD again, whose
        # re-read runs while the demotion is still queued.
        client.set(pool.keys.demoter, "another-replica", px=300)
        poll_until_without_waiting(lambda: not a.is_flash_writer)
        poll_until_without_waiting(lambda: a.is_flash_writer)
        assert not queued & lmdb_keys(path)  # the re-read could not have seen them
        flash.spec = FaultSpec()
        a.wait_transfers()
        a.poll()
        on_disk = lmdb_keys(path)
        assert queued <= on_disk
        assert {bytes(h) for h in a._index[Tier.FLASH]} == on_disk  # its books count them
    finally:
        client.close()
        a.close()
