"""CacheManager.prefetch: a load for a queued request, in small lane tasks, hits counted
at admission (real Redis and LMDB)."""

from __future__ import annotations

import numpy as np

from cache.stats import Tier
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
