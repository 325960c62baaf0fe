"""Decode contexts widened across steps (`npu_sim.wide_context`) never change a bit: each
step's logits and KV bytes equal those of a model that widens from scratch, also when the
pool's bytes change behind the model's back, sequences come and go, or the cache is full."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import ModelConfig
from npu_sim.wide_context import WideContext
from tests.npu_sim.pools import BLOCK_SIZE

CONTEXT = 70  # 4.4 blocks: a partly filled last block


@pytest.fixture(scope="module")
def uncached(tiny_config: ModelConfig) -> Model:
    return Model(tiny_config, wide_context_bytes=0)


def _prefilled(
    model: Model, num_seqs: int, seed: int = 0, block_size: int = BLOCK_SIZE
) -> tuple[np.ndarray, list[list[int]]]:
    """A pool with `num_seqs` sequences of CONTEXT tokens, room for 128 tokens each."""
    per_seq = 128 // block_size
    pool = np.zeros(
        model.kv_pool_shape(per_seq * (num_seqs + 1), block_size), dtype=model.config.kv_dtype
    )
    rng = np.random.default_rng(seed)
    tables = [list(range(per_seq * s, per_seq * (s + 1))) for s in range(num_seqs)]
    for table in tables:
        model.forward([SeqChunk(rng.integers(0, 256, CONTEXT).tolist(), 0, table, False)], pool)
    return pool, tables


def _same_step(cached: Model, uncached: Model, pool: np.ndarray, batch: Sequence[SeqChunk]) -> None:
    """One step on `pool` (cached model) and a copy (uncached): same logits, same pool."""
    reference_pool = pool.copy()
    expected = uncached.forward(batch, reference_pool)
    got = cached.forward(batch, pool)
    assert got.tobytes() == expected.tobytes()
    assert pool.tobytes() == reference_pool.tobytes()


def _decodes(tables: Sequence[list[int]], pos: int, which: Sequence[int]) -> list[SeqChunk]:
    return [SeqChunk([65 + s], pos, tables[s]) for s in which]


def test_a_block_rewritten_behind_the_model_is_widened_again(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    cached = Model(tiny_config)
    pool, tables = _prefilled(cached, 3)
    for step in range(3):  # warm: every block widened and kept
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, [0, 1, 2]))
    # A reload lands other bytes in a full block of sequence 0 (here: sequence 2's).
    pool[tables[0][1]] = pool[tables[2][1]]
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + 3, [0, 1, 2]))
    # One changed bit (the smallest K step of one element) is seen too.
    pool[tables[1][0], 2, 0, 5, 1, 7] += np.float16(2.0**-24)
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + 4, [0, 1, 2]))


def test_sequences_that_come_go_and_share_a_first_block_match(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    cached = Model(tiny_config)
    pool, tables = _prefilled(cached, 5, seed=1)
    # Sequence 4 shares sequence 3's first block (a common prefix).
    tables[4][0] = tables[3][0]
    pool[tables[4][1:]] = pool[tables[3][1:]]
    schedule = [[0, 1, 2], [0, 2], [3, 0, 4, 2], [1, 4, 3], [4, 3, 2, 1, 0]]
    for step, which in enumerate(schedule):
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, which))


def test_a_full_cache_bounds_its_bytes_and_the_rest_falls_back(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    per_row = 8 * BLOCK_SIZE * 2 * 64 * (2 * 2 + 4 + 8) * tiny_config.num_layers
    cached = Model(tiny_config, wide_context_bytes=2 * per_row)
    pool, tables = _prefilled(cached, 4, seed=2)
    for step in range(3):
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, [0, 1, 2, 3]))
    wide = cached._wide  # noqa: SLF001 - the bound is the point of this test
    assert 0 < wide.num_bytes <= 2 * per_row
    # Contexts grow past what even one row can hold: every sequence falls back.
    tight = Model(tiny_config, wide_context_bytes=per_row * 5 // 8)
    for step in range(BLOCK_SIZE + 1):
        _same_step(tight, uncached, pool, _decodes(tables, CONTEXT + step, [0, 1, 2, 3]))
    assert tight._wide.num_bytes <= per_row * 5 // 8  # noqa: SLF001


def test_a_pool_of_another_block_size_starts_the_cache_over(
    tiny_config: ModelConfig, uncached: Model
) -> None:
    cached = Model(tiny_config)
    pool, tables = _prefilled(cached, 2)
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT, [0, 1]))
    pool, tables = _prefilled(cached, 2, block_size=8)
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT, [0, 1]))
    _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + 1, [1, 0]))


def test_a_float32_pool_matches_too(tiny_config: ModelConfig) -> None:
    config = replace(tiny_config, kv_dtype="float32")
    cached, uncached = Model(config), Model(config, wide_context_bytes=0)
    pool, tables = _prefilled(cached, 3)
    for step in range(3):
        _same_step(cached, uncached, pool, _decodes(tables, CONTEXT + step, [2, 0, 1]))


def test_a_full_cache_grows_its_columns_in_steps_not_every_block(model: Model) -> None:
    pool = np.zeros(model.kv_pool_shape(8, BLOCK_SIZE), dtype=np.float16)
    per_cell = BLOCK_SIZE * 2 * 32 * (2 * 2 + 4 + 8) * 4  # one block of one row, all layers
    wide = WideContext(4, 2 * 32 * per_cell)  # room for 2 rows of 32 blocks
    keys = ["a", "b", "c", "d"]
    assert wide.assign_rows(keys, 17, pool) == [0, 1, None, None]
    assert wide.num_block_columns() == 32 and wide.num_bytes == 2 * 32 * per_cell
    slab = wide._slabs[0]  # noqa: SLF001 - whether it was reallocated is the point
    for num_blocks in range(18, 33):  # contexts grow: same arrays, same rows
        assert wide.assign_rows(keys, num_blocks, pool) == [0, 1, None, None]
        assert wide._slabs[0] is slab  # noqa: SLF001
    wide.assign_rows(keys, 33, pool)  # past the columns: rows give way to 48 columns
    assert wide.num_block_columns() == 48 and wide.num_bytes <= 2 * 32 * per_cell


def test_negative_budget_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        WideContext(2, -1)
