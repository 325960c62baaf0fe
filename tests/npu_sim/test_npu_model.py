"""The model is batch invariant bit for bit: logits and KV bytes of a token do not depend on
chunking, batch composition, row position or whether the prefix KV was reloaded.

The tests that decode run on both pool kinds (`pool_kind`): a bare array, widened from
scratch every step, and a counted pool, whose decode contexts the model keeps widened
across steps and verifies against the pool's bytes every step (the server's path)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import ModelConfig
from npu_sim.sampling import Sampler, SamplingParams
from npu_sim.tokenizer import apply_chat_template, sampleable_mask
from tests.npu_sim.pools import (
    BLOCK_SIZE,
    KVPoolFactory,
    Pool,
    PoolFactory,
    PoolKind,
    pool_bytes,
    put_blocks,
)

PROMPT = apply_chat_template(
    [
        ("system", "You are terse."),
        ("user", "Explain paged attention in one short line, please. Thanks!"),
    ]
)
NUM_DECODE = 20


def _table(first_block: int, num_tokens: int) -> list[int]:
    return list(range(first_block, first_block + -(-num_tokens // BLOCK_SIZE)))


def _kv_bytes(pool: Pool, table: Sequence[int], num_tokens: int) -> bytes:
    """The pool bytes of positions [0, num_tokens) of one sequence, all layers."""
    blocks = pool_bytes(pool)[list(table)]  # (nb, L, 2, bs, kvh, hd)
    nb, layers, _, bs = blocks.shape[:4]
    per_pos = blocks.transpose(1, 2, 0, 3, 4, 5).reshape(layers, 2, nb * bs, *blocks.shape[4:])
    return np.ascontiguousarray(per_pos[:, :, :num_tokens]).tobytes()


def _prefill(
    model: Model, pool: Pool, ids: Sequence[int], table: Sequence[int], size: int, start=0
) -> np.ndarray:
    """Prefill ids[start:] in chunks of `size`; return the last token's logits."""
    logits = np.empty(0)
    for pos in range(start, len(ids), size):
        piece = ids[pos : pos + size]
        last = pos + len(piece) == len(ids)
        out = model.forward([SeqChunk(piece, pos, table, needs_logits=last)], pool)
        assert out.shape[0] == int(last)
        if last:
            logits = out[0]
    return logits


def _greedy() -> Sampler:
    return Sampler(SamplingParams(temperature=0.0), sampleable_mask)


def _decode_alone(
    model: Model, pool: Pool, table: list[int], logits: np.ndarray, n: int = NUM_DECODE
) -> list[int]:
    sampler, tokens = _greedy(), []
    for i in range(n):
        tokens.append(sampler.sample(logits))
        logits = model.forward([SeqChunk([tokens[-1]], len(PROMPT) + i, table)], pool)[0]
    return tokens


@pytest.fixture(scope="module")
def reference(model: Model) -> tuple[bytes, bytes, list[int]]:
    """One-chunk prefill: (logits bytes, prompt KV bytes, 20 greedy tokens)."""
    pool = np.zeros(model.kv_pool_shape(64, BLOCK_SIZE), dtype=np.float16)
    table = _table(0, len(PROMPT) + NUM_DECODE)
    logits = _prefill(model, pool, PROMPT, table, len(PROMPT))
    kv = _kv_bytes(pool, table, len(PROMPT))
    return logits.tobytes(), kv, _decode_alone(model, pool, table, logits)


def test_logits_are_finite_fp32_and_prompt_is_long_enough(
    model: Model, new_pool: PoolFactory
) -> None:
    assert len(PROMPT) > 33 * 2  # so the chunk sizes below really split it
    pool = new_pool()
    logits = _prefill(model, pool, PROMPT, _table(0, len(PROMPT)), len(PROMPT))
    assert logits.dtype == np.float32 and logits.shape == (model.config.vocab_size,)
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("chunk_size", [7, 16, 33])
def test_chunked_prefill_is_bit_identical(
    kv_model: Model,
    new_kv_pool: KVPoolFactory,
    pool_kind: PoolKind,
    reference: tuple[bytes, bytes, list[int]],
    chunk_size: int,
) -> None:
    pool = new_kv_pool()
    table = _table(10, len(PROMPT) + NUM_DECODE)  # other block ids than the reference
    logits = _prefill(kv_model, pool, PROMPT, table, chunk_size)
    assert logits.tobytes() == reference[0]
    assert _kv_bytes(pool, table, len(PROMPT)) == reference[1]
    assert _decode_alone(kv_model, pool, table, logits) == reference[2]
    pool_kind.check_kept(kv_model)


def test_batched_with_other_sequences_is_bit_identical(
    kv_model: Model,
    new_kv_pool: KVPoolFactory,
    pool_kind: PoolKind,
    reference: tuple[bytes, bytes, list[int]],
) -> None:
    model = kv_model
    pool = new_kv_pool()
    rng = np.random.default_rng(7)
    table = _table(30, len(PROMPT) + NUM_DECODE)
    others = [rng.integers(0, 256, n).tolist() for n in (13, 40, 5)]
    other_tables = [_table(b, 64) for b in (0, 8, 16)]
    # Prefill the target in the middle of a batch with other prefills (mixed lengths).
    batch = [
        SeqChunk(others[0], 0, other_tables[0]),
        SeqChunk(PROMPT, 0, table),
        SeqChunk(others[1], 0, other_tables[1], needs_logits=False),
        SeqChunk(others[2], 0, other_tables[2]),
    ]
    out = model.forward(batch, pool)
    assert out.shape[0] == 3
    assert out[1].tobytes() == reference[0]
    assert _kv_bytes(pool, table, len(PROMPT)) == reference[1]
    # Decode it batched with the others, at a row position that moves every step.
    sampler, tokens, logits = _greedy(), [], out[1]
    lengths = [len(o) for o in others]
    for step in range(NUM_DECODE):
        tokens.append(sampler.sample(logits))
        target = SeqChunk([tokens[-1]], len(PROMPT) + step, table)
        decodes = [SeqChunk([65 + j], lengths[j], other_tables[j]) for j in range(3)]
        lengths = [n + 1 for n in lengths]
        pos = step % 4
        out = model.forward(decodes[:pos] + [target] + decodes[pos:], pool)
        logits = out[pos]
    assert tokens == reference[2]
    pool_kind.check_kept(model)


