"""Which kept row a new decode sequence takes (`WideContext.assign_rows`): the row of a
finished sequence (`release`) that holds its leading blocks, so a new request on a prefix
left in HBM (the same prompt again, a conversation's next turn) widens only what is new;
never the row of a live sequence that only sat out a step. Speed only: results are
checked against a model that widens from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from npu_sim.kv_pool import KVBlockPool
from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import ModelConfig
from npu_sim.wide_context import WideContext
from tests.npu_sim.pools import BLOCK_SIZE, count_widened_blocks

CONTEXT = 70  # 5 blocks of 16, the last partly filled


class _Run:
    """A cached model (checked bit for bit against one widening from scratch) over a
    counted pool with three prefilled sequences, tables 0, 1 and 2, and table 3: the
    first three blocks of table 1, then blocks of its own."""

    def __init__(self, config: ModelConfig) -> None:
        self.cached = Model(config, verify_wide_context=True)
        self.uncached = Model(config, wide_context_bytes=0)
        self.pool = KVBlockPool(self.cached.kv_pool_shape(32, BLOCK_SIZE), config.kv_dtype)
        self.tables = [list(range(8 * s, 8 * (s + 1))) for s in range(3)]
        self.tables.append(self.tables[1][:3] + list(range(24, 29)))
        rng = np.random.default_rng(0)
        for table in self.tables:
            prompt = rng.integers(0, 256, CONTEXT).tolist()
            self.cached.forward([SeqChunk(prompt, 0, table, False)], self.pool)

    def step(self, *decodes: tuple[str, int, int]) -> None:
        """One step of decodes (seq_key, table, position)."""
        batch = [SeqChunk([65], pos, self.tables[t], seq_key=key) for key, t, pos in decodes]
        reference = self.pool.kv.copy()
        expected = self.uncached.forward(batch, reference)
        assert self.cached.forward(batch, self.pool).tobytes() == expected.tobytes()
        assert self.pool.kv.tobytes() == reference.tobytes()


def test_a_new_sequence_takes_the_released_row_holding_its_prefix(
    tiny_config: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _Run(tiny_config)
    run.step(("a", 0, CONTEXT), ("c", 1, CONTEXT))  # two rows
    run.step(("a", 0, CONTEXT + 1))
    run.step(("c", 1, CONTEXT + 1))  # "a"'s row is now the least recently used
    run.cached.release(["c"])
    widened = count_widened_blocks(monkeypatch)
    # A new request "b" runs on c's blocks. Taking the least recently used row ("a"'s,
    # which holds none of them) would widen the whole context again.
    run.step(("b", 1, CONTEXT + 2))
    assert widened == []
    # A sequence whose blocks no released row holds takes the least recently used row.
    run.step(("d", 2, CONTEXT))
    assert sum(widened) == 2 * 5 * tiny_config.num_layers  # K and V of its 5 blocks


def test_a_live_sequence_that_sat_out_a_step_keeps_its_row(
    tiny_config: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: "c" (not finished, only skipped by the scheduler for a step)
    held b's blocks; b took its row and c widened its whole context again."""
    run = _Run(tiny_config)
    run.step(("a", 0, CONTEXT), ("c", 1, CONTEXT))
    run.step(("c", 1, CONTEXT + 1))  # "a" finished: its row is the least recently used
    run.cached.release(["a"])
    widened = count_widened_blocks(monkeypatch)
    # "c" sits out this step; "b" is new, on c's first 3 blocks and two of its own.
    run.step(("b", 3, CONTEXT + 2))
    run.step(("b", 3, CONTEXT + 3), ("c", 1, CONTEXT + 2))  # both decode on
    # b widened its 5 blocks into a's row, and c found its row as it left it: 5 blocks.
    # Taking c's row, b would have widened 2 blocks and c all 5 again: 7.
    assert sum(widened) == 2 * 5 * tiny_config.num_layers  # K and V, all layers


def test_the_longest_held_run_wins_and_ties_go_to_the_least_recently_used() -> None:
    pool = np.zeros((32, 1, 2, 4, 1, 2), np.float16)  # blocks, layers, K/V, bs, kvh, hd
    generation = np.zeros((32, 1), np.int64)
    wide = WideContext(1, 1 << 24)
    keys = ["r0", "r1", "r2", "r3"]
    assert wide.assign_rows(keys, 4, pool, generation) == [0, 1, 2, 3]
    for row, blocks in enumerate(([1, 2, 3], [1, 2], [1, 2, 3], [20])):
        table = np.array([blocks + [30] * (4 - len(blocks))], dtype=np.int64)
        wide.gather(pool, generation, 0, row, table, [4 * len(blocks)])
    wide.assign_rows(["r0"], 4, pool, generation)  # r0 is now the most recently used
    wide.release(keys)  # least recently used first: r1, r2, r3, r0

    def takes(table: list[int]) -> int | None:
        (row,) = wide.assign_rows(["new"], 4, pool, generation, [np.array(table)])
        wide.release(["new"])
        return row

    assert takes([1, 2, 3, 9]) == 2  # rows 0 and 2 hold 3 blocks; row 2 is the less recent
    assert takes([1, 2, 7]) == 1  # rows 0, 1 and 2 hold 2 blocks; row 1 is the LRU
    generation[1, 0] += 1  # block 1 rewritten: no row holds even the first block
    assert takes([1, 2, 3]) == 3  # the least recently used row, r3's


def test_without_a_prefix_match_a_finished_row_goes_before_a_live_one() -> None:
    """Found in review: a new sequence that no released row holds took the least
    recently used row, a live sequence's that sat out a step, while a finished
    sequence's row was free."""
    pool = np.zeros((32, 1, 2, 4, 1, 2), np.float16)
    generation = np.zeros((32, 1), np.int64)
    wide = WideContext(1, 1 << 20)
    tables = {
        key: np.array(blocks, dtype=np.int64)
        for key, blocks in (("a", [0, 1]), ("b", [2, 3]), ("c", [9, 10]))
    }

    def assign(*keys: str) -> list[int | None]:
        return wide.assign_rows(list(keys), 2, pool, generation, [tables[k] for k in keys])

    assert assign("a", "b") == [0, 1]
    assert assign("b") == [1]  # "a" sits out a step: its row is the least recently used
    wide.release(["b"])
    assert assign("c") == [1]  # b's row, not live a's
    assert assign("a", "c") == [0, 1]  # a finds its row as it left it
