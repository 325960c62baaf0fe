"""The cache manager of one replica of a shared DDR pool (`--ddr-pool shared`).

Differences from `CacheManager` (see `cache.pool` for the pool's design):

* its DDR index mirrors the pool's, fed by the pool's follower on every `poll()`, so a
  block any replica writes is a hit here about 0.1 s later, and one another replica
  deletes stops being one;
* it never evicts DDR for capacity (the pool refuses writes beyond its capacity, and
  its demoter keeps it under a watermark); when this replica is the demoter, it moves
  the blocks the pool claimed to its flash (or deletes them without flash);
* it saves nothing of DDR at shutdown (the pool outlives it);
* `store_to_pool` / `is_in_pool`: the calls P/D disaggregation builds on.

Threading as `CacheManager`: every method on the engine thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cache.block_hash import BlockHash
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

    def store_to_pool(self, block_ids: Sequence[int]) -> int:
        """Write these HBM blocks (registered, full) to the shared pool now, unless a lower
        tier already holds them; HBM keeps them. Returns how many were submitted. Others
        see them about 0.1 s after they are stored; a full pool refuses them (they are
        then dropped from this replica's index; `is_in_pool` says which made it). The
        admission policy is not asked: the caller decides."""
        if Tier.DDR not in self._index or self.health[Tier.DDR].is_down:
            return 0
        blocks = [(h, b) for b in block_ids if (h := self.pool.block_hash(b)) is not None]
        todo = [(h, b) for h, b in blocks if not any(h in i for i in self._index.values())]
        self._store_blocks(Tier.DDR, todo, lambda _: True)
        return len(todo)

    def is_in_pool(self, block_hash: BlockHash) -> bool:
        """Whether the shared pool holds `block_hash`, as of the last `poll`. Never blocks
        (`SharedPool.contains_many` asks Redis itself, blocking)."""
        index = self._index.get(Tier.DDR)
        return index is not None and block_hash in index

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
