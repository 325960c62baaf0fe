"""Which kept row a new decode sequence takes (`WideContext.assign_rows`): the one that
already holds its leading blocks, so a new request on a prefix left in HBM (the same
prompt again, a conversation's next turn) widens only what is new. Speed only: the
results are checked against a model that widens from scratch."""

from __future__ import annotations

import numpy as np
import pytest

import npu_sim.wide_context as wide_context
from npu_sim.kv_pool import KVBlockPool
from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import ModelConfig
from tests.npu_sim.pools import BLOCK_SIZE

CONTEXT = 70


def _count_widened_blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Blocks `WideContext.gather` widens from the pool from now on (all layers)."""
    real_widen = wide_context.widen
    widened: list[int] = []

    def counting(x: np.ndarray, *args: object) -> np.ndarray:
        if x.ndim == 4:  # K or V of whole blocks (n, block_size, kvh, hd), not a patch
            widened.append(x.shape[0])
        return real_widen(x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(wide_context, "widen", counting)
    return widened


def test_a_new_sequence_takes_the_row_holding_its_prefix(
    tiny_config: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = Model(tiny_config, verify_wide_context=True)
    uncached = Model(tiny_config, wide_context_bytes=0)
    pool = KVBlockPool(cached.kv_pool_shape(24, BLOCK_SIZE), tiny_config.kv_dtype)
    rng = np.random.default_rng(0)
    tables = [list(range(8 * s, 8 * (s + 1))) for s in range(3)]
    for table in tables:
        prompt = rng.integers(0, 256, CONTEXT).tolist()
        cached.forward([SeqChunk(prompt, 0, table, False)], pool)

    def step(*decodes: tuple[str, int, int]) -> None:
        batch = [SeqChunk([65], pos, tables[t], seq_key=key) for key, t, pos in decodes]
        reference = pool.kv.copy()
        expected = uncached.forward(batch, reference)
        assert cached.forward(batch, pool).tobytes() == expected.tobytes()
        assert pool.kv.tobytes() == reference.tobytes()

    step(("a", 0, CONTEXT), ("c", 1, CONTEXT))  # two rows
    step(("a", 0, CONTEXT + 1))
    step(("c", 1, CONTEXT + 1))  # "a"'s row is now the least recently used
    widened = _count_widened_blocks(monkeypatch)
    # "c" finished; a new request "b" runs on its blocks. Taking the least recently used
    # row ("a"'s, which holds none of them) would widen the whole context again.
    step(("b", 1, CONTEXT + 2))
    assert widened == []
    # A sequence whose blocks no free row holds takes the least recently used row.
    step(("d", 2, CONTEXT))
    assert sum(widened) == 2 * 5 * tiny_config.num_layers  # K and V of its 5 blocks
