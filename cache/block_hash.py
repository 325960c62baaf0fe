"""Content hashes that identify KV-cache blocks across tiers, processes and machines.

A block's identity is a chain: ``root_hash(model, layout, salt)`` seeds it and every
full block's hash is ``hash_block_tokens(parent_hash, block_token_ids)``.  Two
sequences that share a prefix therefore share the hashes of every full block in that
prefix, and a hash pins down *all* tokens before it, not just the block's own.

Everything here is pure, thread-safe and deterministic: digests are 16-byte BLAKE2b
over an explicit little-endian byte encoding (never Python's randomised ``hash()``),
so the same tokens give the same key in Redis and LMDB from any process.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from hashlib import blake2b
from typing import Any, NewType, TypeAlias

import numpy as np
import numpy.typing as npt

BlockHash = NewType("BlockHash", bytes)
"""16-byte BLAKE2b digest identifying one full KV block (and its whole prefix)."""

TokenIds: TypeAlias = Sequence[int] | npt.NDArray[np.integer[Any]]
"""Token ids as a list/tuple of ints or a 1-d integer numpy array."""

HASH_SIZE = 16
"""Length in bytes of every :data:`BlockHash`."""

# Distinct BLAKE2b personalisations keep a root digest from ever colliding with a
# block digest built from the same bytes.
_ROOT_PERSON = b"tierkv.root.v1"
_BLOCK_PERSON = b"tierkv.block.v1"
_MAX_TOKEN_ID = 2**32 - 1


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def root_hash(model_id: str, layout_version: int, cache_salt: str | None = None) -> BlockHash:
    """Return the hash that seeds every block chain for one model and KV layout.

    Blocks computed under a different model, layout version or salt never match:
    ``cache_salt`` isolates tenants (``None`` and ``""`` are different salts).
    Raises ``ValueError`` if ``layout_version`` does not fit in an unsigned 32-bit int.
    """
    if not 0 <= layout_version <= 0xFFFFFFFF:
        raise ValueError(f"layout_version must fit in uint32, got {layout_version}")
    h = blake2b(digest_size=HASH_SIZE, person=_ROOT_PERSON)
    h.update(_length_prefixed(model_id.encode("utf-8")))
    h.update(struct.pack("<I", layout_version))
    if cache_salt is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01" + _length_prefixed(cache_salt.encode("utf-8")))
    return BlockHash(h.digest())


def _tokens_to_bytes(token_ids: TokenIds) -> bytes:
    """Serialise token ids as little-endian uint32, rejecting ids that do not fit."""
    arr = np.asarray(token_ids)
    if arr.ndim != 1:
        raise ValueError(f"token_ids must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return b""
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token_ids must be integers, got dtype {arr.dtype}")
    if int(arr.min()) < 0 or int(arr.max()) > _MAX_TOKEN_ID:
        raise ValueError("token ids must be in [0, 2**32)")
    return arr.astype("<u4", copy=False).tobytes()


def _hash_token_bytes(parent: BlockHash, token_bytes: bytes) -> BlockHash:
    h = blake2b(digest_size=HASH_SIZE, person=_BLOCK_PERSON)
    h.update(parent)
    h.update(token_bytes)
    return BlockHash(h.digest())


def _check_parent(parent: bytes) -> None:
    if len(parent) != HASH_SIZE:
        raise ValueError(f"parent hash must be {HASH_SIZE} bytes, got {len(parent)}")


def hash_block_tokens(parent: BlockHash, token_ids: TokenIds) -> BlockHash:
    """Return the hash of a block holding ``token_ids`` whose predecessor is ``parent``.

    ``parent`` is the previous block's hash, or :func:`root_hash` for the first block.
    Raises ``ValueError`` for a malformed parent or token ids outside ``[0, 2**32)``.
    """
    _check_parent(parent)
    return _hash_token_bytes(parent, _tokens_to_bytes(token_ids))


def hash_full_blocks(
    token_ids: TokenIds,
    block_size: int,
    root: BlockHash,
    parents_done: Sequence[BlockHash] = (),
) -> list[BlockHash]:
    """Return the hashes of every *full* block of ``token_ids``, in order.

    A trailing partial block gets no hash.  ``parents_done`` holds the hashes already
    computed for the first ``len(parents_done)`` blocks of these same tokens (e.g. from
    the previous decode step); they are reused, not recomputed, so a growing sequence
    costs one hash per new block.  Raises ``ValueError`` if ``block_size < 1`` or
    ``parents_done`` claims more blocks than ``token_ids`` holds.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    _check_parent(root)
    num_full = len(token_ids) // block_size
    num_done = len(parents_done)
    if num_done > num_full:
        raise ValueError(
            f"parents_done has {num_done} hashes but token_ids holds only {num_full} full blocks"
        )
    hashes = list(parents_done)
    if num_done == num_full:
        return hashes
    # Serialise only the new blocks' tokens, once, then slice per block.
    start = num_done * block_size
    data = _tokens_to_bytes(token_ids[start : num_full * block_size])
    step = 4 * block_size
    parent = hashes[-1] if hashes else root
    for offset in range(0, len(data), step):
        parent = _hash_token_bytes(parent, data[offset : offset + step])
        hashes.append(parent)
    return hashes
