"""The cache manager's bookkeeping: transfer results into counters, occupancy into gauges,
landed loads into the HBM index.

Plain functions over the manager's records, called on the engine thread (the counters'
only writer); split out of `cache.manager` so that module keeps to placement.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from operator import itemgetter

from cache.block_hash import BlockHash
from cache.events import BlocksStored, EventCallback
from cache.hbm_pool import HbmBlockPool
from cache.health import TierHealth
from cache.stats import CacheStats, Tier
from cache.tier_index import TierIndex
from cache.tiers.base import StorageTier
from cache.transfer_jobs import Job, JobResult, LoadJob, LoadStatus, RemoveJob, job_op

logger = logging.getLogger(__name__)


def account_result(
    stats: CacheStats,
    health: Mapping[Tier, TierHealth],
    stores: Mapping[Tier, StorageTier],
    result: JobResult,
) -> None:
    """Add a finished transfer's bytes, latency and failures to `stats` and `health`."""
    for tier, n in result.read_bytes.items():
        stats.tiers[tier].read_bytes += n
    for tier, n in result.write_bytes.items():
        stats.tiers[tier].write_bytes += n
    if isinstance(result.job, LoadJob):
        for tier, seconds in result.seconds.items():
            stats.tiers[tier].reload_latency.observe(seconds)
    for tier, op in result.failures:
        stats.tiers[tier].count_io_error(op)
        health[tier].record_error(f"{op} failed")
    if result.error:
        if not result.failures:  # a bug in the job itself: blame the job's tier(s)
            for tier in stores:
                stats.tiers[tier].count_io_error(job_op(result.job))
        logger.warning("transfer %s failed: %s", type(result.job).__name__, result.error)


def refresh_occupancy(
    stats: CacheStats,
    pool: HbmBlockPool,
    indexes: Mapping[Tier, TierIndex],
    health: Mapping[Tier, TierHealth],
    stores: Mapping[Tier, StorageTier],
) -> None:
    """Bring the occupancy gauges and per-tier health in `stats` up to date."""
    hbm = stats.tiers[Tier.HBM]
    hbm.num_blocks = pool.num_used_blocks
    hbm.active_blocks = pool.num_active_blocks
    hbm.used_bytes = hbm.num_blocks * pool.layout.block_bytes
    hbm.capacity_bytes = pool.num_blocks * pool.layout.block_bytes
    for tier, index in indexes.items():
        tier_stats = stats.tiers[tier]
        tier_stats.num_blocks, tier_stats.used_bytes = len(index), index.used_bytes
        tier_stats.capacity_bytes = index.capacity_bytes
    for tier, tier_health in health.items():
        tier_stats = stats.tiers[tier]
        if tier in stores:
            tier_stats.health, tier_stats.health_detail = tier_health.state()
            tier_stats.faults_injected = dict(stores[tier].fault_counts())
        else:
            tier_stats.health, tier_stats.health_detail = "disabled", ""


def drop_restarted(health: Mapping[Tier, TierHealth], index: Mapping[Tier, TierIndex]) -> None:
    """A volatile store (embedded Redis) came back empty: forget what it held."""
    for tier, tier_health in health.items():
        if tier_health.take_restarts() and tier in index:
            tier_index = index[tier]
            lost = list(tier_index)
            for block_hash in lost:
                tier_index.remove(block_hash)
            logger.warning("%s tier restarted empty: dropped %d index entries", tier, len(lost))


def register_loaded(
    items: list[tuple[BlockHash, int, Tier]],
    statuses: list[LoadStatus],
    completed: bool,
    count: bool,
    pool: HbmBlockPool,
    index: Mapping[Tier, TierIndex],
    stats: CacheStats,
    *,
    submit: Callable[[Job], None],
    on_event: EventCallback,
) -> int:
    """Register in `pool` the blocks of a load that arrived intact, up to the first one
    that did not; returns how many did.

    `completed`: the load finished (else it was abandoned, and a block that had not
    arrived may be fine, only slow). `count`: count them as hits now (a prefetch's are
    counted when its request is admitted). A block that failed leaves its tier's index
    (`submit` removes a corrupt one from the store); the HBM blocks registered are
    reported in one `BlocksStored` event."""
    if len(statuses) != len(items):
        raise ValueError(f"{len(statuses)} statuses for {len(items)} blocks")
    num_ok = len(items)
    if statuses.count(LoadStatus.OK) != num_ok:  # per load, not per block, when all arrived
        num_ok = next(i for i, status in enumerate(statuses) if status is not LoadStatus.OK)
    landed = items[:num_ok]
    registered = pool.register_many(
        list(map(itemgetter(1), landed)), list(map(itemgetter(0), landed))
    )
    if count:
        for tier, num_hits in Counter(map(itemgetter(2), landed)).items():
            stats.tiers[tier].hit_blocks += num_hits
            stats.hit_tokens[tier] += num_hits * pool.layout.block_size
    if num_ok < len(items) and completed:
        # The prefix ends here. Later blocks may be fine, but their tokens are recomputed
        # into these slots, so they are not registered. (Abandoned: the block may be
        # fine, only slow; its entry stays.)
        block_hash, _, tier = items[num_ok]
        index[tier].remove(block_hash)
        stats.tiers[tier].miss_blocks += 1
        if statuses[num_ok] is LoadStatus.CORRUPT:
            stats.tiers[tier].checksum_failures += 1
            submit(RemoveJob(tier, [block_hash]))
        elif statuses[num_ok] is LoadStatus.MISSING:  # the store lost it behind our back
            stats.tiers[tier].index_repairs += 1
    if registered:
        on_event(BlocksStored(Tier.HBM, tuple(registered)))
    return num_ok
