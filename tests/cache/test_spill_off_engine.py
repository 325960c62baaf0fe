"""Spill encoding runs on the transfer lanes, not the engine thread (issue #10 item 2).

The engine thread's share of a spill is one gather of the evicted slots into a staging
copy; the lane adds headers and checksums and writes. Real Redis and LMDB.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from cache.block_hash import BlockHash
from cache.layout import KVLayout
from cache.manager import CacheConfig, CacheManager
from cache.stats import Tier
from cache.tiers.faulty import FaultSpec, FaultyTier
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.redis_tier import RedisTier, connect_redis
from tests.cache.test_manager import BLOCK, LAYOUT, chain, fill_and_cache, reload
from tests.cache.test_manager_reliability import poll_until


class EncodingCalls:
    """Records, per thread name, the calls into cache/block_format.py and into xxhash
    (headers and checksums) while `recording`."""

    def __init__(self) -> None:
        self.recording = False
        self.by_thread: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.recording:
            return
        name = None
        if event == "call" and frame.f_code.co_filename.endswith("block_format.py"):
            name = frame.f_code.co_name
        elif event == "c_call" and "xxh" in repr(arg):
            name = repr(arg)
        if name is not None:
            with self._lock:
                self.by_thread.setdefault(threading.current_thread().name, []).append(name)

    def __enter__(self) -> EncodingCalls:
        threading.setprofile(self.profile)  # threads started from now on (the lanes)
        sys.setprofile(self.profile)  # this thread: the engine thread of the test
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        self.recording = False


def make(redis_url: str | None, flash: Path | None, hbm: int = 8, ddr: Any = None) -> CacheManager:
    if ddr is None and redis_url is not None:
        ddr = RedisTier(connect_redis(redis_url), f"t-{uuid.uuid4().hex}")
    store = LmdbTier(flash, 64 << 20, LAYOUT.namespace) if flash else None
    return CacheManager(LAYOUT, CacheConfig(hbm, 64 * BLOCK, 64 * BLOCK), ddr=ddr, flash=store)


def hold_lane(m: CacheManager, tier: Tier) -> threading.Event:
    """Block `tier`'s transfer lane until the returned event is set."""
    gate = threading.Event()
    m._worker._lanes[tier].put(gate.wait)
    return gate


def spill_behind_held_lane(
    m: CacheManager, n: int
) -> tuple[list[BlockHash], dict, threading.Event]:
    """Cache `n` fresh blocks, hold the DDR lane, then evict them all (their spill waits
    behind the gate) and have the engine compute into the reused slots at once and free
    them: (hashes, their bytes, the gate)."""
    hashes = chain(n)
    data = fill_and_cache(m, hashes)
    gate = hold_lane(m, Tier.DDR)
    ids = m.allocate(n)
    assert ids is not None
    m.pool.write_blocks(ids, np.zeros((len(ids), *m.kv.shape[1:]), dtype=m.kv.dtype))
    m.free(ids)
    return hashes, data, gate


def assert_same_bytes(
    m: CacheManager, block_ids: list[int], hashes: list[BlockHash], data: dict
) -> None:
    """Each of `block_ids` holds the bytes `data` has for the matching hash."""
    for block_id, h in zip(block_ids, hashes, strict=True):
        assert m.kv[block_id].tobytes() == data[h].tobytes()


def test_the_engine_thread_neither_checksums_nor_encodes_spilled_blocks(
    redis_url: str, tmp_path: Path
) -> None:
    """Failed before the change: `encode_block` (header + xxh3 checksum + a copy per
    block) ran on the engine thread for every spilled block."""
    with EncodingCalls() as calls:
        m = make(redis_url, tmp_path / "flash")
        try:
            hashes = chain(8)
            data = fill_and_cache(m, hashes)
            calls.recording = True
            ids = m.allocate(8)  # evicts and spills all 8
            assert ids is not None
            m.wait_transfers()
            m.poll()
            calls.recording = False
            m.free(ids)
            engine = threading.current_thread().name
            gather = {"gather_blocks", "<listcomp>"}  # the engine's part: the gather alone
            assert [c for c in calls.by_thread.get(engine, []) if c not in gather] == []
            lane = calls.by_thread.get("tierkv-transfer-ddr", [])
            assert any("xxh" in c for c in lane)  # the lane did the checksums
            ids, loaded = reload(m, hashes)
            assert loaded == 8
            assert_same_bytes(m, ids, hashes, data)
        finally:
            m.close()


