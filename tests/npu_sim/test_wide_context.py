"""Decode contexts widened across steps (`npu_sim.wide_context`) never change a bit: each
step's logits and KV bytes equal those of a model that widens from scratch, also when the
pool's bytes are rewritten by its owner between steps, sequences come and go, or the cache
is full; and a write that does not go through the owner raises."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from npu_sim.kv_pool import KVBlockPool
from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import ModelConfig
from npu_sim.wide_context import WideContext
from tests.npu_sim.pools import BLOCK_SIZE, count_widened_blocks

CONTEXT = 70  # 4.4 blocks: a partly filled last block


@pytest.fixture(scope="module")
def uncached(tiny_config: ModelConfig) -> Model:
    return Model(tiny_config, wide_context_bytes=0)


def _cached(config: ModelConfig, **kwargs: int) -> Model:
    """A model keeping contexts, checking them against the pool's bytes every step."""
    return Model(config, verify_wide_context=True, **kwargs)


def _prefilled(
    model: Model, num_seqs: int, seed: int = 0, block_size: int = BLOCK_SIZE
) -> tuple[KVBlockPool, list[list[int]]]:
    """A pool with `num_seqs` sequences of CONTEXT tokens, room for 128 tokens each."""
    per_seq = 128 // block_size
    pool = KVBlockPool(
        model.kv_pool_shape(per_seq * (num_seqs + 1), block_size), model.config.kv_dtype
    )
    rng = np.random.default_rng(seed)
    tables = [list(range(per_seq * s, per_seq * (s + 1))) for s in range(num_seqs)]
    for table in tables:
        model.forward([SeqChunk(rng.integers(0, 256, CONTEXT).tolist(), 0, table, False)], pool)
    return pool, tables


def _same_step(
    cached: Model, uncached: Model, pool: KVBlockPool, batch: Sequence[SeqChunk]
) -> None:
    """One step on `pool` (cached model) and a copy (uncached): same logits, same pool."""
    reference_pool = pool.kv.copy()
    expected = uncached.forward(batch, reference_pool)
    got = cached.forward(batch, pool)
    assert got.tobytes() == expected.tobytes()
    assert pool.kv.tobytes() == reference_pool.tobytes()


def _decodes(tables: Sequence[list[int]], pos: int, which: Sequence[int]) -> list[SeqChunk]:
    return [SeqChunk([65 + s], pos, tables[s]) for s in which]


def test_a_block_rewritten_behind_the_model_is_widened_again(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    cached = _cached(tiny_config)
    pool, tables = _prefilled(cached, 3)
    for step in range(3):  # warm: every block widened and kept
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, [0, 1, 2]))
    # A reload lands other bytes in a full block of sequence 0 (here: sequence 2's).
    pool.write_blocks(np.array([tables[0][1]]), pool.kv[[tables[2][1]]])
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + 3, [0, 1, 2]))
    # One changed bit (the smallest K step of one element) is seen too.
    block = pool.kv[[tables[1][0]]].copy()
    block[0, 2, 0, 5, 1, 7] += np.float16(2.0**-24)
    pool.write_blocks(np.array([tables[1][0]]), block)
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + 4, [0, 1, 2]))


def test_a_token_written_by_another_model_is_seen(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    """Two models on one pool (the server has none: each vNPU partition builds its own
    pool): each one's token writes bump the generation, so the other re-widens."""
    cached, other = _cached(tiny_config), Model(tiny_config)
    pool, tables = _prefilled(cached, 2)
    for step in range(2):
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, [0, 1]))
    # The other model rewrites sequence 0's last two tokens (a recompute after a failed
    # reload, say), with other token ids.
    other.forward([SeqChunk([7, 8], CONTEXT, tables[0], False)], pool)
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + 2, [0, 1]))


