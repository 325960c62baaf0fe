"""`ByteTokenizer`: the `Tokenizer` protocol over the byte-level tokenizer of
`npu_sim.tokenizer` (ids 0..255 are UTF-8 bytes, 256..261 chat specials), used by the
random-weight presets. The module-level functions stay the implementation, so existing
callers of `npu_sim.tokenizer` are unaffected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Final

from npu_sim import tokenizer
from npu_sim.tokenizers.base import bytes_to_unicode, hf_bpe_model

# Names the specials get in `to_hf_json` (they are never produced by encoding text).
SPECIAL_NAMES: Final = {
    tokenizer.BOS: "<|bos|>",
    tokenizer.EOS: "<|eos|>",
    tokenizer.SYSTEM: "<|system|>",
    tokenizer.USER: "<|user|>",
    tokenizer.ASSISTANT: "<|assistant|>",
    tokenizer.END_OF_TURN: "<|end_of_turn|>",
}


class ByteTokenizer:
    """UTF-8 bytes as ids plus six chat specials; any text round-trips exactly."""

    name: Final = "byte"
    vocab_size: Final = tokenizer.VOCAB_SIZE
    bos_id: Final[int | None] = tokenizer.BOS
    stop_token_ids: Final = tokenizer.stop_token_ids
    # Printable ASCII, newline and the stop tokens (always valid UTF-8 when streamed).
    sampleable_mask: Final = tokenizer.sampleable_mask

    def encode(self, text: str) -> list[int]:
        return tokenizer.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return tokenizer.decode(ids)

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} outside vocabulary [0, {self.vocab_size})")
        return bytes([token_id]) if token_id < 256 else b""

    def apply_chat_template(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        return tokenizer.apply_chat_template(messages)

    def to_hf_json(self) -> str:
        """A byte-level BPE with no merges. The specials are plain vocabulary entries, not
        added tokens, so HF never splits them out of text, exactly like `encode`."""
        alphabet = bytes_to_unicode()
        vocab = {alphabet[b]: b for b in range(256)}
        vocab.update({text: token_id for token_id, text in SPECIAL_NAMES.items()})
        byte_level = {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        }
        return json.dumps(
            {
                "version": "1.0",
                "truncation": None,
                "padding": None,
                "added_tokens": [],
                "normalizer": None,
                "pre_tokenizer": byte_level,
                "post_processor": None,
                "decoder": byte_level,
                "model": hf_bpe_model(vocab, []),
            },
            ensure_ascii=False,
        )
