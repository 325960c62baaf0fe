"""HbmBlockPool: refcounts, prefix cache, all-or-nothing allocation, eviction order."""

from __future__ import annotations

import numpy as np
import pytest

from cache.block_format import encode_blocks
from cache.block_hash import BlockHash
from cache.hbm_pool import HbmBlockPool
from cache.layout import KVLayout

LAYOUT = KVLayout("m", num_layers=1, num_kv_heads=1, head_dim=4, block_size=2)


def h(i: int) -> BlockHash:
    return BlockHash(i.to_bytes(16, "little"))


def test_allocation_is_all_or_nothing():
    pool = HbmBlockPool(LAYOUT, 4)
    assert pool.allocate(5) is None
    assert pool.num_free_blocks == 4
    a = pool.allocate(4)
    assert a is not None and sorted(a.block_ids) == [0, 1, 2, 3] and a.evicted == []
    assert pool.allocate(1) is None


def test_cached_blocks_are_reused_until_evicted_and_eviction_reports_them():
    pool = HbmBlockPool(LAYOUT, 3)
    a = pool.allocate(3)
    for i, block_id in enumerate(a.block_ids):
        pool.register(block_id, h(i))
    pool.free(a.block_ids)
    assert pool.num_free_blocks == 3 and pool.num_cached_blocks == 3
    assert pool.count_cached_prefix([h(0), h(1), h(2), h(9)]) == 3

    pool.acquire_cached([pool.cached_block(h(0))])  # a prefix hit pins block 0
    b = pool.allocate(2)
    # Freed together, the leaf (h2) goes first, then h1; the pinned root survives.
    assert [bh for bh, _ in b.evicted] == [h(2), h(1)]
    assert pool.count_cached_prefix([h(0), h(1)]) == 1


def test_refcounts_and_double_free():
    pool = HbmBlockPool(LAYOUT, 2)
    a = pool.allocate(1)
    pool.register(a.block_ids[0], h(1))
    pool.acquire_cached(a.block_ids)  # second user
    pool.free(a.block_ids)
    assert pool.num_free_blocks == 1  # still held by the first user
    pool.free(a.block_ids)
    assert pool.num_free_blocks == 2
    with pytest.raises(ValueError):
        pool.free(a.block_ids)


def test_register_keeps_first_copy():
    pool = HbmBlockPool(LAYOUT, 2)
    a = pool.allocate(2)
    assert pool.register(a.block_ids[0], h(7))
    assert not pool.register(a.block_ids[1], h(7))
    assert pool.cached_block(h(7)) == a.block_ids[0]


def test_the_kv_bytes_are_read_only_and_every_write_method_bumps_the_generation():
    """Only the owner writes (so no write can miss a bump): `kv` raises on writes, and
    `write_tokens`, `write_blocks` and `block_decoder()` bump `generation[block, layer]`."""
    layout = KVLayout("m", num_layers=2, num_kv_heads=1, head_dim=4, block_size=2)
    pool = HbmBlockPool(layout, 4)
    with pytest.raises(ValueError, match="read-only"):
        pool.kv[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        pool.generation[0] += 1
    for view in (pool.kv, pool.generation):  # nor can a reader make them writable
        with pytest.raises(ValueError):
            view.flags.writeable = True
    assert pool.generation is pool.generation  # one object: readers may key on it
    pool.write_tokens(np.array([1, 2]), np.array([0, 1]), 1, np.ones((2, 2, 1, 4)))
    assert pool.generation.tolist() == [[0, 0], [0, 1], [0, 1], [0, 0]]
    assert (pool.kv[1, 1, :, 0] == 1).all() and (pool.kv[1, 1, :, 1] == 0).all()
    pool.write_tokens(np.array([3]), np.array([1]), None, np.full((1, 2, 2, 1, 4), 2))
    pool.write_blocks([0], np.full((1, *layout.block_shape), 3))
    assert pool.generation.tolist() == [[1, 1], [0, 1], [0, 1], [1, 1]]
    assert (pool.kv[0] == 3).all() and (pool.kv[3, :, :, 1] == 2).all()
    blocks = encode_blocks(pool.kv[[0]], [b"k"])
    decode = pool.block_decoder()
    assert decode([blocks[0], b"junk"], [b"k", b"k"], [2, 3]) == [True, False]
    assert (pool.kv[2] == 3).all()
    # Both slots asked for are bumped, the rejected one too (harmless: a re-widening).
    assert pool.generation.tolist() == [[1, 1], [0, 1], [1, 2], [2, 2]]
