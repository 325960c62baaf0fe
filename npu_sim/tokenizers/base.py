"""The `Tokenizer` protocol every tokenizer (byte-level, BPE) implements.

Implementations are immutable after construction, so one instance may be used from any
thread. Ids are plain ints in [0, vocab_size); methods raise `ValueError` for ids outside
that range and for unknown chat roles.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Protocol, runtime_checkable

import numpy as np

CHAT_ROLES: Final = frozenset({"system", "user", "assistant"})


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids, chat prompts and the facts a sampler and detokenizer need."""

    @property
    def name(self) -> str:
        """Short identifier ("byte", "smollm2-135m")."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of ids (the model's logits width)."""
        ...

    @property
    def bos_id(self) -> int | None:
        """Id to put before a raw completion prompt; None when the model uses none."""
        ...

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """Ids that end generation (unless the request ignores EOS)."""
        ...

    @property
    def sampleable_mask(self) -> np.ndarray:
        """Read-only bool array (vocab_size,): the ids a sampler may emit."""
        ...

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, with no BOS added."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids are skipped, invalid UTF-8 becomes U+FFFD."""
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The raw UTF-8 bytes token `token_id` stands for; b"" for special ids.

        Concatenating these for a sequence and decoding once equals `decode`, which is
        what an incremental UTF-8 detokenizer needs.
        """
        ...

    def apply_chat_template(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Prompt ids of a chat of (role, content) pairs, roles in `CHAT_ROLES`, ending
        with the assistant generation prompt."""
        ...

    def to_hf_json(self) -> str:
        """A HuggingFace `tokenizer.json` that the `tokenizers` package loads and that
        encodes every text exactly as `encode` does."""
        ...


def check_role(role: str) -> None:
    """Raise `ValueError` unless `role` is a chat role every tokenizer accepts."""
    if role not in CHAT_ROLES:
        raise ValueError(f"unknown chat role {role!r}; expected one of {sorted(CHAT_ROLES)}")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: a printable unicode character for each byte value.

    Printable Latin-1 bytes map to themselves; the other 68 bytes to U+0100 onwards, in
    order. This is the mapping byte-level BPE vocabularies (GPT-2, SmolLM2) are spelled in.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


def hf_bpe_model(vocab: dict[str, int], merges: list[str]) -> dict[str, object]:
    """The `model` section of a HF tokenizer.json for a byte-level BPE (merges "a b")."""
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": merges,
    }
