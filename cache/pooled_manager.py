"""The cache manager of one replica of a shared DDR pool (`--ddr-pool shared`).

Differences from `CacheManager` (see `cache.pool` for the pool's design):

* its DDR index mirrors the pool's, fed by the pool's follower on every `poll()`, so a
  block any replica writes is a hit here about 0.1 s later, and one another replica
  deletes stops being one;
* it never evicts DDR for capacity (the pool refuses writes beyond its capacity, and
  its demoter keeps it under a watermark); when this replica is the demoter, it moves
  the blocks the pool claimed to its flash (or deletes them without flash);
* it saves nothing of DDR at shutdown (the pool outlives it);
* with a shared flash (`SharedPool.share_flash`, `cache.tiers.shared_flash`) its flash
  index mirrors the environment's, and it writes flash (stores, evictions, shutdown
  write-back) only while it is the demoter: the one writer of that flash. A follower's
  flash index never evicts (the writer's deletions reach it through the log).

Threading as `CacheManager`: every method on the engine thread.
"""

from __future__ import annotations

from collections.abc import Callable

from cache.block_hash import BlockHash
from cache.events import EventCallback, ignore_event
from cache.layout import KVLayout
from cache.manager import CacheManager
from cache.pool import SharedPool
from cache.pool_changes import ChangeKind, PoolChange, apply_changes
from cache.records import CacheConfig
from cache.stats import Tier
from cache.tiers.base import StorageTier
from cache.transfer import TransferCharge
from cache.transfer_jobs import RemoveJob


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
        self._shares_flash = pool.flash is not None and flash is not None
        self._is_flash_writer = not self._shares_flash  # a shared flash: on LEAD
        # A former writer's books, kept from FOLLOW until it leads again (see _follow_flash).
        self._former_books: set[BlockHash] = set()
        super().__init__(layout, config, ddr, flash, notify, on_event, charge)
        self._shares_flash = self._shares_flash and Tier.FLASH in self._index
        self._is_flash_writer = not self._shares_flash
        if Tier.DDR in self._index:
            pool.start(notify)
            self._follow_pool()

    def close(self) -> None:
        self._pool.stop()
        super().close()

    @property
    def is_flash_writer(self) -> bool:
        """Whether this replica may store in (and evict from) its flash now."""
        return self._is_flash_writer

    def _make_room(self, tier: Tier, size: int) -> bool:
        if tier is Tier.DDR:
            return self._index[tier].fits(size)  # the pool enforces its capacity itself
        if not self._is_flash_writer:
            return False  # a shared flash's follower never writes it
        return super()._make_room(tier, size)

    def offload(self, tier: Tier) -> int:
        if tier is Tier.DDR and not self._is_flash_writer:
            raise ValueError(
                "the flash is shared and this replica is not its writer (the pool's "
                "demoter is): offload DDR there"
            )
        return super().offload(tier)

    def write_back(self, timeout_s: float) -> int:
        return super().write_back(timeout_s) if self._is_flash_writer else 0

    def _rebuild_indexes(self) -> None:
        if not self._shares_flash or Tier.FLASH not in self._stores:
            super()._rebuild_indexes()
            return
        # The follower's first re-read fills the flash index, after the log position it
        # follows from (a scan here would miss what changes in between).
        flash = self._stores.pop(Tier.FLASH)
        try:
            super()._rebuild_indexes()
        finally:
            self._stores[Tier.FLASH] = flash

    def _apply_results(self) -> None:
        super()._apply_results()
        self._follow_pool()

    def _follow_pool(self) -> None:
        """Apply the pool's changes; demote what it claimed from this replica, the demoter."""
        changes = self._pool.drain() if Tier.DDR in self._index else []
        if not changes:
            return
        victims = apply_changes(self._index[Tier.DDR], changes, self._block_size)
        if self._shares_flash:
            self._follow_flash(changes)
        if victims:
            self.stats.tiers[Tier.DDR].evictions += len(victims)
            if Tier.FLASH in self._index and not self.health[Tier.FLASH].is_down:
                self._demote(victims)
            else:
                self._worker.submit(RemoveJob(Tier.DDR, victims))
        self._refresh_occupancy()

    def _follow_flash(self, changes: list[PoolChange]) -> None:
        """Apply the shared flash's changes to the flash index, in order."""
        index = self._index[Tier.FLASH]
        for change in changes:
            kind = change.kind
            if kind is ChangeKind.FOLLOW:
                # Its flash stores still queued on its lane commit after any re-read that
                # starts now, and their records carry its own id (skipped): keep its books
                # through re-reads until it leads again; deletions heard meanwhile apply.
                self._former_books = set(index) if self._is_flash_writer else set()
                self._is_flash_writer = False
            elif kind is ChangeKind.LEAD or (
                kind is ChangeKind.FLASH_RESET and not self._is_flash_writer
            ):
                # A writer's own index is its books (it logs what it does and skips its own
                # records), so only LEAD replaces them: with what the environment holds.
                wanted = {h for h, _ in change.blocks}
                kept = self._former_books
                for block_hash in [h for h in index if h not in wanted and h not in kept]:
                    index.remove(block_hash)
                for block_hash, _ in change.blocks:  # oldest write first
                    index.add(block_hash, self._block_size)
                if kind is ChangeKind.LEAD:
                    self._former_books = set()
                    self._is_flash_writer = True
                    self._trim_flash()
            elif kind is ChangeKind.FLASH_ADD:
                for block_hash, size in change.blocks:
                    index.add(block_hash, size or self._block_size)
            elif kind is ChangeKind.FLASH_REMOVE:
                for block_hash, _ in change.blocks:
                    index.remove(block_hash)
                    self._former_books.discard(block_hash)

    def _trim_flash(self) -> None:
        """The new writer deletes what is beyond the flash's capacity (oldest first)."""
        extra = self._index[Tier.FLASH].pop_over_capacity()
        if extra:
            self.stats.tiers[Tier.FLASH].evictions += len(extra)
            self._worker.submit(RemoveJob(Tier.FLASH, extra))
