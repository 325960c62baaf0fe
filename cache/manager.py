"""The UCM-style cache manager: one view over HBM, DDR (Redis) and flash (LMDB).

The manager holds the placement policy; the tiers only store bytes. It answers "how much
of this prompt is cached, and where", reserves HBM for the blocks that must come up from
a lower tier, and moves blocks down as HBM and DDR fill up:

    HBM --evict (write-back spill)--> DDR --demote--> flash --delete

Lower tiers are inclusive: reloading a block into HBM keeps its DDR/flash copy, so a
later HBM eviction of it costs no write.

Admission is two calls: `match` (pure: no statistics, no LRU touches, no spills) and
`admit`, which does everything a request needs (references, touches, allocation, load
submission, statistics) or nothing at all.

Moving blocks down (spills, demotion, making room, `offload`, the shutdown `write_back`)
is `cache.spill`'s `SpillPath`, and P/D's hand-over `cache.pool_handoff`'s, both mixed in.

Threading: engine thread only; I/O and spill encoding run on the `TransferWorker` (a
spill's engine part is one gather of its slots, see `SpillPath._submit_store`). Finished
transfers are applied in one place (`_apply_results`); loads wait in the `LoadBook`
until `poll()` hands them over, so no path (not even the blocking `offload()`) can lose
one. A load running at its deadline (`reload_timeout_s`) is abandoned there and handed
over with what arrived.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter

import numpy as np

from cache.accounting import (
    account_result,
    drop_restarted,
    refresh_occupancy,
    register_loaded,
)
from cache.block_format import encoded_size
from cache.block_hash import BlockHash
from cache.events import BlocksRemoved, BlocksStored, EventCallback, ignore_event
from cache.hbm_pool import HbmBlockPool
from cache.health import TierHealth
from cache.index_rebuild import rebuild_index
from cache.layout import KVLayout
from cache.load_deadlines import LoadDeadlines
from cache.loads import LoadBook
from cache.policies.admission import make_admission_policy
from cache.pool_handoff import PoolHandoff
from cache.records import Admission, CacheConfig, FinishedLoad, PrefixHit
from cache.stats import CacheStats, Tier
from cache.tier_index import TierIndex
from cache.tiers.base import StorageTier, TierError
from cache.transfer import TransferCharge, TransferWorker
from cache.transfer_jobs import DemoteJob, LoadJob, LoadStatus, StoreJob

logger = logging.getLogger(__name__)


class CacheManager(PoolHandoff):
    """Placement across HBM, DDR and flash for one model layout."""

    _owns_ddr = True  # False: DDR is a shared pool (cache.pooled_manager), not ours alone

    def __init__(
        self,
        layout: KVLayout,
        config: CacheConfig,
        ddr: StorageTier | None = None,
        flash: StorageTier | None = None,
        notify: Callable[[], None] = lambda: None,
        on_event: EventCallback = ignore_event,
        charge: TransferCharge | None = None,
    ) -> None:
        """`on_event` hears every block entering or leaving a tier (HBM: the prefix cache;
        DDR, flash: the index), on the engine thread: it must not block (cache.events).
        `charge` is handed to the transfer lanes (see `TransferWorker`)."""
        self.layout = layout
        self._on_event = on_event
        self.config = config
        self.pool = HbmBlockPool(layout, config.hbm_num_blocks, config.eviction_policy)
        self.stats = CacheStats()
        self._block_size = encoded_size(layout.block_shape, layout.np_dtype)
        self._stores: dict[Tier, StorageTier] = {}
        self._index: dict[Tier, TierIndex] = {}
        for tier, store, capacity in (
            (Tier.DDR, ddr, config.ddr_capacity_bytes),
            (Tier.FLASH, flash, config.flash_capacity_bytes),
        ):
            if store is not None and capacity >= self._block_size:
                self._stores[tier] = store
                self._index[tier] = TierIndex(
                    capacity, config.eviction_policy, functools.partial(self._index_changed, tier)
                )
        lower_blocks = sum(i.capacity_bytes for i in self._index.values()) // self._block_size
        self._admission = make_admission_policy(
            config.admission_policy, max(lower_blocks, config.hbm_num_blocks)
        )
        self.health: dict[Tier, TierHealth] = {t: TierHealth() for t in (Tier.DDR, Tier.FLASH)}
        self._notify = notify
        self._worker = TransferWorker(
            self._stores,
            layout,
            self.pool.block_decoder(),
            notify,
            lambda t: self.health[t].is_down,
            charge,
        )
        self._loads = LoadBook()  # from submission until poll() hands them over
        self._deadlines = LoadDeadlines(config.reload_timeout_s, notify)
        self._rebuild_indexes()

    @property
    def kv(self) -> np.ndarray:
        """The HBM KV pool the executor attends over."""
        return self.pool.kv

    # -- lookup and admission ------------------------------------------------------------

    def match(self, hashes: Sequence[BlockHash], max_blocks: int) -> PrefixHit:
        """Longest run of leading `hashes` (at most `max_blocks`) cached in any tier.

        Free of side effects (no statistics, no LRU touches): call it as often as needed.
        """
        hbm: list[int] = []
        cached = self.pool.cached_block
        for block_hash in hashes[:max_blocks]:
            block_id = cached(block_hash)
            if block_id is None:
                break
            hbm.append(block_id)
        lower: list[tuple[BlockHash, Tier]] = []
        indexes = list(self._index.items())  # a plain loop per block: this runs per step
        for block_hash in hashes[len(hbm) : max_blocks]:
            for tier, index in indexes:
                if block_hash in index:
                    lower.append((block_hash, tier))
                    break
            else:
                break
        return PrefixHit(hbm, lower)

    def can_admit(self, hit: PrefixHit, num_new_blocks: int) -> bool:
        """Whether `admit` of `hit` and `num_new_blocks` more blocks would succeed now."""
        needed = len(hit.lower) + num_new_blocks
        return self.pool.can_allocate_after_acquiring(hit.hbm_block_ids, needed)

    def admit(
        self,
        hit: PrefixHit,
        key: str,
        num_query_tokens: int,
        num_query_blocks: int,
        num_new_blocks: int = 0,
        num_head_blocks: int = 0,
    ) -> Admission | None:
        """Take `hit` (from `match`, with nothing changed since) plus `num_new_blocks`;
        `num_head_blocks` fresh blocks go between the HBM hits and `hit.lower` (which then
        starts that much later): the caller computes them while `hit.lower` loads. All or
        nothing: references the HBM hits, reserves slots for the lower-tier blocks and
        starts reloading them (reported by `poll` under `key`), allocates the fresh blocks
        and counts the query (`num_query_blocks`: the `max_blocks` it was matched with;
        lower-tier hits count when they arrive intact), or changes nothing at all."""
        if not self.can_admit(hit, num_head_blocks + num_new_blocks):
            return None
        allocation = self._take(hit, key, num_new_blocks, False, num_head_blocks)
        self.stats.query_tokens += num_query_tokens
        hbm_hashes = [self.pool.block_hash(b) for b in hit.hbm_block_ids]
        self._record_accesses([h for h in hbm_hashes if h is not None])
        self._record_accesses(h for h, _ in hit.lower)  # lazy: "always" records nothing
        self._write_through(hit.hbm_block_ids)
        prefetched = self._loads.take_prefetched(key)  # each counts as a hit of its source
        for tier in (prefetched.get(h, Tier.HBM) if h else Tier.HBM for h in hbm_hashes):
            self.stats.hit_tokens[tier] += self.layout.block_size
            self.stats.tiers[tier].hit_blocks += 1
        if hit.num_blocks < num_query_blocks:  # the chain ended: every tier missed a block
            for tier in (Tier.HBM, *self._index):
                self.stats.tiers[tier].miss_blocks += 1
        return Admission(hit.hbm_block_ids + allocation, len(hit.hbm_block_ids), len(hit.lower))

    def note_request(self, hashes: Sequence[BlockHash]) -> None:
        """A new (not resumed) request's prompt chain, for `prefix-aware` eviction."""
        self.pool.note_request(hashes)
        for index in self._index.values():
            index.note_request(hashes)

    def prefetch(self, hit: PrefixHit, key: str) -> Admission | None:
        """`admit` minus the query and fresh blocks, for a queued request. The caller holds
        the blocks; once `poll` reports `key` it `free`s all but the HBM hits and the first
        `num_loaded_blocks` slots (a later `match` finds them in HBM), and after `admit`
        hands them back (`release_prefetch`); landed blocks count as hits of their tier."""
        if not hit.lower or not self.can_admit(hit, 0):
            return None
        slots = self._take(hit, key, 0, True)
        return Admission(hit.hbm_block_ids + slots, len(hit.hbm_block_ids), len(slots))

    def release_prefetch(self, key: str, block_ids: Sequence[int]) -> None:
        """Hand back a landed prefetch's hold (the blocks stay cached)."""
        self._loads.take_prefetched(key)
        self.pool.free(block_ids)

    @property
    def num_loads_in_flight(self) -> int:
        """Loads submitted (prefetches included), not cancelled, not yet handed over by
        `poll`."""
        return self._loads.num_in_flight

    def cancel_load(self, key: str, block_ids: Sequence[int]) -> None:
        """Give up on the load under `key`; `block_ids` are all its admission's blocks. The
        caller lets go of the request now; the blocks stay referenced until the load lands
        (the lane writes into them), then its intact blocks stay cached for others and every
        block is freed. Nothing is reported for `key`."""
        self.pool.free(self._loads.cancel(key, block_ids))

    def commit(self, block_ids: Sequence[int], hashes: Sequence[BlockHash]) -> None:
        """Register computed full blocks so later requests can reuse them."""
        stored = self.pool.register_many(block_ids, hashes)
        if stored:
            self._on_event(BlocksStored(Tier.HBM, tuple(stored)))
        self._record_accesses(hashes)

    def free(self, block_ids: Sequence[int]) -> None:
        """Release a request's blocks (in sequence order); cached ones stay reusable."""
        chain = [h for b in block_ids if (h := self.pool.block_hash(b)) is not None]
        for index in self._index.values():  # the pool notes its own
            index.note_chain(chain)
        self.pool.free(block_ids)

    # -- completion ----------------------------------------------------------------------

    def poll(self) -> list[FinishedLoad]:
        """Apply finished transfers; hand over every load finished since the last poll
        (the only way finished loads leave the manager). Never blocks."""
        self._apply_results()
        return self._loads.hand_over()

    def snapshot_stats(self) -> CacheStats:
        """A consistent copy of the counters, occupancy as of now (for other threads)."""
        self._refresh_occupancy()
        return self.stats.snapshot()

    def wait_transfers(self, timeout: float | None = None) -> bool:
        """Block until all submitted transfers finished (tests, offload, shutdown)."""
        return self._worker.wait_idle(timeout)

    def close(self) -> None:
        """Finish pending transfers and close the lower tiers."""
        self._deadlines.cancel_all()
        self._worker.close()
        for store in self._stores.values():
            try:
                store.close()
            except TierError:
                logger.warning("closing %s tier failed", store.name, exc_info=True)

    # -- internals -----------------------------------------------------------------------

    def _take(
        self, hit: PrefixHit, key: str, num_new_blocks: int, is_prefetch: bool, head: int = 0
    ) -> list[int]:
        """References `hit`'s HBM blocks, allocates `head` blocks, slots for its lower-tier
        blocks and `num_new_blocks`, and starts loading the lower-tier blocks under `key`."""
        self.pool.acquire_cached(hit.hbm_block_ids)
        # Blocks about to be loaded are in use: make them the most recent in their tier
        # (deepest first, so parents stay more recent than children) before allocating,
        # whose spills may evict from that tier.
        for tier, index in self._index.items():
            index.touch_many([h for h, t in reversed(hit.lower) if t is tier])
        allocation = self.allocate(head + len(hit.lower) + num_new_blocks)
        if allocation is None:  # can_admit said it fits; the pool disagrees
            raise RuntimeError("HBM pool refused an allocation can_admit allowed")
        if hit.lower:
            ticket = self._loads.start(key, is_prefetch=is_prefetch)
            slots = allocation[head : head + len(hit.lower)]
            items = [(h, b, t) for (h, t), b in zip(hit.lower, slots, strict=True)]
            self._submit_load(ticket, items, urgent=not is_prefetch)
        return allocation

    def allocate(self, num_blocks: int) -> list[int] | None:
        """`num_blocks` fresh HBM blocks (spilling evicted cached blocks), or None."""
        allocation = self.pool.allocate(num_blocks)
        if allocation is None:
            return None
        if allocation.evicted:
            self._spill(allocation.evicted)
        return allocation.block_ids

    def _record_accesses(self, hashes: Iterable[BlockHash]) -> None:
        self._admission.record_accesses(hashes)

    def _apply_results(self) -> None:
        """Apply every finished transfer to the index, pool and statistics (one place),
        then abandon loads past their deadline."""
        drop_restarted(self.health, self._index)
        for result in self._worker.poll():
            account_result(self.stats, self.health, self._stores, result)
            job = result.job
            if isinstance(job, LoadJob):
                if not self._deadlines.finish(job.ticket):
                    continue  # abandoned at its deadline, and handed over then
                statuses = result.statuses or [LoadStatus.IO_ERROR] * len(job.items)
                self._land(job.ticket, job.items, statuses, True)
            elif isinstance(job, StoreJob) and result.error:
                self._fall_through(job)
            elif isinstance(job, DemoteJob):
                statuses = result.statuses or [LoadStatus.IO_ERROR] * len(job.keys)
                for block_hash, status in zip(job.keys, statuses, strict=True):
                    if status is not LoadStatus.OK:
                        self._index[Tier.FLASH].remove(block_hash)
                    if status is LoadStatus.MISSING:  # DDR had lost it behind our back
                        self.stats.tiers[Tier.DDR].index_repairs += 1
        self._expire_loads()
        self._refresh_occupancy()

    def _land(
        self,
        ticket: int,
        items: list[tuple[BlockHash, int, Tier]],
        statuses: list[LoadStatus],
        completed: bool,
    ) -> None:
        """A load is over (finished or abandoned): register what arrived intact, hand the
        load over, or free a cancelled one."""
        count = not self._loads.is_prefetch(ticket)
        num_ok = register_loaded(
            items,
            statuses,
            completed,
            count,
            self.pool,
            self._index,
            self.stats,
            submit=self._worker.submit,
            on_event=self._on_event,
        )
        self.pool.free(self._loads.land(ticket, items[:num_ok]))

    def _submit_load(
        self, ticket: int, items: list[tuple[BlockHash, int, Tier]], urgent: bool
    ) -> None:
        # From a tier the supervisor reports down, the load would only wait for its
        # deadline: abandon it at once (the request recomputes).
        down = any(self.health[t].is_down for t in set(map(itemgetter(2), items)))
        guard = self._deadlines.add(ticket, items, now=down)
        self._worker.submit(LoadJob(ticket, items, guard, urgent))

    def _expire_loads(self) -> None:
        """Abandon loads past their deadline (what did not arrive is recomputed); after
        `expire()` no byte of them reaches HBM (LoadGuard), so their slots are free to go."""
        for ticket, items, statuses in self._deadlines.expire():
            late = {
                t for (_, _, t), s in zip(items, statuses, strict=True) if s is not LoadStatus.OK
            }
            prefetch = self._loads.is_prefetch(ticket)  # late behind urgent loads: no tier fault
            for tier in () if prefetch else late:
                self.stats.tiers[tier].reload_timeouts += 1
                self.health[tier].record_error("reload abandoned (deadline, or tier down)")
            logger.log(
                logging.INFO if prefetch else logging.WARNING,
                "load %d abandoned at its deadline (%s slow); recomputing",
                ticket,
                ", ".join(sorted(late)),
            )
            self._land(ticket, items, statuses, False)

    def _refresh_occupancy(self) -> None:
        refresh_occupancy(self.stats, self.pool, self._index, self.health, self._stores)

    def _index_changed(self, tier: Tier, block_hash: BlockHash, added: bool) -> None:
        event = BlocksStored if added else BlocksRemoved
        self._on_event(event(tier, (block_hash,)))

    def _rebuild_indexes(self) -> None:
        """Adopt blocks a lower tier already holds (flash survives restarts)."""
        for tier, store in self._stores.items():
            if tier is Tier.DDR and not self._owns_ddr:
                continue  # the pool's follower reads its index
            args = (self._block_size, self.stats.tiers[tier], self.health[tier])
            rebuild_index(tier, store, self._index[tier], *args, self._worker.submit)
            # The bulk rebuild reports nothing per key: announce what start-up found once,
            # so a KV-event subscriber's index includes it.
            if self._on_event is not ignore_event and len(self._index[tier]):
                self._on_event(BlocksStored(tier, tuple(self._index[tier])))
        self._refresh_occupancy()
