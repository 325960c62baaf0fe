"""Deterministic synthetic text.

Our server tokenizes bytes, so one printable ASCII character is one token and a text of
``n`` characters is a prompt of exactly ``n`` tokens. Other servers use real tokenizers,
for which these counts are only approximate (lowercase pseudo-words tokenize to roughly
one token per 3-4 characters with a BPE vocabulary).
"""

from __future__ import annotations

import hashlib

# 32 symbols (5 bits each), mostly letters with spaces so that a real tokenizer sees
# word-like text rather than one long run.
_ALPHABET = b"abcdefghijklmnopqrstuvwxyz     ."


def synth_text(key: str, num_tokens: int) -> str:
    """Return ``num_tokens`` printable ASCII characters determined only by ``key``.

    The same key always gives the same text (across processes and machines: it is
    derived from blake2b, not from Python's salted ``hash``); different keys give
    unrelated texts, and a longer text for a key extends the shorter one.
    """
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    out = bytearray()
    counter = 0
    seed = key.encode()
    while len(out) < num_tokens:
        digest = hashlib.blake2b(seed + counter.to_bytes(8, "little"), digest_size=64).digest()
        out.extend(_ALPHABET[b & 31] for b in digest)
        counter += 1
    return out[:num_tokens].decode("ascii")
