"""Moving blocks down the tiers: the cache manager's spill path.

    HBM --evict (write-back spill)--> DDR --demote--> flash --delete

The seam: everything that writes a block into a lower tier, or pushes one further down
to make room there, and nothing that reads one back up. That is the public moves
(`offload`, the shutdown `write_back`) and the engine thread's half of every spill
(docs/architecture.md, "Spills: who does what"): HBM evictions (`_spill`), write-through
of admitted hits (`_write_through`), the batched store of HBM blocks (`_store_blocks`,
`_submit_store`, also P/D's `store_through` in `cache.pool_handoff`), making room by
demotion or deletion (`_make_room`, `_demote`) and the rewrite of a spill a tier refused
(`_fall_through`, called where results are applied). Matching, admission, reloads and
result application stay in `cache.manager`.

`SpillPath` is a mixin of `CacheManager` and owns no state: it works on the manager's
HBM pool, lower-tier indexes, lanes, statistics and admission policy (declared below),
so that subclasses keep overriding its methods as the manager's own
(`SharedPoolCacheManager` overrides `_make_room`: a shared pool evicts DDR itself, and
only the flash's writer makes room there; and `offload` and `write_back`). Engine
thread only, as every manager method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cache.block_format import gather_blocks
from cache.block_hash import BlockHash
from cache.events import BlocksRemoved, EventCallback
from cache.hbm_pool import HbmBlockPool
from cache.health import TierHealth
from cache.policies.admission import AdmissionPolicy
from cache.stats import CacheStats, Tier
from cache.tier_index import TierIndex
from cache.transfer import TransferWorker
from cache.transfer_jobs import DemoteJob, RemoveJob, StoreJob
from cache.write_back import plan_write_back

logger = logging.getLogger(__name__)


class SpillPath:
    """`CacheManager`'s moves down the tiers (see the module docstring)."""

    _owns_ddr: bool  # False: DDR is a shared pool that outlives this replica
    pool: HbmBlockPool
    stats: CacheStats
    health: dict[Tier, TierHealth]
    _index: dict[Tier, TierIndex]
    _block_size: int
    _worker: TransferWorker
    _admission: AdmissionPolicy
    _on_event: EventCallback

    if TYPE_CHECKING:

        def wait_transfers(self, timeout: float | None = None) -> bool: ...

        def _apply_results(self) -> None: ...

    def offload(self, tier: Tier) -> int:
        """Push every movable block of `tier` one tier down, wait for the moves, return
        their number. HBM: every cached, unreferenced block is spilled (blocks in use
        stay). DDR: every block is demoted to flash."""
        if tier is Tier.HBM:
            evicted = self.pool.evict_all_cached()
            moved = self._spill(evicted)
        elif tier is Tier.DDR:
            if Tier.DDR not in self._index or Tier.FLASH not in self._index:
                raise ValueError("offloading DDR needs both the DDR and the flash tier")
            victims: list[BlockHash] = []
            while (victim := self._index[Tier.DDR].pop_victim()) is not None:
                victims.append(victim)
            self.stats.tiers[Tier.DDR].evictions += len(victims)
            self._demote(victims)  # one batched job, not one per block
            moved = len(victims)
        else:
            raise ValueError("flash is the last tier; nothing to offload to")
        self.wait_transfers()
        self._apply_results()  # loads that finished meanwhile wait for the next poll()
        return moved

    def write_back(self, timeout_s: float) -> int:
        """Copy to flash what flash lacks, before a graceful shutdown; return blocks written.

        Call after the engine stopped stepping. Order: `plan_write_back`. Writes at most
        flash's capacity (older flash blocks make room), stops submitting at `timeout_s`;
        DDR keeps its copies.
        """
        flash = self._index.get(Tier.FLASH)
        if flash is None or timeout_s <= 0 or self.health[Tier.FLASH].is_down:
            return 0
        deadline = time.monotonic() + timeout_s
        self.wait_transfers(timeout_s)
        self._apply_results()
        ddr = self._index.get(Tier.DDR)
        ddr_keys = [] if ddr is None or self.health[Tier.DDR].is_down else reversed(list(ddr))
        ddr_keys = ddr_keys if self._owns_ddr else []  # a shared pool outlives us
        budget = flash.capacity_bytes // self._block_size
        todo = plan_write_back(self.pool.cached_blocks_newest_first(), ddr_keys, flash, budget)
        written = 0
        for start in range(0, len(todo), 64):
            if time.monotonic() >= deadline:
                break
            batch = todo[start : start + 64]
            for block_hash, _ in batch:
                self._make_room(Tier.FLASH, self._block_size)
                flash.add(block_hash, self._block_size)
            from_hbm = [(h, b) for h, b in batch if b is not None]
            if from_hbm:
                self._submit_store(Tier.FLASH, [h for h, _ in from_hbm], [b for _, b in from_hbm])
            from_ddr = [h for h, b in batch if b is None]
            if from_ddr:
                self._worker.submit(DemoteJob(from_ddr, keep_source=True))
            written += len(batch)
            self.wait_transfers(max(0.0, deadline - time.monotonic()))
        self._apply_results()
        logger.info("write-back: %d blocks copied to flash before shutdown", written)
        return written

    def _spill(self, evicted: Sequence[tuple[BlockHash, int]]) -> int:
        """Write evicted HBM blocks to the highest lower tier that lacks them."""
        self.stats.tiers[Tier.HBM].evictions += len(evicted)
        if evicted:
            self._on_event(BlocksRemoved(Tier.HBM, tuple(h for h, _ in evicted)))
        target = self._store_target()
        if target is None:
            return 0

        def should_store(block_hash: BlockHash) -> bool:
            held = [t for t in self._index if block_hash in self._index[t]]
            if held:
                self._index[held[0]].touch(block_hash)
                return False
            if not self._admission.should_admit(block_hash):
                self.stats.tiers[target].admission_rejects += 1
                return False
            return True

        self._store_blocks(target, evicted, should_store)
        return len(evicted)

    def _store_target(self) -> Tier | None:
        """The highest lower tier that is enabled and not down (DDR down: flash)."""
        return next(
            (t for t in (Tier.DDR, Tier.FLASH) if t in self._index and not self.health[t].is_down),
            None,
        )

    def _store_blocks(
        self,
        target: Tier,
        blocks: Sequence[tuple[BlockHash, int]],
        should_store: Callable[[BlockHash], bool],
    ) -> None:
        """Store HBM blocks (in order, each if `should_store`) in `target`, making room
        there as the batch grows (bookkeeping, then `_submit_store`)."""
        keys: list[BlockHash] = []
        ids: list[int] = []
        for block_hash, block_id in blocks:
            if not should_store(block_hash):
                continue
            if keys and not self._index[target].has_room(self._block_size):
                # Making room may demote a block of this very batch: store it first, so
                # the FIFO transfer thread writes it before it reads it back to demote.
                self._submit_store(target, keys, ids)
                keys, ids = [], []
            if not self._make_room(target, self._block_size):
                continue
            keys.append(block_hash)
            ids.append(block_id)
            self._index[target].add(block_hash, self._block_size)
        if keys:
            self._submit_store(target, keys, ids)

    def _submit_store(self, tier: Tier, keys: list[BlockHash], block_ids: list[int]) -> None:
        """One gather of the slots into the job's staging copy, holding the GIL (the slots
        are reusable once this returns); the lane encodes and writes (see `StoreJob`)."""
        self._worker.submit(StoreJob(tier, keys, gather_blocks(self.pool.kv, block_ids)))

    def _write_through(self, block_ids: Sequence[int]) -> None:
        """Store HBM hits a write-through admission policy now admits (HBM keeps them)."""
        if not self._admission.writes_through or not block_ids:
            return
        hashes = [self.pool.block_hash(b) for b in block_ids]
        target = self._store_target()
        if target is None:
            return

        def should_store(block_hash: BlockHash) -> bool:
            if any(block_hash in idx for idx in self._index.values()):
                return False
            return self._admission.should_admit(block_hash)

        blocks = [(h, b) for h, b in zip(hashes, block_ids, strict=True) if h is not None]
        self._store_blocks(target, blocks, should_store)

    def _make_room(self, tier: Tier, size: int) -> bool:
        """Evict from `tier` (demoting DDR victims to flash) until `size` more bytes fit."""
        index = self._index[tier]
        if not index.fits(size):
            return False
        victims: list[BlockHash] = []
        while not index.has_room(size):
            victim = index.pop_victim()
            if victim is None:
                return False
            victims.append(victim)
        self.stats.tiers[tier].evictions += len(victims)
        if not victims:
            return True
        if tier is Tier.DDR and Tier.FLASH in self._index:
            self._demote(victims)
        else:
            self._worker.submit(RemoveJob(tier, victims))
        return True

    def _demote(self, keys: list[BlockHash]) -> None:
        """Move DDR blocks (already out of the DDR index) to flash, or drop them."""
        kept: list[BlockHash] = []
        dropped: list[BlockHash] = []
        for key in keys:
            if kept and not self._index[Tier.FLASH].has_room(self._block_size):
                # Making room may evict a block of this very batch from flash: submit its
                # demotion first, so the FIFO transfer thread removes what it wrote.
                self._worker.submit(DemoteJob(kept))
                kept = []
            if self._make_room(Tier.FLASH, self._block_size):
                self._index[Tier.FLASH].add(key, self._block_size)
                kept.append(key)
            else:
                dropped.append(key)
        if kept:
            self._worker.submit(DemoteJob(kept))
        if dropped:
            self._worker.submit(RemoveJob(Tier.DDR, dropped))

    def _fall_through(self, job: StoreJob) -> None:
        """A tier refused or failed a spill: write the blocks one tier down instead."""
        for block_hash in job.keys:
            self._index[job.tier].remove(block_hash)
        if job.tier is not Tier.DDR or Tier.FLASH not in self._index:
            return
        rows: list[int] = []  # of the job's staging copy (the HBM slots may hold others now)
        for i, block_hash in enumerate(job.keys):
            if block_hash in self._index[Tier.FLASH]:
                continue
            if rows and not self._index[Tier.FLASH].has_room(self._block_size):
                self._worker.submit(job.take(Tier.FLASH, rows))  # FIFO: see _store_blocks
                rows = []
            if self._make_room(Tier.FLASH, self._block_size):
                self._index[Tier.FLASH].add(block_hash, self._block_size)
                rows.append(i)
        if rows:
            logger.info("DDR refused %d blocks; writing them to flash", len(rows))
            self._worker.submit(job.take(Tier.FLASH, rows))
