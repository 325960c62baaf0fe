"""register_loaded: what a finished load registers in HBM, counts and repairs."""

from __future__ import annotations

from cache.accounting import register_loaded
from cache.block_hash import BlockHash
from cache.events import BlocksStored, KVEvent
from cache.hbm_pool import HbmBlockPool
from cache.layout import KVLayout
from cache.stats import CacheStats, Tier
from cache.tier_index import TierIndex
from cache.transfer_jobs import Job, LoadStatus, RemoveJob

LAYOUT = KVLayout("m", num_layers=1, num_kv_heads=1, head_dim=4, block_size=2)
OK, CORRUPT, MISSING = LoadStatus.OK, LoadStatus.CORRUPT, LoadStatus.MISSING


def h(i: int) -> BlockHash:
    return BlockHash(i.to_bytes(16, "little"))


class Setup:
    """A pool with 6 reserved slots, DDR holding blocks 0, 2, 4 and flash 1, 3, 5."""

    def __init__(self) -> None:
        self.pool = HbmBlockPool(LAYOUT, 8)
        allocation = self.pool.allocate(6)
        assert allocation is not None
        self.slots = allocation.block_ids
        self.index = {Tier.DDR: TierIndex(1 << 20), Tier.FLASH: TierIndex(1 << 20)}
        for i in range(6):
            self.index[Tier.DDR if i % 2 == 0 else Tier.FLASH].add(h(i), 100)
        self.stats = CacheStats()
        self.jobs: list[Job] = []
        self.events: list[KVEvent] = []
        self.items = [
            (h(i), self.slots[i], Tier.DDR if i % 2 == 0 else Tier.FLASH) for i in range(6)
        ]

    def run(self, statuses: list[LoadStatus], completed: bool = True, count: bool = True) -> int:
        return register_loaded(
            self.items,
            statuses,
            completed,
            count,
            self.pool,
            self.index,
            self.stats,
            submit=self.jobs.append,
            on_event=self.events.append,
        )


def test_a_whole_load_from_two_tiers_counts_hits_per_tier_and_skips_a_block_hbm_has() -> None:
    s = Setup()
    other = s.pool.allocate(1)
    assert other is not None
    assert s.pool.register(other.block_ids[0], h(3))  # another request computed block 3
    assert s.run([OK] * 6) == 6
    assert s.stats.tiers[Tier.DDR].hit_blocks == 3
    assert s.stats.tiers[Tier.FLASH].hit_blocks == 3
    assert s.stats.hit_tokens[Tier.DDR] == s.stats.hit_tokens[Tier.FLASH] == 3 * 2
    assert s.events == [BlocksStored(Tier.HBM, (h(0), h(1), h(2), h(4), h(5)))]
    assert s.pool.block_hash(s.slots[3]) is None  # stays private: HBM has block 3 already
    assert [s.pool.block_hash(b) for b in s.slots[:3]] == [h(0), h(1), h(2)]
    assert s.jobs == []


def test_the_prefix_ends_at_the_first_bad_block_and_a_corrupt_one_leaves_its_tier() -> None:
    s = Setup()
    assert s.run([OK, OK, OK, CORRUPT, OK, OK]) == 3
    assert (s.stats.tiers[Tier.DDR].hit_blocks, s.stats.tiers[Tier.FLASH].hit_blocks) == (2, 1)
    assert s.stats.tiers[Tier.FLASH].miss_blocks == 1
    assert s.stats.tiers[Tier.FLASH].checksum_failures == 1
    assert h(3) not in s.index[Tier.FLASH] and h(4) in s.index[Tier.DDR]
    assert s.jobs == [RemoveJob(Tier.FLASH, [h(3)])]
    assert s.events == [BlocksStored(Tier.HBM, (h(0), h(1), h(2)))]
    assert s.pool.block_hash(s.slots[4]) is None  # recomputed into its slot, not registered


def test_a_missing_block_is_an_index_repair_and_an_abandoned_load_keeps_its_entry() -> None:
    s = Setup()
    assert s.run([OK, MISSING, OK, OK, OK, OK]) == 1
    assert s.stats.tiers[Tier.FLASH].index_repairs == 1 and h(1) not in s.index[Tier.FLASH]
    abandoned = Setup()
    assert abandoned.run([OK, OK, MISSING, MISSING, MISSING, MISSING], completed=False) == 2
    assert h(2) in abandoned.index[Tier.DDR]  # only slow, maybe: kept
    assert abandoned.stats.tiers[Tier.DDR].miss_blocks == 0


def test_a_prefetch_registers_its_blocks_but_counts_no_hits_yet() -> None:
    s = Setup()
    assert s.run([OK] * 6, count=False) == 6
    assert s.stats.tiers[Tier.DDR].hit_blocks == s.stats.tiers[Tier.FLASH].hit_blocks == 0
    assert len(s.events) == 1
