"""Tokenizers behind one protocol: `ByteTokenizer` (random-weight presets) and
`BPETokenizer` (GPT-2-style byte-level BPE read from a GGUF, e.g. SmolLM2)."""

from npu_sim.tokenizers.base import CHAT_ROLES, Tokenizer
from npu_sim.tokenizers.bpe import BPETokenizer, load_gguf_tokenizer
from npu_sim.tokenizers.byte import ByteTokenizer

__all__ = ["CHAT_ROLES", "BPETokenizer", "ByteTokenizer", "Tokenizer", "load_gguf_tokenizer"]
