"""Every tier read and write is charged once, on its lane, with the bytes that moved.

The server hands `npu_sim.links.TransferClock.finish` in as the charge; here a recorder
checks what the lanes report, against a real Redis and a real LMDB.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from cache.manager import CacheConfig, CacheManager
from cache.stats import Tier
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.redis_tier import RedisTier, connect_redis
from tests.cache.test_manager import BLOCK, LAYOUT, chain, fill_and_cache, push_out_of_hbm, reload


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Tier, int, bool, str]] = []
        self._lock = threading.Lock()

    def __call__(self, tier: Tier, num_bytes: int, started: float, write: bool) -> None:
        with self._lock:
            self.calls.append((tier, num_bytes, write, threading.current_thread().name))

    def total(self, tier: Tier, write: bool) -> int:
        return sum(n for t, n, w, _ in self.calls if t is tier and w is write)


def test_spills_demotions_and_reloads_are_charged(redis_url: str, tmp_path: Path) -> None:
    charge = Recorder()
    ddr = RedisTier(connect_redis(redis_url), f"t-{uuid.uuid4().hex}")
    flash = LmdbTier(tmp_path / "flash", 64 << 20, LAYOUT.namespace)
    config = CacheConfig(4, 64 * BLOCK, 64 * BLOCK)
    m = CacheManager(LAYOUT, config, ddr=ddr, flash=flash, charge=charge)
    try:
        hashes = chain(3)
        fill_and_cache(m, hashes)
        push_out_of_hbm(m)  # spill 3 blocks to DDR
        assert charge.total(Tier.DDR, write=True) == 3 * BLOCK
        block_ids, loaded = reload(m, hashes)  # 3 blocks up from DDR
        assert loaded == 3 and charge.total(Tier.DDR, write=False) == 3 * BLOCK
        m.free(block_ids)
        m.offload(Tier.HBM)
        assert m.offload(Tier.DDR) == 3  # demotion: a DDR read and a flash write
        m.poll()
        assert charge.total(Tier.DDR, write=False) == 6 * BLOCK
        assert charge.total(Tier.FLASH, write=True) == 3 * BLOCK
        stats = m.snapshot_stats()
        for tier in (Tier.DDR, Tier.FLASH):  # charged bytes are the bytes that moved
            assert charge.total(tier, write=False) == stats.tiers[tier].read_bytes
            assert charge.total(tier, write=True) == stats.tiers[tier].write_bytes
        assert all(name.startswith("tierkv-") for *_, name in charge.calls)  # on the lanes
    finally:
        m.close()


def test_a_load_abandoned_before_its_modelled_arrival_is_not_counted_loaded(
    redis_url: str, tmp_path: Path
) -> None:
    """Bytes copied into HBM count as arrived only once the modelled link carried them:
    a load abandoned at its deadline while its lane waits out the link is recomputed."""
    from cache.transfer import TransferWorker
    from cache.transfer_jobs import LoadGuard, LoadJob, LoadStatus

    released = threading.Event()
    charged = threading.Event()

    def slow_link(tier: Tier, num_bytes: int, started: float, write: bool) -> None:
        if not write:
            charged.set()
            released.wait(10)

    ddr = RedisTier(connect_redis(redis_url), f"t-{uuid.uuid4().hex}")
    config = CacheConfig(4, 64 * BLOCK, 0)
    m = CacheManager(LAYOUT, config, ddr=ddr)
    try:
        hashes = chain(2)
        fill_and_cache(m, hashes)
        push_out_of_hbm(m)  # both blocks now in DDR
        worker = TransferWorker({Tier.DDR: ddr}, LAYOUT, m.pool.block_decoder(), charge=slow_link)
        guard = LoadGuard(2)
        worker.submit(LoadJob(1, [(h, i, Tier.DDR) for i, h in enumerate(hashes)], guard))
        assert charged.wait(10)  # copied into HBM, the lane is waiting out the link
        assert guard.abandon() == [LoadStatus.MISSING] * 2  # the deadline strikes
        released.set()
        assert worker.wait_idle(10)
        (result,) = worker.poll()
        assert result.statuses == [LoadStatus.MISSING] * 2  # recomputed, not served
        worker.close()
    finally:
        m.close()
