"""Block hashes: stable, chained, seeded by model/layout/salt, incremental."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from hashlib import blake2b

import numpy as np
import pytest

from cache.block_hash import (
    HASH_SIZE,
    BlockHash,
    hash_block_tokens,
    hash_full_blocks,
    root_hash,
)

ROOT = root_hash("tiny-llama", 1)
TOKENS = list(range(1000, 1000 + 4 * 16 + 5))  # 4 full blocks of 16, plus 5 tokens


def test_known_digests() -> None:
    # Fixed values: changing them invalidates every cache on disk and in Redis.
    assert ROOT.hex() == "91e2e37ae79f20cd6a185192bf35d501"
    assert hash_block_tokens(ROOT, [1, 2, 3, 4]).hex() == "fc3e6e9c652283b7f60ee961b9406144"
    assert root_hash("tiny-llama", 1, "tenant-a").hex() == "4bf54e5c404c19ca8856b6315ca7bc77"


def test_digest_follows_the_documented_encoding() -> None:
    h = blake2b(digest_size=16, person=b"tierkv.block.v1")
    h.update(ROOT + struct.pack("<4I", 1, 2, 3, 4))
    assert hash_block_tokens(ROOT, [1, 2, 3, 4]) == h.digest()


def test_stable_across_processes_with_different_hash_seeds() -> None:
    code = (
        "from cache.block_hash import root_hash, hash_full_blocks;"
        "r = root_hash('m', 3, 's');"
        "print(b''.join(hash_full_blocks(list(range(40)), 8, r)).hex())"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout.strip())
    expected = b"".join(hash_full_blocks(list(range(40)), 8, root_hash("m", 3, "s"))).hex()
    assert outputs == {expected}


def test_hashes_are_16_bytes_and_deterministic() -> None:
    hashes = hash_full_blocks(TOKENS, 16, ROOT)
    assert len(hashes) == 4
    assert all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)
    assert hashes == hash_full_blocks(list(TOKENS), 16, root_hash("tiny-llama", 1))
    assert len(set(hashes)) == 4


def test_chained_a_token_change_changes_all_later_hashes() -> None:
    base = hash_full_blocks(TOKENS, 16, ROOT)
    changed = list(TOKENS)
    changed[3] += 1  # in block 0
    other = hash_full_blocks(changed, 16, ROOT)
    assert all(a != b for a, b in zip(base, other, strict=True))
    changed = list(TOKENS)
    changed[2 * 16] += 1  # first token of block 2
    other = hash_full_blocks(changed, 16, ROOT)
    assert other[:2] == base[:2]
    assert all(a != b for a, b in zip(base[2:], other[2:], strict=True))


def test_partial_block_tokens_do_not_matter() -> None:
    assert hash_full_blocks(TOKENS[:-5], 16, ROOT) == hash_full_blocks(TOKENS, 16, ROOT)
    assert hash_full_blocks(TOKENS[:15], 16, ROOT) == []
    assert hash_full_blocks([], 16, ROOT) == []


@pytest.mark.parametrize(
    "other",
    [
        root_hash("tiny-llama-2", 1),
        root_hash("tiny-llama", 2),
        root_hash("tiny-llama", 1, "salt"),
        root_hash("tiny-llama", 1, ""),  # an empty salt is still a salt
    ],
)
def test_model_layout_and_salt_change_the_root(other: BlockHash) -> None:
    assert other != ROOT
    assert hash_full_blocks(TOKENS, 16, other)[0] != hash_full_blocks(TOKENS, 16, ROOT)[0]


def test_root_fields_do_not_run_into_each_other() -> None:
    assert root_hash("ab", 1, "c") != root_hash("a", 1, "bc")


def test_incremental_equals_full_recomputation() -> None:
    tokens: list[int] = []
    hashes: list[BlockHash] = []
    rng = np.random.default_rng(0)
    for _ in range(100):  # decode one token at a time, hashing incrementally
        tokens.append(int(rng.integers(0, 32000)))
        hashes = hash_full_blocks(tokens, 8, ROOT, parents_done=hashes)
        assert hashes == hash_full_blocks(tokens, 8, ROOT)
    assert len(hashes) == 12
    # A jump of several blocks at once (chunked prefill) reuses the done prefix too.
    more = tokens + list(range(40))
    assert hash_full_blocks(more, 8, ROOT, hashes[:3]) == hash_full_blocks(more, 8, ROOT)


def test_parents_done_is_reused_not_recomputed() -> None:
    marker = [BlockHash(b"\x01" * 16)]
    hashes = hash_full_blocks(TOKENS, 16, ROOT, marker)
    assert hashes[0] == marker[0]
    assert hashes[1] == hash_block_tokens(marker[0], TOKENS[16:32])


def test_numpy_and_list_tokens_agree() -> None:
    array = np.array(TOKENS, dtype=np.int64)
    assert hash_full_blocks(array, 16, ROOT) == hash_full_blocks(TOKENS, 16, ROOT)
    assert hash_block_tokens(ROOT, np.array([1, 2], dtype=np.uint32)) == hash_block_tokens(
        ROOT, [1, 2]
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: hash_block_tokens(ROOT, [-1]),
        lambda: hash_block_tokens(ROOT, [2**32]),
        lambda: hash_block_tokens(ROOT, [1.5]),  # type: ignore[list-item]
        lambda: hash_block_tokens(BlockHash(b"short"), [1]),
        lambda: hash_full_blocks(TOKENS, 0, ROOT),
        lambda: hash_full_blocks(TOKENS, 16, ROOT, [ROOT] * 5),
        lambda: root_hash("m", -1),
    ],
)
def test_invalid_input_is_value_error(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]
