"""The fp32 reference forward over the real SmolLM2 weights answers a factual question:
the loader (dequantisation, orientation, Q/K un-permutation), the tokenizer and the chat
template are all right, or this fails."""

from __future__ import annotations

from npu_sim.model_config import ModelConfig
from npu_sim.tokenizers import BPETokenizer
from npu_sim.weights import LlamaWeights
from tests.npu_sim.reference_llama import KVCache, ReferenceLlama


def test_capital_of_france_is_paris(
    smollm: tuple[ModelConfig, LlamaWeights], smollm_tokenizer: BPETokenizer
) -> None:
    model = ReferenceLlama(*smollm)
    prompt = smollm_tokenizer.apply_chat_template([("user", "What is the capital of France?")])
    answer = model.generate(prompt, 16, smollm_tokenizer.stop_token_ids)
    assert "Paris" in smollm_tokenizer.decode(answer)


def test_incremental_decode_matches_one_prefill(
    smollm: tuple[ModelConfig, LlamaWeights], smollm_tokenizer: BPETokenizer
) -> None:
    """The KV cache path agrees with recomputing the whole sequence (to fp32 rounding)."""
    model = ReferenceLlama(*smollm)
    ids = smollm_tokenizer.encode("The quick brown fox jumps over the lazy dog")
    cache = KVCache()
    model.forward(ids[:4], cache)
    for token in ids[4:-1]:
        model.forward([token], cache)
    stepwise = model.forward(ids[-1:], cache)
    whole = model.forward(ids, KVCache())
    assert cache.num_tokens == len(ids)
    assert abs(stepwise - whole).max() < 1e-3 * abs(whole).max()
