"""CacheManager under failing tiers (issue 7): every failure counted, deadlines kept,
nothing written into HBM after a load was abandoned. Real Redis processes, real LMDB."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from cache.embedded_redis import EmbeddedRedis
from cache.manager import CacheConfig, CacheManager
from cache.stats import Tier, TierOp
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.redis_tier import RedisTier, connect_redis
from tests.cache.test_manager import BLOCK, LAYOUT, chain, fill_and_cache, reload


def manager(
    redis_url: str | None,
    flash: Path | None,
    *,
    hbm: int = 4,
    ddr_blocks: int = 16,
    flash_blocks: int = 16,
    reload_timeout_s: float = 0.0,
) -> CacheManager:
    ddr = RedisTier(connect_redis(redis_url, socket_timeout=30), "rel") if redis_url else None
    store = LmdbTier(flash, 64 << 20, LAYOUT.namespace) if flash else None
    config = CacheConfig(
        hbm, ddr_blocks * BLOCK, flash_blocks * BLOCK, reload_timeout_s=reload_timeout_s
    )
    return CacheManager(LAYOUT, config, ddr=ddr, flash=store)


def poll_until(m: CacheManager, timeout_s: float = 10.0) -> list:
    """Poll the manager (as the engine does) until a load is reported."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done := m.poll():
            return done
        time.sleep(0.005)  # poll interval
    raise AssertionError("no load finished in time")


