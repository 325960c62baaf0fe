"""Start-up: rebuild a lower tier's index from what its store already holds.

Flash survives restarts (and an external Redis may too). Blocks of the right size are
adopted; entries of any other size (another layout, a torn write) are counted and
deleted, not silently skipped; blocks beyond the tier's capacity are deleted, least
recently used first. Runs on the engine thread before any request; deletions go to the
transfer thread as `RemoveJob`s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cache.block_hash import BlockHash
from cache.health import TierHealth
from cache.stats import Tier, TierOp, TierStats
from cache.tier_index import TierIndex
from cache.tiers.base import StorageTier, TierError
from cache.transfer_jobs import Job, RemoveJob

logger = logging.getLogger(__name__)


def rebuild_index(
    tier: Tier,
    store: StorageTier,
    index: TierIndex,
    block_size: int,
    stats: TierStats,
    health: TierHealth,
    submit: Callable[[Job], None],
) -> None:
    """Fill `index` from `store` (see the module docstring). A failed scan starts empty."""
    wrong_size: list[BlockHash] = []
    try:
        index.add_many(store.scan_keys_of_size(block_size, wrong_size), block_size)
    except TierError as exc:
        stats.count_io_error(TierOp.SCAN)
        health.record_error(f"scan failed: {exc}")
        logger.warning("could not scan the %s tier; starting empty", tier, exc_info=True)
    if wrong_size:
        stats.wrong_size_blocks += len(wrong_size)
        logger.warning(
            "%s tier: deleting %d entries of the wrong size (not %d bytes)",
            tier,
            len(wrong_size),
            block_size,
        )
        submit(RemoveJob(tier, wrong_size))
    if index.used_bytes > index.capacity_bytes:
        submit(RemoveJob(tier, index.pop_over_capacity()))
    logger.info("%s tier: %d blocks found at start-up", tier, len(index))