def test_a_write_past_the_owner_raises(tiny_config: ModelConfig) -> None:
    """The bytes everyone else sees are read-only: a write that would not bump the
    generation fails loudly instead of leaving a stale widened copy in use."""
    pool, _ = _prefilled(Model(tiny_config), 1)
    with pytest.raises(ValueError, match="read-only"):
        pool.kv[0, 0, 0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        pool.generation[0] = 0
    with pytest.raises(ValueError, match="read-only"):
        np.copyto(pool.kv[1], 0)
    for view in (pool.kv, pool.generation):  # nor can a reader make them writable
        with pytest.raises(ValueError):
            view.flags.writeable = True


def test_a_missed_bump_is_caught_by_the_debug_check(tiny_config: ModelConfig) -> None:
    """`verify_wide_context` compares with the pool's bytes: a write that bypassed the
    generation (only possible inside the owner) raises instead of giving wrong tokens."""
    cached = _cached(tiny_config)
    pool, tables = _prefilled(cached, 1)
    cached.forward(_decodes(tables, CONTEXT, [0]), pool)
    pool._kv[tables[0][0], 1] += np.float16(1.0)  # noqa: SLF001 - the owner's bytes, no bump
    with pytest.raises(RuntimeError, match="differs from the pool"):
        cached.forward(_decodes(tables, CONTEXT + 1, [0]), pool)


def test_a_bare_array_pool_keeps_nothing(tiny_config: ModelConfig, uncached: Model) -> None:
    """A pool without generations can be written by anyone: nothing is kept across steps."""
    cached = _cached(tiny_config)
    pool = np.zeros(cached.kv_pool_shape(16, BLOCK_SIZE), dtype=np.float16)
    table = list(range(8))
    cached.forward([SeqChunk(list(range(CONTEXT)), 0, table, False)], pool)
    reference = pool.copy()
    for step in range(2):
        got = cached.forward(_decodes([table], CONTEXT + step, [0]), pool)
        assert (
            got.tobytes()
            == uncached.forward(_decodes([table], CONTEXT + step, [0]), reference).tobytes()
        )
        pool[table[0]] = pool[table[1]]  # behind the model's back
        reference[table[0]] = reference[table[1]]
    assert cached._wide.num_bytes == 0  # noqa: SLF001


def test_sequences_that_come_go_and_share_a_first_block_match(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    cached = _cached(tiny_config)
    pool, tables = _prefilled(cached, 5, seed=1)
    # Sequence 4 shares sequence 3's first block (a common prefix).
    tables[4][0] = tables[3][0]
    pool.write_blocks(np.array(tables[4][1:]), pool.kv[tables[3][1:]])
    schedule = [[0, 1, 2], [0, 2], [3, 0, 4, 2], [1, 4, 3], [4, 3, 2, 1, 0]]
    for step, which in enumerate(schedule):
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, which))


def test_a_full_cache_bounds_its_bytes_and_the_rest_falls_back(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    per_row = 8 * (BLOCK_SIZE * 2 * 64 * (4 + 8) + 16) * tiny_config.num_layers
    cached = _cached(tiny_config, wide_context_bytes=2 * per_row)
    pool, tables = _prefilled(cached, 4, seed=2)
    for step in range(3):
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, [0, 1, 2, 3]))
    wide = cached._wide  # noqa: SLF001 - the bound is the point of this test
    assert 0 < wide.num_bytes <= 2 * per_row
    # Contexts grow past what even one row can hold: every sequence falls back.
    tight = _cached(tiny_config, wide_context_bytes=per_row * 5 // 8)
    for step in range(BLOCK_SIZE + 1):
        _same_step(tight, uncached, pool, _decodes(tables, CONTEXT + step, [0, 1, 2, 3]))
    assert tight._wide.num_bytes <= per_row * 5 // 8  # noqa: SLF001


def test_a_pool_of_another_block_size_starts_the_cache_over(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    cached = _cached(tiny_config)
    pool, tables = _prefilled(cached, 2)
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT, [0, 1]))
    pool, tables = _prefilled(cached, 2, block_size=8)
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT, [0, 1]))
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + 1, [1, 0]))


def test_a_float32_pool_matches_too(tiny_config: ModelConfig) -> None:
    config = replace(tiny_config, kv_dtype="float32")
    cached, uncached = _cached(config), Model(config, wide_context_bytes=0)
    pool, tables = _prefilled(cached, 3)
    for step in range(3):
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, [2, 0, 1]))


def test_a_full_cache_grows_its_columns_in_steps_not_every_block(model: Model) -> None:
    pool = KVBlockPool(model.kv_pool_shape(8, BLOCK_SIZE), np.float16)
    per_cell = (BLOCK_SIZE * 2 * 32 * (4 + 8) + 24) * 4  # one block of one row, all layers
    wide = WideContext(4, 2 * 32 * per_cell)  # room for 2 rows of 32 blocks
    keys = ["a", "b", "c", "d"]
    kv, generation = pool.kv, pool.generation
    assert wide.assign_rows(keys, 17, kv, generation) == [0, 1, None, None]
    assert wide.num_block_columns() == 32 and wide.num_bytes == 2 * 32 * per_cell
    slab = wide._slabs[0]  # noqa: SLF001 - whether it was reallocated is the point
    for num_blocks in range(18, 33):  # contexts grow: same arrays, same rows
        assert wide.assign_rows(keys, num_blocks, kv, generation) == [0, 1, None, None]
        assert wide._slabs[0] is slab  # noqa: SLF001
    wide.assign_rows(keys, 33, kv, generation)  # past the columns: rows give way to 48 columns
    assert wide.num_block_columns() == 48 and wide.num_bytes <= 2 * 32 * per_cell