def test_a_stalled_redis_load_is_abandoned_at_its_deadline_and_never_writes_later(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    m = manager(server.url, None, reload_timeout_s=0.2)
    try:
        hashes = chain(3)
        fill_and_cache(m, hashes)
        m.offload(Tier.HBM)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            hit = m.match(hashes, 3)
            acquired = m.admit(hit, "slow", 3 * LAYOUT.block_size, 3)
            assert acquired is not None and acquired.is_loading
            (done,) = poll_until(m)
            assert done.key == "slow" and done.num_loaded_blocks == 0
            # The request now recomputes into its slots.
            sevens = np.full((len(acquired.block_ids), *m.kv.shape[1:]), 7, dtype=m.kv.dtype)
            m.pool.write_blocks(acquired.block_ids, sevens)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert m.wait_transfers(timeout=30)
        assert m.poll() == []  # the late result is not reported twice
        assert all((m.kv[b] == 7).all() for b in acquired.block_ids)  # and wrote nothing
        assert m.stats.tiers[Tier.DDR].reload_timeouts == 1
        assert m.stats.tiers[Tier.DDR].health == "degraded"
        # The blocks were slow, not gone: they are still indexed and reload later.
        m.free(acquired.block_ids)
        _, loaded = reload(m, hashes)
        assert loaded == 3
    finally:
        m.close()
        server.stop()


def test_every_failed_operation_is_counted_by_tier_and_operation(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    m = manager(server.url, None, ddr_blocks=2)
    try:
        fill_and_cache(m, chain(2))
        m.offload(Tier.HBM)
        server.stop()
        fill_and_cache(m, chain(2, seed=3))
        m.offload(Tier.HBM)  # spill: DDR is full, so it also removes (DDR has no flash)
        ops = m.stats.tiers[Tier.DDR].io_errors_by_op
        assert ops[TierOp.STORE] >= 1 and ops[TierOp.REMOVE] >= 1
        _, loaded = reload(m, chain(2, seed=3))
        assert loaded == 0
        assert m.stats.tiers[Tier.DDR].io_errors == sum(ops.values()) >= 2
    finally:
        m.close()
        server.stop()


def test_spills_a_dead_redis_refuses_fall_through_to_flash(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    m = manager(server.url, tmp_path / "flash")
    try:
        server.stop()
        hashes = chain(3)
        data = fill_and_cache(m, hashes)
        m.offload(Tier.HBM)  # the DDR write fails; the blocks must land in flash
        m.wait_transfers()
        m.poll()
        assert [t for _, t in m.match(hashes, 3).lower] == [Tier.FLASH] * 3
        ids, loaded = reload(m, hashes)
        assert loaded == 3
        assert all(m.kv[b].tobytes() == data[h].tobytes() for b, h in zip(ids, hashes, strict=True))
        assert m.stats.tiers[Tier.DDR].io_errors_by_op[TierOp.STORE] == 1
    finally:
        m.close()
        server.stop()


def test_a_block_redis_lost_behind_the_index_is_counted_as_a_repair(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    m = manager(server.url, None)
    try:
        hashes = chain(2)
        fill_and_cache(m, hashes)
        m.offload(Tier.HBM)
        m._stores[Tier.DDR].remove(hashes[1])  # as an allkeys-lru Redis would
        _, loaded = reload(m, hashes)
        assert loaded == 1
        assert m.stats.tiers[Tier.DDR].index_repairs == 1
    finally:
        m.close()
        server.stop()


def test_wrong_sized_flash_entries_are_counted_and_deleted_at_start_up(tmp_path):
    with LmdbTier(tmp_path / "flash", 64 << 20, LAYOUT.namespace) as store:
        store.put(chain(1)[0], b"x" * (BLOCK - 1))
        store.put(chain(1, seed=2)[0], np.zeros(BLOCK, np.uint8).tobytes())
    m = manager(None, tmp_path / "flash")
    try:
        m.wait_transfers()
        assert m.stats.tiers[Tier.FLASH].wrong_size_blocks == 1
        assert len(m._index[Tier.FLASH]) == 1
        assert [k for k, _ in m._stores[Tier.FLASH].scan()] == [chain(1, seed=2)[0]]
    finally:
        m.close()


def test_a_restarted_volatile_redis_empties_the_ddr_index(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    m = manager(server.url, None)
    try:
        hashes = chain(2)
        fill_and_cache(m, hashes)
        m.offload(Tier.HBM)
        assert len(m._index[Tier.DDR]) == 2
        m.health[Tier.DDR].mark_down("redis-server exited")
        m.poll()
        assert m.stats.tiers[Tier.DDR].health == "down"
        m.health[Tier.DDR].mark_up(restarted=True)
        m.poll()
        assert len(m._index[Tier.DDR]) == 0
        assert m.stats.tiers[Tier.DDR].health == "ok"
    finally:
        m.close()
        server.stop()


def test_a_stalled_redis_does_not_hold_up_flash_loads(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    m = manager(server.url, tmp_path / "flash", hbm=8)
    try:
        in_flash, in_ddr = chain(2), chain(2, seed=9)
        data = fill_and_cache(m, in_flash)
        m.offload(Tier.HBM)
        m.offload(Tier.DDR)
        fill_and_cache(m, in_ddr, seed=2)
        m.offload(Tier.HBM)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            stuck = m.admit(m.match(in_ddr, 2), "stuck", 2 * LAYOUT.block_size, 2)
            assert stuck is not None and stuck.is_loading
            fast = m.admit(m.match(in_flash, 2), "fast", 2 * LAYOUT.block_size, 2)
            assert fast is not None and fast.is_loading
            (done,) = poll_until(m, timeout_s=5)  # the flash load, while DDR hangs
            assert done.key == "fast" and done.num_loaded_blocks == 2
            assert all(
                m.kv[b].tobytes() == data[h].tobytes()
                for b, h in zip(fast.block_ids, in_flash, strict=True)
            )
        finally:
            os.kill(server.pid, signal.SIGCONT)
        (late,) = poll_until(m)
        assert late.key == "stuck" and late.num_loaded_blocks == 2
    finally:
        m.close()
        server.stop()


def test_a_load_from_a_tier_reported_down_is_abandoned_at_once(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    m = manager(server.url, None, reload_timeout_s=60)
    try:
        hashes = chain(2)
        fill_and_cache(m, hashes)
        m.offload(Tier.HBM)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            m.health[Tier.DDR].mark_down("probe failed")
            acquired = m.admit(m.match(hashes, 2), "down", 2 * LAYOUT.block_size, 2)
            assert acquired is not None and acquired.is_loading
            (done,) = poll_until(m, timeout_s=5)  # not the 60 s deadline
            assert done.key == "down" and done.num_loaded_blocks == 0
        finally:
            os.kill(server.pid, signal.SIGCONT)
    finally:
        m.close()
        server.stop()


def test_spills_a_full_redis_refuses_fall_through_to_flash(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 1).start()  # maxmemory ~1 byte: every SET is OOM
    m = manager(server.url, tmp_path / "flash")
    try:
        hashes = chain(3)
        data = fill_and_cache(m, hashes)
        m.offload(Tier.HBM)
        m.wait_transfers()
        m.poll()
        assert [t for _, t in m.match(hashes, 3).lower] == [Tier.FLASH] * 3
        ids, loaded = reload(m, hashes)
        assert loaded == 3
        assert all(m.kv[b].tobytes() == data[h].tobytes() for b, h in zip(ids, hashes, strict=True))
        assert m.stats.tiers[Tier.DDR].io_errors_by_op[TierOp.STORE] == 1
    finally:
        m.close()
        server.stop()


def test_a_cancelled_load_stuck_on_redis_frees_its_blocks_at_the_deadline(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    m = manager(server.url, None, reload_timeout_s=0.2)
    try:
        hashes = chain(2)
        fill_and_cache(m, hashes)
        m.offload(Tier.HBM)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            admission = m.admit(m.match(hashes, 2), "gone", 2 * LAYOUT.block_size, 2)
            assert admission is not None and admission.is_loading
            m.cancel_load("gone", admission.block_ids)  # the client went away
            deadline = time.monotonic() + 10
            while m.pool.num_active_blocks:  # freed once the load is abandoned
                assert m.poll() == []  # nothing is reported for a cancelled load
                assert time.monotonic() < deadline, "blocks of the cancelled load leaked"
                time.sleep(0.005)  # poll interval
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert m.wait_transfers(timeout=30)
        assert m.poll() == [] and m.pool.num_active_blocks == 0
    finally:
        m.close()
        server.stop()
