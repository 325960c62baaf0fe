"""Byte-level UTF-8 tokenizer with a handful of chat special tokens.

Ids 0..255 are raw bytes; 256..261 are specials. No merges, so encoding is exact and
any text round-trips. Pure functions and immutable module constants: safe from any thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Final

import numpy as np

BOS: Final = 256
EOS: Final = 257
SYSTEM: Final = 258
USER: Final = 259
ASSISTANT: Final = 260
END_OF_TURN: Final = 261
VOCAB_SIZE: Final = 262

ROLE_TOKENS: Final = MappingProxyType({"system": SYSTEM, "user": USER, "assistant": ASSISTANT})

stop_token_ids: Final = frozenset({EOS, END_OF_TURN})


def _build_sampleable_mask() -> np.ndarray:
    mask = np.zeros(VOCAB_SIZE, dtype=bool)
    mask[0x20:0x7F] = True  # printable ASCII
    mask[ord("\n")] = True
    mask[EOS] = True
    mask[END_OF_TURN] = True
    mask.flags.writeable = False
    return mask


# Tokens a sampler may emit: printable ASCII, newline and the stop tokens. Any sequence of
# these decodes to valid UTF-8, so streamed text never contains replacement characters.
sampleable_mask: Final = _build_sampleable_mask()


def encode(text: str) -> list[int]:
    """UTF-8 bytes of `text` as ids (no BOS)."""
    return list(text.encode("utf-8"))


def decode(ids: Iterable[int]) -> str:
    """Text of the byte ids in `ids`; special ids are skipped, invalid UTF-8 is replaced.

    Raises `ValueError` for an id outside [0, VOCAB_SIZE).
    """
    out = bytearray()
    for i in ids:
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"token id {i} outside vocabulary [0, {VOCAB_SIZE})")
        if i < 256:
            out.append(i)
    return out.decode("utf-8", errors="replace")


def apply_chat_template(messages: Sequence[tuple[str, str]]) -> list[int]:
    """Prompt ids for a chat: BOS, then per (role, content) the role token, the content
    bytes and END_OF_TURN, then ASSISTANT as the generation prompt.

    Roles are "system", "user" or "assistant"; any other role raises `ValueError`.
    """
    ids = [BOS]
    for role, content in messages:
        role_token = ROLE_TOKENS.get(role)
        if role_token is None:
            raise ValueError(f"unknown chat role {role!r}; expected one of {sorted(ROLE_TOKENS)}")
        ids.append(role_token)
        ids.extend(content.encode("utf-8"))
        ids.append(END_OF_TURN)
    ids.append(ASSISTANT)
    return ids
