"""The scheduler tells the prefix-aware policy about a request before touching its blocks."""

from __future__ import annotations

from pathlib import Path

from cache.block_format import encoded_size
from cache.manager import CacheConfig, CacheManager
from cache.policies.prefix_aware import CONTINUATION
from cache.stats import Tier
from cache.tiers.lmdb_tier import LmdbTier
from tests.server.test_scheduler import LAYOUT, make_scheduler, request, run_to_end


def test_a_continuation_is_noted_before_its_reloaded_prefix_is_touched(tmp_path: Path):
    # A conversation's next turn reloads its prefix from flash. The policy files a block
    # under the class of the request that last touched it, so the turn must be noted
    # before admission touches the prefix; noted after, the prefix stayed under the first
    # turn's class (fresh) until its next use.
    block = encoded_size(LAYOUT.block_shape, LAYOUT.np_dtype)
    flash = LmdbTier(tmp_path / "flash", 16 << 20, LAYOUT.namespace)
    config = CacheConfig(16, flash_capacity_bytes=16 * block, eviction_policy="prefix-aware")
    cache = CacheManager(LAYOUT, config, flash=flash)
    try:
        first = list(range(1, 14))  # 3 full blocks
        sched = make_scheduler(cache)
        sched.add(request("turn1", first, max_tokens=1))
        run_to_end(sched)
        assert cache.offload(Tier.HBM) > 0
        sched.add(request("turn2", first + list(range(20, 30)), max_tokens=1))
        sched.schedule()  # admitted: its prefix starts loading from flash
        policy = cache._index[Tier.FLASH]._policy  # the class is the policy's own state
        prefix = sched.requests["turn2"].block_hashes[:3]
        assert [policy._where[h] for h in prefix] == [CONTINUATION] * 3
    finally:
        cache.close()
