"""CacheManager.prefetch: a load for a queued request, in small lane tasks, hits counted
at admission (real Redis and LMDB)."""

from __future__ import annotations

import numpy as np

from cache.manager import CacheConfig, CacheManager
from cache.stats import Tier
from cache.tiers.faulty import FaultyTier, parse_tier_faults
from cache.tiers.lmdb_tier import LmdbTier
from cache.transfer import PREFETCH_TASK_BLOCKS
from tests.cache.test_manager import (
    BLOCK,
    LAYOUT,
    chain,
    fill_and_cache,
    make_manager,
    push_out_of_hbm,
)


def test_a_prefetch_of_many_blocks_lands_byte_identical_and_counts_once_at_admission(
    redis_url, tmp_path
):
    n = 2 * PREFETCH_TASK_BLOCKS + 3  # several lane tasks per tier
    m = make_manager(redis_url, tmp_path / "flash", 2 * n, 4 * n, 4 * n)
    try:
        check(m, n)
    finally:
        m.close()


def check(m, n: int) -> None:
    hashes = chain(n)
    data = fill_and_cache(m, hashes)
    m.offload(Tier.HBM)
    push_out_of_hbm(m)
    hit = m.match(hashes, n)
    assert len(hit.lower) == n and not hit.hbm_block_ids
    taken = m.prefetch(hit, "q")
    assert taken is not None and taken.num_loading_blocks == n
    assert m.num_loads_in_flight == 1
    m.wait_transfers()
    (done,) = m.poll()
    assert (done.key, done.num_loaded_blocks) == ("q", n)
    assert m.stats.tiers[Tier.DDR].read_bytes == n * BLOCK  # summed over the tasks
    assert m.stats.tiers[Tier.DDR].hit_blocks == 0  # not admitted yet
    for block_id, h in zip(taken.block_ids, hashes, strict=True):
        np.testing.assert_array_equal(m.kv[block_id], data[h])
    # Admission finds the prefix in HBM and counts it as DDR hits, once.
    hit = m.match(hashes, n)
    assert len(hit.hbm_block_ids) == n
    admission = m.admit(hit, "q", n * LAYOUT.block_size, n)
    assert admission is not None and not admission.is_loading
    m.release_prefetch("q", taken.block_ids)
    assert m.stats.tiers[Tier.DDR].hit_blocks == n
    assert m.stats.hit_tokens[Tier.DDR] == n * LAYOUT.block_size
    assert m.stats.hit_tokens[Tier.HBM] == 0
    m.free(admission.block_ids)
    assert m.pool.num_active_blocks == 0


def test_a_prefetch_past_its_deadline_is_abandoned_without_blaming_the_tier(tmp_path):
    # A prefetch may wait behind urgent loads on its lane: missing its deadline says
    # nothing about the tier, so it is neither a reload timeout nor a health error.
    hashes = chain(3)
    m = make_manager(None, tmp_path / "flash", 8, 0, 16)
    fill_and_cache(m, hashes)
    m.offload(Tier.HBM)
    m.close()
    flash = FaultyTier(
        LmdbTier(tmp_path / "flash", 64 << 20, LAYOUT.namespace),
        parse_tier_faults("flash:latency_ms=300")["flash"],
        0,
    )
    config = CacheConfig(8, 0, 16 * BLOCK, reload_timeout_s=0.02)
    m = CacheManager(LAYOUT, config, flash=flash)
    try:
        hit = m.match(hashes, 3)
        assert len(hit.lower) == 3
        taken = m.prefetch(hit, "q")
        assert taken is not None
        finished = []
        while not finished:  # the deadline timer wakes nobody here: poll until it passed
            finished = m.poll()
        assert (finished[0].key, finished[0].num_loaded_blocks) == ("q", 0)
        assert m.stats.tiers[Tier.FLASH].reload_timeouts == 0
        assert m.health[Tier.FLASH].state()[0] == "ok"
        m.free(taken.block_ids)
        m.wait_transfers()
        m.poll()
        assert m.pool.num_active_blocks == 0
    finally:
        m.close()