def test_a_load_queued_behind_its_blocks_spill_gets_the_bytes_of_the_evicted_slots(
    redis_url: str, tmp_path: Path
) -> None:
    """The spill's staging copy is taken at eviction: the engine reusing the slots
    before the lane encodes them changes nothing, and the load, queued behind the spill
    of its own blocks, reads the whole spilled blocks."""
    m = make(redis_url, tmp_path / "flash", hbm=4)
    try:
        hashes, data, gate = spill_behind_held_lane(m, 4)
        hit = m.match(hashes, 4)
        assert [t for _, t in hit.lower] == [Tier.DDR] * 4
        admission = m.admit(hit, "r", 16, 4)
        assert admission is not None and admission.is_loading
        gate.set()
        (done,) = poll_until(m)
        assert done.num_loaded_blocks == 4
        assert_same_bytes(m, admission.block_ids, hashes, data)
    finally:
        m.close()


def test_ddr_failing_while_a_spill_is_in_flight_degrades_to_recompute_then_flash(
    redis_url: str, tmp_path: Path
) -> None:
    """DDR fails the queued spill and the load queued behind it: the load reports no
    block (recompute), the spill falls through to flash, whose reload is exact."""
    ddr = FaultyTier(RedisTier(connect_redis(redis_url), f"t-{uuid.uuid4().hex}"), FaultSpec())
    m = make(None, tmp_path / "flash", hbm=4, ddr=ddr)
    try:
        hashes, data, gate = spill_behind_held_lane(m, 4)
        admission = m.admit(m.match(hashes, 4), "r", 16, 4)
        assert admission is not None and admission.is_loading
        ddr.spec = FaultSpec(down=True)
        gate.set()
        (done,) = poll_until(m)
        assert done.num_loaded_blocks == 0  # recomputed, never half-written bytes
        m.free(admission.block_ids)
        m.wait_transfers()
        m.poll()
        ddr.spec = FaultSpec()
        assert [t for _, t in m.match(hashes, 4).lower] == [Tier.FLASH] * 4
        ids, loaded = reload(m, hashes)
        assert loaded == 4
        assert_same_bytes(m, ids, hashes, data)
    finally:
        m.close()


def test_a_load_still_passes_queued_spills_of_other_blocks(redis_url: str, tmp_path: Path) -> None:
    """The priority lanes see a spill's keys (now `StoreJob.keys`): an urgent load of
    other blocks runs before the queued spill, whose encoding is its own lane work."""
    m = make(redis_url, tmp_path / "flash", hbm=8)
    try:
        old = chain(4, seed=7)
        fill_and_cache(m, old)
        m.offload(Tier.HBM)  # `old` is in DDR only
        fresh = chain(8, seed=8)
        fill_and_cache(m, fresh)  # fills HBM: the load's slots will evict and spill these
        finished: list[str] = []
        post = m._worker._post

        def record(result: Any) -> None:
            finished.append(type(result.job).__name__)
            post(result)

        m._worker._post = record  # type: ignore[method-assign]
        gate = hold_lane(m, Tier.DDR)
        admission = m.admit(m.match(old, 4), "r", 16, 4)  # spills 4 fresh blocks first
        assert admission is not None and admission.is_loading
        gate.set()
        (done,) = poll_until(m)
        assert done.num_loaded_blocks == 4
        m.wait_transfers()
        assert finished == ["LoadJob", "StoreJob"]
    finally:
        m.close()


def test_the_engine_threads_spill_gather_never_lets_go_of_the_gil(
    redis_url: str, tmp_path: Path
) -> None:
    """Failed with `np.take` as the gather: numpy releases the GIL for copies of 32 KiB
    blocks, and a thread busy in Python then kept the engine thread waiting up to a
    switch interval per spill job. A counting thread makes no progress while the engine
    thread holds the GIL (forced switches are 0.2 s apart here, the spill takes far
    less)."""
    big = KVLayout("test-big", num_layers=32, num_kv_heads=8, head_dim=2, block_size=16)
    ddr = RedisTier(connect_redis(redis_url), f"t-{uuid.uuid4().hex}")
    m = CacheManager(big, CacheConfig(16, 1 << 30), ddr=ddr)
    stop = threading.Event()
    count = [0]

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    interval = sys.getswitchinterval()
    try:
        ids = m.allocate(16)
        assert ids is not None
        m.commit(ids, [BlockHash(uuid.uuid4().bytes) for _ in ids])
        m.free(ids)
        sys.setswitchinterval(0.2)
        spinner = threading.Thread(target=spin)
        spinner.start()
        while count[0] == 0:  # the spinner runs (it holds the GIL for a switch interval)
            time.sleep(0.001)
        before = count[0]
        ids = m.allocate(16)  # evicts all 16: one gather of 16 x 32 KiB
        progress = count[0] - before
        assert ids is not None and m.stats.tiers[Tier.HBM].evictions == 16
        assert progress == 0
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        m.close()
