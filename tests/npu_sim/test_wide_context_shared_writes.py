"""A kept decode context whose block another chunk of the same step also writes: the
patch copies in only the decode's own token, so that block must be re-widened, not
trusted at its new generation (found in review: the other write stayed hidden)."""

from __future__ import annotations

import numpy as np

from npu_sim.kv_pool import KVBlockPool
from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import ModelConfig
from tests.npu_sim.pools import BLOCK_SIZE


def test_a_block_two_chunks_write_in_one_step_is_widened_again(
    tiny_config: ModelConfig,
) -> None:
    cached = Model(tiny_config)  # no verification: the bits are compared below
    uncached = Model(tiny_config, wide_context_bytes=0)
    pool = KVBlockPool(cached.kv_pool_shape(24, BLOCK_SIZE), tiny_config.kv_dtype)
    table = list(range(8))
    prompt = np.random.default_rng(0).integers(0, 256, 70).tolist()
    cached.forward([SeqChunk(prompt, 0, table, False)], pool)

    def step(*batch: SeqChunk) -> None:
        reference = pool.kv.copy()
        expected = uncached.forward(list(batch), reference)
        assert cached.forward(list(batch), pool).tobytes() == expected.tobytes()
        assert pool.kv.tobytes() == reference.tobytes()

    for pos in (70, 71, 72):
        step(SeqChunk([65], pos, table, seq_key="a"))
    # "a" decodes at 73 (block 4, offset 9) while "b", on the same table, rewrites
    # position 66 (block 4, offset 2), inside a's context: one generation bump for both.
    step(SeqChunk([65], 73, table, seq_key="a"), SeqChunk([66], 66, table, seq_key="b"))
    step(SeqChunk([65], 74, table, seq_key="a"))