def test_negative_budget_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        WideContext(2, -1)


def test_a_context_that_shrinks_in_a_kept_row_matches(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    """Decoding an earlier position again (the engine redoing a step) leaves tokens past
    the new context in the kept row: finite, weighted 0, so the bits do not change."""
    cached = _cached(tiny_config)
    pool, tables = _prefilled(cached, 2)
    for step in range(3):
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, [0, 1]))
    for step in (1, 0, 1, 2, 3):
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, [0, 1]))


def test_sequences_sharing_a_first_block_keep_their_rows_when_one_finishes(
    tiny_config: ModelConfig, uncached: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyed by `seq_key` (the executor's seq_id), a sequence keeps its widened context
    when another sequence sharing its first block (a common system prompt) leaves; keyed
    by first block and order, the survivors move rows and widen whole contexts again."""
    blocks_widened = count_widened_blocks(monkeypatch)
    for keys in (["a", "b", "c", "d"], [None] * 4):
        cached = _cached(tiny_config)
        pool, tables = _prefilled(cached, 4)
        for table in tables[1:]:
            table[0] = tables[0][0]  # one shared first block

        for i, which in enumerate([[0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3]]):
            if i == 2:  # sequence 0 finished
                blocks_widened.clear()
            batch = [SeqChunk([65 + s], CONTEXT + i, tables[s], seq_key=keys[s]) for s in which]
            _same_step(cached, uncached, pool, batch)
        if keys[0] is not None:
            assert blocks_widened == []
        else:
            assert sum(blocks_widened) > 0  # the old keying, for contrast


def test_two_chunks_with_one_seq_key_are_rejected(tiny_config: ModelConfig) -> None:
    model = _cached(tiny_config)
    pool, tables = _prefilled(model, 2)
    batch = [SeqChunk([65], CONTEXT, tables[s], seq_key="same") for s in range(2)]
    with pytest.raises(ValueError, match="seq_key"):
        model.forward(batch, pool)


def test_padding_columns_already_zero_are_not_zeroed_again(model: Model) -> None:
    """A short context next to a long one in a group: its padding columns are zeroed
    (and marked as holding no block) once, not on every step."""
    pool = KVBlockPool(model.kv_pool_shape(24, BLOCK_SIZE), np.float16)
    wide = WideContext(model.config.num_layers, 64 << 20)
    kv, generation = pool.kv, pool.generation
    table = np.zeros((2, 19), dtype=np.int64)
    table[0, :2] = [0, 1]  # 19 tokens: 2 blocks
    table[1] = np.arange(5, 24)  # 301 tokens: 19 blocks
    ctx = [19, 301]
    assert wide.assign_rows(["short", "long"], 19, kv, generation) == [0, 1]
    wide.gather(kv, generation, 0, 0, table, ctx)
    slab = wide._slabs[0]  # noqa: SLF001 - whether a column is written again is the point
    assert slab is not None and (slab.block[0, 2:19] == -1).all()
    slab.v_wide[0, :, 10] = 1.0  # a sentinel in a padding column already zeroed
    _, v = wide.gather(kv, generation, 0, 0, table, ctx)
    assert (slab.v_wide[0, :, 10] == 1.0).all()
    slab.v_wide[0, :, 10] = 0.0
    assert np.isfinite(v).all() and not v[0, :, 19:].any()


def test_a_decode_past_positions_its_kept_column_was_not_widened_for_matches(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    """Prefill 74 tokens, decode position 70 again, then position 74: positions 71-73
    are in the pool (SeqChunk's contract) but lay past the context the kept column was
    widened for, so a column is trusted only up to the offsets it was widened or
    patched for (reviewer's case)."""
    cached = _cached(tiny_config)
    pool = KVBlockPool(cached.kv_pool_shape(8, BLOCK_SIZE), tiny_config.kv_dtype)
    table = list(range(8))
    cached.forward([SeqChunk(list(range(65, 139)), 0, table, False)], pool)
    for pos, token in ((70, 66), (74, 67)):
        _same_step(cached, uncached, pool, [SeqChunk([token], pos, table, seq_key="s")])
