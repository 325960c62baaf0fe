"""EmulatedModel: real-layout KV bytes from block identity, tokens from the bytes read."""

from __future__ import annotations

import numpy as np
import pytest

from npu_sim.cost_model import step_cost
from npu_sim.device import get_device
from npu_sim.emulated import EmulatedModel, stored_head_dim
from npu_sim.executor import Executor, Pace, StepSequence
from npu_sim.model import SeqChunk
from npu_sim.model_config import get_cost_model_config
from npu_sim.sampling import Sampler, SamplingParams
from npu_sim.tokenizer import VOCAB_SIZE, encode, sampleable_mask

BS = 16
LLAMA = get_cost_model_config("llama-3-8b")
PROMPT = encode("The tiered cache keeps every block it can, and then some more. " * 3)


@pytest.fixture(scope="module")
def model() -> EmulatedModel:
    return EmulatedModel(LLAMA)


def new_pool(model: EmulatedModel, num_blocks: int = 64) -> np.ndarray:
    return np.zeros(model.kv_pool_shape(num_blocks, BS), dtype=np.float16)


def greedy(logits: np.ndarray) -> int:
    return Sampler(SamplingParams(temperature=0.0), sampleable_mask).sample(logits)


def test_layout_is_llama_with_a_stored_fraction(model: EmulatedModel) -> None:
    assert LLAMA.kv_bytes_per_token == 128 * 1024
    assert model.stored_head_dim == 2  # 128 x 1/64
    assert model.kv_pool_shape(3, BS) == (3, 32, 2, BS, 8, 2)
    assert stored_head_dim(LLAMA, 1.0) == 128
    for bad in (0.0, 1.5, 1 / 256, 0.3):
        with pytest.raises(ValueError):
            stored_head_dim(LLAMA, bad)


def test_kv_and_logits_are_chunk_batch_and_pool_slot_invariant(model: EmulatedModel) -> None:
    n = len(PROMPT)
    whole = new_pool(model)
    ref = model.forward([SeqChunk(PROMPT, 0, list(range(20)))], whole)
    assert ref.shape == (1, VOCAB_SIZE)
    chunked = new_pool(model)
    table = list(range(40, 60))  # other slots
    other = SeqChunk(encode("unrelated"), 0, [60])
    for start in range(0, n, 37):
        end = min(start + 37, n)
        batch = [SeqChunk(PROMPT[start:end], start, table, needs_logits=end == n), other]
        other = SeqChunk(encode("x"), other.start_pos + len(other.token_ids), [60], False)
        out = model.forward(batch, chunked)
    assert np.array_equal(out[0], ref[0])
    num_blocks = -(-n // BS)
    full = n // BS
    assert np.array_equal(whole[:full].view(np.uint16), chunked[40 : 40 + full].view(np.uint16))
    assert np.isfinite(chunked[40 : 40 + num_blocks]).all()


def test_kv_depends_on_the_prefix_and_position(model: EmulatedModel) -> None:
    a, b = new_pool(model, 4), new_pool(model, 4)
    model.forward([SeqChunk(encode("A" * 16 + "same tokens here"), 0, [0, 1])], a)
    model.forward([SeqChunk(encode("B" * 16 + "same tokens here"), 0, [0, 1])], b)
    assert not np.array_equal(a[1].view(np.uint16), b[1].view(np.uint16))


@pytest.mark.parametrize(
    "where",
    [
        (0, 0, 0, 3, 0, 0),  # first layer K, an early block
        (2, 31, 1, 9, 0, 0),  # last layer V, a middle block
        (3, 0, 0, 15, 0, 0),  # the chain elements of the token before the resumed chunk
    ],
)
def test_a_wrong_attended_byte_changes_the_tokens(model: EmulatedModel, where) -> None:
    pool = new_pool(model)
    head, tail = PROMPT[:64], PROMPT[64:]
    model.forward([SeqChunk(head, 0, list(range(16)), False)], pool)
    saved = pool.copy()
    ref = model.forward([SeqChunk(tail, 64, list(range(16)))], pool)
    pool[:] = saved
    pool.view(np.uint16)[where] ^= 1
    out = model.forward([SeqChunk(tail, 64, list(range(16)))], pool)
    assert not np.array_equal(out, ref)


def test_executor_charges_the_emulated_shape(model: EmulatedModel) -> None:
    device = get_device("ascend-910b")
    executor = Executor(model, LLAMA, device, Pace.NONE, new_pool(model))
    sampler = Sampler(SamplingParams(temperature=0.0), sampleable_mask)
    result = executor.step([StepSequence("a", PROMPT, 0, list(range(20)), sampler)])
    assert result.modelled_seconds == pytest.approx(
        step_cost(LLAMA, device, [(len(PROMPT), len(PROMPT))]).seconds
    )
    assert result.sampled["a"] == greedy(
        model.forward([SeqChunk(PROMPT, 0, list(range(20)))], new_pool(model))[0]
    )


def test_invalid_batches_are_rejected(model: EmulatedModel) -> None:
    pool = new_pool(model, 2)
    with pytest.raises(ValueError):
        model.forward([SeqChunk([VOCAB_SIZE], 0, [0])], pool)
    with pytest.raises(ValueError):
        model.forward([SeqChunk(list(range(40)), 0, [0])], pool)  # table too short
    with pytest.raises(ValueError):
        model.forward([SeqChunk([1], 0, [0])], np.zeros((2, 32, 2, BS, 8, 4), np.float16))
