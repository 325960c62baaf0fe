"""Cache managers of several replicas over one shared DDR pool (real Redis, real LMDB)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cache.manager import CacheConfig, CacheManager
from cache.pool import PoolConfig, SharedPool
from cache.pooled_manager import SharedPoolCacheManager
from cache.stats import Tier
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.pooled_redis_tier import PooledRedisTier
from cache.tiers.redis_tier import connect_redis
from tests.cache.conftest import PoolStore
from tests.cache.test_manager import BLOCK, LAYOUT, chain, fill_and_cache, push_out_of_hbm

DEADLINE_S = 20.0


@pytest.fixture
def replicas(
    pool_store: PoolStore, tmp_path: Path
) -> Iterator[Callable[..., SharedPoolCacheManager]]:
    """Managers of one pool (each its own clients, follower and flash)."""
    url, namespace = pool_store.url, pool_store.namespace
    made: list[SharedPoolCacheManager] = []

    def make(hbm: int = 4, ddr_blocks: int = 64, **pool_config: float) -> SharedPoolCacheManager:
        config = PoolConfig(capacity_bytes=ddr_blocks * BLOCK, poll_s=0.02, **pool_config)  # type: ignore[arg-type]
        pool = SharedPool(connect_redis(url), namespace, config)
        ddr = PooledRedisTier(connect_redis(url), namespace, pool)
        flash = LmdbTier(tmp_path / f"flash{len(made)}", 64 << 20, LAYOUT.namespace)
        cache_config = CacheConfig(hbm, ddr_blocks * BLOCK, 64 * BLOCK)
        m = SharedPoolCacheManager(LAYOUT, cache_config, ddr, flash, pool=pool)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def poll_until(m: CacheManager, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, "not reached in time"
        m.wait_transfers()
        m.poll()
        time.sleep(0.005)  # poll interval


def load_all(m: CacheManager, hashes: list) -> tuple[list[int], int]:
    hit = m.match(hashes, len(hashes))
    admission = m.admit(hit, "r", len(hashes) * LAYOUT.block_size, len(hashes))
    assert admission is not None
    loaded = admission.num_hbm_blocks
    if admission.is_loading:
        m.wait_transfers()
        (done,) = m.poll()
        loaded += done.num_loaded_blocks
    return admission.block_ids, loaded


def test_blocks_another_replica_spills_later_are_hits_with_the_same_bytes(replicas):
    b = replicas()  # started first: its index comes from the pool's log, not a scan
    a = replicas()
    hashes = chain(4)
    data = fill_and_cache(a, hashes)
    push_out_of_hbm(a)  # A spills them to the pool
    poll_until(b, lambda: b.match(hashes, len(hashes)).num_blocks == len(hashes))
    hit = b.match(hashes, len(hashes))
    assert [t for _, t in hit.lower] == [Tier.DDR] * 4
    ids, loaded = load_all(b, hashes)
    assert loaded == 4
    for block_id, h in zip(ids, hashes, strict=True):
        np.testing.assert_array_equal(b.kv[block_id], data[h])


def test_store_through_publishes_blocks_still_in_hbm(replicas):
    """P/D's hand-over (`store_through`) on a shared pool: the others see the blocks."""
    a, b = replicas(), replicas()
    hashes = chain(3, seed=5)
    ids = a.allocate(3)
    assert ids is not None
    a.commit(ids, hashes)
    done = a.store_through(hashes)
    assert done is not None and done.wait(DEADLINE_S)
    poll_until(b, lambda: b.match(hashes, len(hashes)).num_blocks == len(hashes))
    a.free(ids)


def test_the_demoter_moves_pool_blocks_to_flash_and_every_replica_drops_them(replicas):
    a = replicas(hbm=8, ddr_blocks=10, high_watermark=0.5, low_watermark=0.2)
    b = replicas(hbm=8, ddr_blocks=10, high_watermark=0.5, low_watermark=0.2)
    hashes = chain(8, seed=3)
    data = fill_and_cache(a, hashes[:4])
    push_out_of_hbm(a)
    data |= fill_and_cache(a, hashes[4:], seed=4)
    push_out_of_hbm(a)
    # One of them is the demoter: the pool goes below its watermark; the rest is in its
    # flash. (Usually 2 and 6; a claim made while the second batch was reserved but not
    # yet committed takes only what was visible, and the pool then stays below 5.)
    managers = [a, b]

    def settled() -> bool:
        for m in managers:
            m.wait_transfers()
            m.poll()
        ddr = [set(m._index[Tier.DDR]) for m in managers]
        flash = sum(len(m._index[Tier.FLASH]) for m in managers)
        return ddr[0] == ddr[1] and len(ddr[0]) <= 5 and flash > 0 and len(ddr[0]) + flash == 8

    poll_until(a, settled)
    demoter = max(managers, key=lambda m: len(m._index[Tier.FLASH]))
    # Nothing lost: all 8 load, from the pool or the demoter's flash, byte-identical.
    ids, loaded = load_all(demoter, hashes)
    assert loaded == 8
    for block_id, h in zip(ids, hashes, strict=True):
        np.testing.assert_array_equal(demoter.kv[block_id], data[h])
