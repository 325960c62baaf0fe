"""The cache manager of one replica of a shared DDR pool (`--ddr-pool shared`).

Differences from `CacheManager` (see `cache.pool` for the pool's design):

* its DDR index mirrors the pool's, fed by the pool's follower on every `poll()`, so a
  block any replica writes is a hit here about 0.1 s later, and one another replica
  deletes stops being one;
* it never evicts DDR for capacity (the pool refuses writes beyond its capacity, and
  its demoter keeps it under a watermark); when this replica is the demoter, it moves
  the blocks the pool claimed to its flash (or deletes them without flash);
* it saves nothing of DDR at shutdown (the pool outlives it);

Threading as `CacheManager`: every method on the engine thread.
"""

from __future__ import annotations

from collections.abc import Callable

from cache.events import EventCallback, ignore_event
from cache.layout import KVLayout
from cache.manager import CacheManager
from cache.pool import SharedPool, apply_changes
from cache.records import CacheConfig
from cache.stats import Tier
from cache.tiers.base import StorageTier
from cache.transfer import RemoveJob, TransferCharge


class SharedPoolCacheManager(CacheManager):
    """A `CacheManager` whose DDR tier is a `PooledRedisTier` over `pool`."""

    _owns_ddr = False

    def __init__(
        self,
        layout: KVLayout,
        config: CacheConfig,
        ddr: StorageTier | None = None,
        flash: StorageTier | None = None,
        notify: Callable[[], None] = lambda: None,
        on_event: EventCallback = ignore_event,
        charge: TransferCharge | None = None,
        *,
        pool: SharedPool,
    ) -> None:
        """As `CacheManager`; `ddr` must be a `PooledRedisTier` (possibly wrapped) over
        `pool`, and `config.ddr_capacity_bytes` the pool's capacity. Reads the pool's
        index before returning (blocking: call at start-up). Without `ddr` the pool is
        not used."""
        self._pool = pool
        super().__init__(layout, config, ddr, flash, notify, on_event, charge)
        if Tier.DDR in self._index:
            pool.start(notify)
            self._follow_pool()

    def close(self) -> None:
        self._pool.stop()
        super().close()

    def _make_room(self, tier: Tier, size: int) -> bool:
        if tier is Tier.DDR:
            return self._index[tier].fits(size)  # the pool enforces its capacity itself
        return super()._make_room(tier, size)

    def _apply_results(self) -> None:
        super()._apply_results()
        self._follow_pool()

    def _follow_pool(self) -> None:
        """Apply the pool's changes; demote what it claimed from this replica, the demoter."""
        changes = self._pool.drain() if Tier.DDR in self._index else []
        if not changes:
            return
        victims = apply_changes(self._index[Tier.DDR], changes, self._block_size)
        if victims:
            self.stats.tiers[Tier.DDR].evictions += len(victims)
            if Tier.FLASH in self._index and not self.health[Tier.FLASH].is_down:
                self._demote(victims)
            else:
                self._worker.submit(RemoveJob(Tier.DDR, victims))
        self._refresh_occupancy()