def test_reloaded_prefix_gives_identical_suffix(
    kv_model: Model,
    new_kv_pool: KVPoolFactory,
    pool_kind: PoolKind,
    reference: tuple[bytes, bytes, list[int]],
) -> None:
    model = kv_model
    source, target = new_kv_pool(), new_kv_pool()
    src_table = _table(0, len(PROMPT))
    _prefill(model, source, PROMPT, src_table, len(PROMPT))
    # "Reload" the full prefix blocks into different slots of another pool.
    num_cached = (len(PROMPT) // BLOCK_SIZE) * BLOCK_SIZE
    assert 0 < num_cached < len(PROMPT)
    table = _table(20, len(PROMPT) + NUM_DECODE)
    num_full = num_cached // BLOCK_SIZE
    put_blocks(target, table[:num_full], pool_bytes(source)[src_table[:num_full]])
    logits = _prefill(model, target, PROMPT, table, len(PROMPT), start=num_cached)
    assert logits.tobytes() == reference[0]
    assert _kv_bytes(target, table, len(PROMPT)) == reference[1]
    assert _decode_alone(model, target, table, logits) == reference[2]
    pool_kind.check_kept(model)


def test_same_seed_gives_same_weights(tiny_config: ModelConfig, model: Model) -> None:
    other = Model(tiny_config)
    pools = [np.zeros(m.kv_pool_shape(4, BLOCK_SIZE), dtype=np.float16) for m in (model, other)]
    outs = [
        m.forward([SeqChunk([1, 2, 3], 0, [0])], p)
        for m, p in zip((model, other), pools, strict=True)
    ]
    assert outs[0].tobytes() == outs[1].tobytes()


def test_float32_kv_pool_works(tiny_config: ModelConfig) -> None:
    from dataclasses import replace

    m = Model(replace(tiny_config, kv_dtype="float32"))
    pool = np.zeros(m.kv_pool_shape(4, BLOCK_SIZE), dtype=np.float32)
    assert np.isfinite(m.forward([SeqChunk(PROMPT[:20], 0, [0, 1])], pool)).all()


def test_empty_batch_and_no_logits(model: Model, new_pool: PoolFactory) -> None:
    pool = new_pool()
    assert model.forward([], pool).shape == (0, model.config.vocab_size)
    out = model.forward([SeqChunk([1, 2], 0, [0], needs_logits=False)], pool)
    assert out.shape == (0, model.config.vocab_size)


@pytest.mark.parametrize(
    "chunk",
    [
        SeqChunk([], 0, [0]),
        SeqChunk([1], -1, [0]),
        SeqChunk([1000], 0, [0]),
        SeqChunk(list(range(17)), 0, [0]),  # 17 tokens need 2 blocks
        SeqChunk([1], 0, [64]),  # block id outside the pool
        SeqChunk([1], 16, [0]),  # a decode at position 16 needs 2 blocks
        SeqChunk([1], 16, [-1, 0]),  # a context block outside the pool
        SeqChunk([1], 16, [2**64, 0]),  # one no int64 holds
        SeqChunk([-1], 3, [0]),
    ],
)
def test_invalid_chunks_are_rejected(model: Model, new_pool: PoolFactory, chunk: SeqChunk) -> None:
    with pytest.raises(ValueError):
        model.forward([chunk], new_pool())


def test_duplicate_slot_and_bad_pool_are_rejected(model: Model, new_pool: PoolFactory) -> None:
    with pytest.raises(ValueError):
        model.forward([SeqChunk([1], 0, [0]), SeqChunk([2], 0, [0])], new_pool())
    with pytest.raises(ValueError):
        model.forward([SeqChunk([1], 0, [0])], new_pool().astype(np.float32))
    with pytest.raises(ValueError):
        model.forward([SeqChunk([1], 0, [0])], np.zeros((4, 1, 2, 16, 2, 32), np.float16))


def test_small_llama_is_batch_invariant_too() -> None:
    from npu_sim.model_config import get_model_config

    small = Model(get_model_config("small-llama"))
    pools = [np.zeros(small.kv_pool_shape(24, BLOCK_SIZE), dtype=np.float16) for _ in range(3)]
    table = _table(0, len(PROMPT))
    whole = _prefill(small, pools[0], PROMPT, table, len(PROMPT))
    chunked = _prefill(small, pools[1], PROMPT, table, 7)
    batched = small.forward(
        [SeqChunk([1, 2, 3], 0, [20]), SeqChunk(PROMPT, 0, table), SeqChunk([4], 0, [21])],
        pools[2],
    )[1]
    assert whole.tobytes() == chunked.tobytes() == batched.tobytes()
    kv = [_kv_bytes(p, table, len(PROMPT)) for p in pools]
    assert kv[0] == kv[1] == kv[2]


def test_numerics_id_is_stable_and_follows_the_config(tiny_config: ModelConfig):
    import dataclasses

    same = Model(tiny_config).numerics_id
    assert same == Model(tiny_config).numerics_id
    assert same.startswith("tiny-llama.")
    other_weights = dataclasses.replace(tiny_config, seed=tiny_config.seed + 1)
    assert Model(other_weights).numerics_id != same
