"""CacheManager against a real Redis and a real LMDB: bytes go down and come back intact."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cache.block_format import encoded_size
from cache.block_hash import BlockHash, hash_full_blocks, root_hash
from cache.embedded_redis import EmbeddedRedis
from cache.layout import KVLayout
from cache.manager import CacheConfig, CacheManager
from cache.stats import Tier
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.redis_tier import RedisTier, connect_redis

LAYOUT = KVLayout("test-model", num_layers=2, num_kv_heads=2, head_dim=8, block_size=4)
BLOCK = encoded_size(LAYOUT.block_shape, LAYOUT.np_dtype)


def chain(n: int, seed: int = 0) -> list[BlockHash]:
    tokens = list(np.random.default_rng(seed).integers(0, 256, n * LAYOUT.block_size))
    return hash_full_blocks(tokens, LAYOUT.block_size, root_hash("test-model", 1))


def make_manager(
    redis_url: str | None, flash_path: Path | None, hbm: int, ddr_blocks: int, flash_blocks: int
) -> CacheManager:
    ddr = RedisTier(connect_redis(redis_url), f"t-{uuid.uuid4().hex}") if redis_url else None
    flash = LmdbTier(flash_path, 64 << 20, LAYOUT.namespace) if flash_path else None
    config = CacheConfig(hbm, ddr_blocks * BLOCK, flash_blocks * BLOCK)
    return CacheManager(LAYOUT, config, ddr=ddr, flash=flash)


@pytest.fixture
def manager_factory(redis_url: str, tmp_path: Path) -> Iterator:
    made: list[CacheManager] = []

    def make(hbm: int = 4, ddr_blocks: int = 64, flash_blocks: int = 64) -> CacheManager:
        m = make_manager(redis_url, tmp_path / "flash", hbm, ddr_blocks, flash_blocks)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def fill_and_cache(m: CacheManager, hashes: list[BlockHash], seed: int = 1) -> dict:
    """Compute (random) KV for `hashes` in HBM, register and free them; return the bytes."""
    rng = np.random.default_rng(seed)
    ids = m.allocate(len(hashes))
    assert ids is not None
    data = {}
    for block_id, h in zip(ids, hashes, strict=True):
        values = rng.standard_normal(LAYOUT.block_shape).astype(LAYOUT.np_dtype)
        m.pool.write_blocks([block_id], values[None])
        data[h] = m.kv[block_id].copy()
    m.commit(ids, hashes)
    m.free(ids)
    return data


def reload(m: CacheManager, hashes: list[BlockHash]) -> tuple[list[int], int]:
    hit = m.match(hashes, len(hashes))
    admission = m.admit(hit, "r", len(hashes) * LAYOUT.block_size, len(hashes))
    assert admission is not None
    loaded = admission.num_hbm_blocks
    if admission.is_loading:
        m.wait_transfers()
        (done,) = m.poll()
        assert done.key == "r"
        loaded += done.num_loaded_blocks
    return admission.block_ids, loaded


def push_out_of_hbm(m: CacheManager) -> None:
    ids = m.allocate(m.pool.num_blocks)  # evicts every cached block
    assert ids is not None
    m.free(ids)
    m.wait_transfers()
    m.poll()


def test_hbm_eviction_spills_to_ddr_and_reload_is_byte_identical(manager_factory):
    m = manager_factory(hbm=4)
    hashes = chain(4)
    data = fill_and_cache(m, hashes)
    push_out_of_hbm(m)
    hit = m.match(hashes, 4)
    assert hit.hbm_block_ids == [] and [t for _, t in hit.lower] == [Tier.DDR] * 4

    ids, loaded = reload(m, hashes)
    assert loaded == 4
    for block_id, h in zip(ids, hashes, strict=True):
        assert m.kv[block_id].tobytes() == data[h].tobytes()
    assert m.stats.hit_tokens[Tier.DDR] == 4 * LAYOUT.block_size
    assert m.stats.tiers[Tier.DDR].read_bytes == 4 * BLOCK
    # Reloaded blocks are HBM-cached again: a second lookup is an HBM hit.
    m.free(ids)
    assert len(m.match(hashes, 4).hbm_block_ids) == 4


def test_ddr_over_capacity_demotes_to_flash_and_everything_reloads(manager_factory):
    m = manager_factory(hbm=4, ddr_blocks=2, flash_blocks=16)
    hashes = chain(4)
    data = fill_and_cache(m, hashes)
    push_out_of_hbm(m)
    tiers = [t for _, t in m.match(hashes, 4).lower]
    assert tiers.count(Tier.DDR) == 2 and tiers.count(Tier.FLASH) == 2
    # Children are evicted before parents: the root block stays in the faster tier.
    assert tiers[0] is Tier.DDR
    assert m.stats.tiers[Tier.DDR].evictions == 2

    ids, loaded = reload(m, hashes)
    assert loaded == 4
    assert all(m.kv[b].tobytes() == data[h].tobytes() for b, h in zip(ids, hashes, strict=True))
    assert m.stats.hit_tokens[Tier.FLASH] == 2 * LAYOUT.block_size


def test_offload_moves_hbm_to_ddr_and_ddr_to_flash(manager_factory):
    m = manager_factory(hbm=8)
    hashes = chain(3)
    data = fill_and_cache(m, hashes)
    assert m.offload(Tier.HBM) == 3
    assert [t for _, t in m.match(hashes, 3).lower] == [Tier.DDR] * 3
    assert m.offload(Tier.DDR) == 3
    assert [t for _, t in m.match(hashes, 3).lower] == [Tier.FLASH] * 3
    ids, loaded = reload(m, hashes)
    assert loaded == 3
    assert all(m.kv[b].tobytes() == data[h].tobytes() for b, h in zip(ids, hashes, strict=True))


def test_corrupt_ddr_block_cuts_the_prefix_and_is_dropped(manager_factory):
    m = manager_factory(hbm=4)
    hashes = chain(3)
    fill_and_cache(m, hashes)
    m.offload(Tier.HBM)
    ddr = m._stores[Tier.DDR]
    payload = bytearray(ddr.get(hashes[1]))
    payload[-1] ^= 0xFF  # flip one payload bit
    ddr.put(hashes[1], bytes(payload))

    _, loaded = reload(m, hashes)
    assert loaded == 1  # block 0 fine, block 1 corrupt: the prefix ends there
    assert m.stats.tiers[Tier.DDR].checksum_failures == 1
    m.wait_transfers()
    assert not ddr.contains(hashes[1])  # never served again
    assert len(m.match(hashes, 3).lower) <= 1


def test_flash_blocks_survive_a_restart(redis_url, tmp_path):
    hashes = chain(3)
    first = make_manager(redis_url, tmp_path / "flash", hbm=4, ddr_blocks=8, flash_blocks=8)
    data = fill_and_cache(first, hashes)
    first.offload(Tier.HBM)
    first.offload(Tier.DDR)
    first.close()

    second = make_manager(None, tmp_path / "flash", hbm=4, ddr_blocks=0, flash_blocks=8)
    try:
        hit = second.match(hashes, 3)
        assert [t for _, t in hit.lower] == [Tier.FLASH] * 3
        ids, loaded = reload(second, hashes)
        assert loaded == 3
        assert all(
            second.kv[b].tobytes() == data[h].tobytes() for b, h in zip(ids, hashes, strict=True)
        )
    finally:
        second.close()


def test_dead_redis_degrades_to_recompute(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    m = make_manager(server.url, None, hbm=4, ddr_blocks=16, flash_blocks=0)
    try:
        hashes = chain(2)
        fill_and_cache(m, hashes)
        m.offload(Tier.HBM)
        server.stop()
        _, loaded = reload(m, hashes)
        assert loaded == 0
        assert m.stats.tiers[Tier.DDR].io_errors == 1
        assert m.match(hashes, 2).num_blocks == 0  # index repaired
        # Spilling to a dead Redis fails quietly and leaves no stale index entries.
        fill_and_cache(m, chain(2, seed=5))
        m.offload(Tier.HBM)
        assert m.match(chain(2, seed=5), 2).num_blocks == 0
    finally:
        m.close()
        server.stop()


def test_reloaded_chain_keeps_children_evicted_before_parents(manager_factory):
    m = manager_factory(hbm=8, ddr_blocks=8, flash_blocks=0)
    hashes = chain(4)
    fill_and_cache(m, hashes)
    m.offload(Tier.HBM)
    _, loaded = reload(m, hashes)  # touches the chain in DDR
    assert loaded == 4
    # DDR's eviction order after the reload: deepest block first, root last.
    assert list(m._index[Tier.DDR]) == hashes[::-1]


def test_a_prefix_being_loaded_is_not_evicted_by_the_spills_its_own_slots_cause(manager_factory):
    m = manager_factory(hbm=4, ddr_blocks=4, flash_blocks=0)
    wanted = chain(2)
    fill_and_cache(m, wanted)
    m.offload(Tier.HBM)  # DDR: wanted (LRU end)
    fill_and_cache(m, chain(2, seed=4), seed=2)
    m.offload(Tier.HBM)  # DDR full: wanted are the oldest, next to go
    fill_and_cache(m, chain(4, seed=5), seed=3)  # HBM full of cached blocks
    # Reloading `wanted` needs 2 HBM slots: that evicts 2 cached blocks, whose spill
    # needs 2 DDR slots. The victims must not be the blocks being loaded.
    _, loaded = reload(m, wanted)
    assert loaded == 2


def test_a_valid_block_under_the_wrong_key_is_rejected(manager_factory):
    m = manager_factory(hbm=4)
    hashes = chain(2)
    fill_and_cache(m, hashes)
    m.offload(Tier.HBM)
    ddr = m._stores[Tier.DDR]
    ddr.put(hashes[1], ddr.get(hashes[0]))  # block 0's intact bytes under block 1's key
    _, loaded = reload(m, hashes)
    assert loaded == 1
    assert m.stats.tiers[Tier.DDR].checksum_failures == 1


def test_demoting_into_a_full_flash_leaves_no_untracked_blocks(manager_factory):
    m = manager_factory(hbm=8, ddr_blocks=8, flash_blocks=2)
    hashes = chain(5)
    fill_and_cache(m, hashes)
    m.offload(Tier.HBM)
    m.offload(Tier.DDR)  # 5 blocks into a 2-block flash: 3 must go, none may leak
    stored = {key for key, _ in m._stores[Tier.FLASH].scan()}
    assert stored == set(m._index[Tier.FLASH])
    assert len(stored) == 2


def test_offload_during_a_reload_keeps_the_finished_load_for_poll(manager_factory):
    # Issue #7 defect 1: offload() applied finished transfers itself and dropped the
    # loads among them, so their requests waited in LOADING_KV forever.
    m = manager_factory(hbm=8)
    hashes = chain(3)
    fill_and_cache(m, hashes)
    m.offload(Tier.HBM)
    admission = m.admit(m.match(hashes, 3), "r1", 3 * LAYOUT.block_size, 3)
    assert admission is not None and admission.num_loading_blocks == 3
    m.offload(Tier.HBM)  # waits for every transfer, the load included
    (done,) = m.poll()
    assert (done.key, done.num_loaded_blocks) == ("r1", 3)
    assert m.poll() == []  # handed over once
    m.free(admission.block_ids)
    assert m.pool.num_active_blocks == 0


def test_admit_that_does_not_fit_changes_nothing(manager_factory):
    m = manager_factory(hbm=4)
    hashes = chain(3)
    fill_and_cache(m, hashes)  # 3 cached-free HBM blocks, 1 free
    hit = m.match(hashes, 3)
    assert len(hit.hbm_block_ids) == 3
    before = (m.stats.snapshot(), m.pool.num_free_blocks, list(m.pool._evictable))
    # The hit takes its 3 blocks out of the reclaimable ones: 2 more do not fit.
    assert m.admit(hit, "r", 4 * LAYOUT.block_size, 3, num_new_blocks=2) is None
    after = (m.stats.snapshot(), m.pool.num_free_blocks, list(m.pool._evictable))
    assert after == before
    admission = m.admit(hit, "r", 4 * LAYOUT.block_size, 3, num_new_blocks=1)
    assert admission is not None and len(admission.block_ids) == 4
    assert m.stats.query_tokens == 4 * LAYOUT.block_size
    assert m.stats.hit_tokens[Tier.HBM] == 3 * LAYOUT.block_size


def test_cancelled_load_frees_its_blocks_when_it_lands(manager_factory):
    m = manager_factory(hbm=8)
    hashes = chain(3)
    fill_and_cache(m, hashes)
    m.offload(Tier.HBM)
    free_at_start = m.pool.num_free_blocks
    admission = m.admit(m.match(hashes, 3), "r1", 3 * LAYOUT.block_size, 3, num_new_blocks=1)
    assert admission is not None and admission.is_loading
    m.cancel_load("r1", admission.block_ids)
    m.wait_transfers()
    assert m.poll() == []  # nothing to report: the request is gone
    assert m.pool.num_active_blocks == 0
    assert m.pool.num_free_blocks == free_at_start
    # What arrived intact is cached for the next request.
    assert len(m.match(hashes, 3).hbm_block_ids) == 3


def test_cancelling_a_load_that_landed_during_an_offload_frees_its_blocks(manager_factory):
    m = manager_factory(hbm=8)
    hashes = chain(3)
    fill_and_cache(m, hashes)
    m.offload(Tier.HBM)
    admission = m.admit(m.match(hashes, 3), "r1", 3 * LAYOUT.block_size, 3)
    assert admission is not None and admission.is_loading
    m.offload(Tier.HBM)  # the load lands and waits for poll()
    m.cancel_load("r1", admission.block_ids)
    assert m.poll() == []
    assert m.pool.num_active_blocks == 0


def make_with_admission(redis_url: str, tmp_path: Path, admission: str) -> CacheManager:
    ddr = RedisTier(connect_redis(redis_url), f"t-{uuid.uuid4().hex}")
    config = CacheConfig(4, 64 * BLOCK, 0, admission_policy=admission)
    return CacheManager(LAYOUT, config, ddr=ddr)


def test_second_hit_admission_spills_only_blocks_asked_for_twice(redis_url, tmp_path):
    m = make_with_admission(redis_url, tmp_path, "second-hit")
    try:
        once, twice = chain(2, seed=1), chain(2, seed=2)
        fill_and_cache(m, twice)
        assert reload(m, twice)[1] == 2  # second request for the same blocks: HBM hit
        m.free(m.match(twice, 2).hbm_block_ids)
        fill_and_cache(m, once)
        push_out_of_hbm(m)
        assert m.match(once, 2).num_blocks == 0
        assert [t for _, t in m.match(twice, 2).lower] == [Tier.DDR, Tier.DDR]
        assert m.stats.tiers[Tier.DDR].admission_rejects == 2
    finally:
        m.close()


def test_write_through_selective_stores_a_block_hit_twice_while_in_hbm(redis_url, tmp_path):
    m = make_with_admission(redis_url, tmp_path, "write-through-selective")
    try:
        hashes = chain(2, seed=3)
        fill_and_cache(m, hashes)
        for _ in range(2):
            ids, loaded = reload(m, hashes)
            assert loaded == 2
            m.free(ids)
        m.wait_transfers()
        m.poll()
        hit = m.match(hashes, 2)
        assert len(hit.hbm_block_ids) == 2  # still in HBM ...
        assert all(h in m._index[Tier.DDR] for h in hashes)  # ... and already in DDR
    finally:
        m.close()


def test_restart_keeps_the_flash_eviction_order(tmp_path):
    old, new = chain(3, seed=4), chain(3, seed=5)
    written = [*sorted(old, reverse=True), *new]  # write order is not key order
    with LmdbTier(tmp_path / "flash", 64 << 20, LAYOUT.namespace) as flash:
        for h in written:
            flash.put(h, b"\0" * BLOCK)
    m = make_manager(None, tmp_path / "flash", hbm=4, ddr_blocks=0, flash_blocks=4)
    try:
        # 6 blocks for 4 places: the 2 least recently written go at start-up, and the
        # rest keep their write order as eviction order
        assert list(m._index[Tier.FLASH]) == written[2:]
    finally:
        m.close()


def test_write_through_skips_a_ddr_marked_down(redis_url, tmp_path):
    """Like spills, write-through goes to flash while the supervisor has DDR down."""
    ddr = RedisTier(connect_redis(redis_url), f"t-{uuid.uuid4().hex}")
    flash = LmdbTier(tmp_path / "flash", 64 << 20, LAYOUT.namespace)
    config = CacheConfig(4, 64 * BLOCK, 64 * BLOCK, admission_policy="write-through-selective")
    m = CacheManager(LAYOUT, config, ddr=ddr, flash=flash)
    try:
        m.health[Tier.DDR].mark_down("test: DDR down")
        hashes = chain(2, seed=6)
        fill_and_cache(m, hashes)
        for _ in range(2):
            ids, _ = reload(m, hashes)
            m.free(ids)
        m.wait_transfers()
        m.poll()
        assert all(h in m._index[Tier.FLASH] for h in hashes)
        assert not any(h in m._index[Tier.DDR] for h in hashes)
        assert m.stats.tiers[Tier.DDR].write_bytes == 0
    finally:
        m.close()


def test_a_reload_bumps_the_generation_of_every_slot_it_fills(manager_factory):
    """The model trusts a widened block while its generation holds: a reload on a lane
    writes the slots through the pool's counting decoder, so their generations move."""
    m = manager_factory(hbm=4)
    hashes = chain(4)
    fill_and_cache(m, hashes)
    push_out_of_hbm(m)
    before = m.pool.generation.copy()
    ids, loaded = reload(m, hashes)
    assert loaded == 4
    assert (m.pool.generation[ids] > before[ids]).all()
