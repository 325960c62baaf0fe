"""P/D hand-over through a shared DDR pool (cache/pool_handoff.py): a prefill manager
writes blocks through to Redis, a decode manager on the same Redis namespace adopts them
and reloads the same bytes."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from cache.manager import CacheConfig, CacheManager
from cache.pool_handoff import find_shared_prefix
from cache.stats import Tier
from cache.tiers.redis_tier import RedisTier, connect_redis
from tests.cache.test_manager import BLOCK, LAYOUT, chain, fill_and_cache, reload


def _pair(redis_url: str) -> tuple[CacheManager, CacheManager, RedisTier]:
    namespace = f"pd-{uuid.uuid4().hex}"

    def make() -> CacheManager:
        ddr = RedisTier(connect_redis(redis_url), namespace)
        return CacheManager(LAYOUT, CacheConfig(8, 64 * BLOCK, 0), ddr=ddr)

    return make(), make(), RedisTier(connect_redis(redis_url), namespace)


def test_store_through_then_adopt_reloads_identical_bytes(redis_url: str) -> None:
    prefill, decode, lookup = _pair(redis_url)
    try:
        hashes = chain(5, seed=3)
        data = fill_and_cache(prefill, hashes)
        done = prefill.store_through(hashes)
        assert done is not None and done.wait(10)
        assert prefill.pool.num_cached_blocks == 5  # HBM keeps them (write-through)
        assert find_shared_prefix(lookup, hashes + chain(1, seed=4)) == hashes
        assert decode.match(hashes, 5).num_blocks == 0  # not indexed yet
        assert decode.adopt(Tier.DDR, hashes) == 5
        assert decode.adopt(Tier.DDR, hashes) == 5  # already indexed: touched, counted
        block_ids, loaded = reload(decode, hashes)
        assert loaded == 5
        for block_id, h in zip(block_ids, hashes, strict=True):
            np.testing.assert_array_equal(decode.kv[block_id], data[h])
    finally:
        prefill.close()
        decode.close()
        lookup.close()


def test_store_through_skips_blocks_ddr_holds_and_blocks_hbm_lost(redis_url: str) -> None:
    prefill, decode, lookup = _pair(redis_url)
    try:
        hashes = chain(3, seed=5)
        fill_and_cache(prefill, hashes)
        first = prefill.store_through(hashes)
        assert first is not None and first.wait(10)
        prefill.poll()
        written = prefill.stats.tiers[Tier.DDR].write_bytes
        again = prefill.store_through(hashes + chain(2, seed=6))  # 2 unknown to HBM
        assert again is not None and again.wait(10)
        prefill.poll()
        assert prefill.stats.tiers[Tier.DDR].write_bytes == written
    finally:
        prefill.close()
        decode.close()
        lookup.close()


def test_without_ddr_there_is_no_hand_over(tmp_path: Path) -> None:
    m = CacheManager(LAYOUT, CacheConfig(4, 0, 0))
    try:
        assert m.store_through(chain(1)) is None
        assert m.adopt(Tier.DDR, chain(1)) == 0
    finally:
        m.close()
