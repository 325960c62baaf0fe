"""The StorageTier contract, run against every tier over its real store."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cache.block_format import decode_block, encode_block
from cache.block_hash import BlockHash
from cache.tiers.base import Buffer, StorageTier, TierError
from cache.tiers.pooled_redis_tier import PooledRedisTier

OpenTier = Callable[[str], StorageTier]  # the conftest fixture's type


def key(i: int) -> BlockHash:
    return BlockHash(i.to_bytes(16, "big"))


def collect(tier: StorageTier, keys: list[BlockHash]) -> list[bytes | None]:
    out: list[bytes | None] = []

    def consume(i: int, buf: Buffer | None) -> None:
        assert i == len(out)
        out.append(None if buf is None else bytes(buf))

    tier.get_many(keys, consume)
    return out


def test_get_missing_returns_none(tier: StorageTier) -> None:
    assert tier.get(key(1)) is None
    assert not tier.contains(key(1))


def test_put_get_contains_remove(tier: StorageTier) -> None:
    tier.put(key(1), b"one")
    assert tier.contains(key(1))
    assert tier.get(key(1)) == b"one"
    assert isinstance(tier.get(key(1)), bytes)
    tier.put(key(1), b"one")  # again: still stored once
    assert tier.get(key(1)) == b"one"
    assert dict(tier.scan()) == {key(1): 3}
    tier.remove(key(1))
    assert tier.get(key(1)) is None
    assert not tier.contains(key(1))
    tier.remove(key(1))  # absent: no-op


def test_put_replaces_the_value(tier: StorageTier) -> None:
    if isinstance(tier, PooledRedisTier):
        pytest.skip("a shared pool's block is content-addressed: a second put only touches it")
    tier.put(key(1), b"one")
    tier.put(key(1), b"uno")
    assert tier.get(key(1)) == b"uno"


def test_large_value_round_trips(tier: StorageTier) -> None:
    value = np.random.default_rng(0).bytes(3 << 20)
    tier.put(key(7), value)
    assert tier.get(key(7)) == value


def test_batched_forms(tier: StorageTier) -> None:
    items = [(key(i), f"value-{i}".encode() * i) for i in range(1, 20)]
    tier.put_many(items)
    probe = [key(0), key(1), key(19), key(20), key(5)]
    assert tier.contains_many(probe) == [False, True, True, False, True]
    assert collect(tier, probe) == [None, items[0][1], items[18][1], None, items[4][1]]
    tier.remove_many([key(1), key(2), key(99)])
    assert tier.contains_many([key(1), key(2), key(3)]) == [False, False, True]


def test_empty_batches_are_no_ops(tier: StorageTier) -> None:
    tier.put_many([])
    tier.remove_many([])
    assert tier.contains_many([]) == []
    assert collect(tier, []) == []


def test_get_many_keeps_request_order_and_duplicates(tier: StorageTier) -> None:
    tier.put_many([(key(i), bytes([i])) for i in range(10)])
    order = [key(9), key(3), key(42), key(3), key(0)]
    assert collect(tier, order) == [b"\x09", b"\x03", None, b"\x03", b"\x00"]


def test_get_many_buffer_decodes_in_place_inside_consume(tier: StorageTier) -> None:
    blocks = [np.full((2, 2, 4, 8), i, dtype=np.float16) for i in range(3)]
    tier.put_many([(key(i), encode_block(b)) for i, b in enumerate(blocks)])
    hbm = np.zeros((3, 2, 2, 4, 8), dtype=np.float16)

    def consume(i: int, buf: Buffer | None) -> None:
        assert buf is not None
        np.copyto(hbm[i], decode_block(buf, hbm.shape[1:], hbm.dtype))

    tier.get_many([key(0), key(1), key(2)], consume)
    for i in range(3):
        np.testing.assert_array_equal(hbm[i], blocks[i])


def test_consume_exceptions_propagate_unwrapped(tier: StorageTier) -> None:
    tier.put(key(1), b"x")

    def consume(i: int, buf: Buffer | None) -> None:
        raise KeyError("from consume")

    with pytest.raises(KeyError, match="from consume"):
        tier.get_many([key(1)], consume)
    assert tier.get(key(1)) == b"x"  # the tier is still usable


def test_get_all_hands_over_every_value_at_once_in_request_order(tier: StorageTier) -> None:
    tier.put_many([(key(i), bytes([i]) * 3) for i in range(10)])
    seen: list[list[bytes | None]] = []

    def consume(bufs: list[Buffer | None]) -> None:
        seen.append([None if b is None else bytes(b) for b in bufs])

    tier.get_all([key(9), key(3), key(42), key(3), key(0)], consume)
    assert seen == [[b"\x09" * 3, b"\x03" * 3, None, b"\x03" * 3, b"\x00" * 3]]
    tier.get_all([], consume)
    assert seen[-1] == []


def test_get_all_decodes_a_whole_job_into_hbm_inside_consume(tier: StorageTier) -> None:
    from cache.block_format import decode_blocks

    blocks = [np.full((2, 2, 4, 8), i, dtype=np.float16) for i in range(3)]
    tier.put_many([(key(i), encode_block(b, key=key(i))) for i, b in enumerate(blocks)])
    hbm = np.zeros((4, 2, 2, 4, 8), dtype=np.float16)
    keys = [key(2), key(0), key(5), key(1)]
    result: list[bool] = []
    tier.get_all(keys, lambda bufs: result.extend(decode_blocks(bufs, keys, hbm, [0, 1, 2, 3])))
    assert result == [True, True, False, True]
    for slot, i in ((0, 2), (1, 0), (3, 1)):
        np.testing.assert_array_equal(hbm[slot], blocks[i])


def test_get_all_consume_exceptions_propagate_unwrapped(tier: StorageTier) -> None:
    tier.put(key(1), b"x")

    def consume(bufs: list[Buffer | None]) -> None:
        raise KeyError("from consume")

    with pytest.raises(KeyError, match="from consume"):
        tier.get_all([key(1)], consume)
    assert tier.get(key(1)) == b"x"


def test_get_pieces_hands_over_consecutive_pieces_in_request_order(tier: StorageTier) -> None:
    tier.put_many([(key(i), bytes([i]) * 3) for i in range(10)])
    seen: list[tuple[int, list[bytes | None]]] = []

    def consume(first: int, bufs: list[Buffer | None]) -> None:
        seen.append((first, [None if b is None else bytes(b) for b in bufs]))

    tier.get_pieces([key(9), key(3), key(42), key(3), key(0)], 2, consume)
    assert seen == [
        (0, [b"\x09" * 3, b"\x03" * 3]),
        (2, [None, b"\x03" * 3]),
        (4, [b"\x00" * 3]),
    ]
    seen.clear()
    tier.get_pieces([key(1)], 4, consume)  # one piece
    tier.get_pieces([], 4, consume)  # none
    assert seen == [(0, [b"\x01" * 3])]
    with pytest.raises(ValueError):
        tier.get_pieces([key(1)], 0, consume)


def test_get_pieces_consume_exception_leaves_no_stale_reply(tier: StorageTier) -> None:
    """A consume that raises while later pieces are in flight (Redis: MGETs already sent)
    must not leave their replies to be read as the answer to the next call."""
    tier.put_many([(key(i), bytes([i]) * 100) for i in range(12)])

    def fail(first: int, bufs: list[Buffer | None]) -> None:
        raise KeyError("from consume")

    with pytest.raises(KeyError, match="from consume"):
        tier.get_pieces([key(i) for i in range(12)], 3, fail)
    seen: list[bytes | None] = []
    tier.get_pieces(
        [key(i) for i in range(11, -1, -1)], 3, lambda _, bufs: seen.extend(map(bytes, bufs))
    )
    assert seen == [bytes([i]) * 100 for i in range(11, -1, -1)]


def test_scan_lists_keys_and_sizes(tier: StorageTier) -> None:
    assert list(tier.scan()) == []
    expected = {key(i): 100 + i for i in range(2500)}
    tier.put_many([(k, b"z" * size) for k, size in expected.items()])
    listed = list(tier.scan())
    assert len(listed) == len(expected)
    assert dict(listed) == expected
    assert all(isinstance(k, bytes) and len(k) == 16 for k, _ in listed)


def test_namespaces_isolate(open_tier: OpenTier, namespace: str) -> None:
    a = open_tier(namespace + "-a")
    b = open_tier(namespace + "-b")
    a.put(key(1), b"from a")
    b.put(key(1), b"from b")
    b.put(key(2), b"only b")
    assert a.get(key(1)) == b"from a"
    assert b.get(key(1)) == b"from b"
    assert not a.contains(key(2))
    assert dict(a.scan()) == {key(1): 6}
    assert dict(b.scan()) == {key(1): 6, key(2): 6}
    a.remove_many([key(1), key(2)])
    assert b.contains_many([key(1), key(2)]) == [True, True]


@pytest.mark.parametrize("bad", ["", "a:b", "a*", "sp ace", "x" * 101])
def test_rejects_bad_namespace(open_tier: OpenTier, bad: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        open_tier(bad)


def test_close_is_idempotent(tier: StorageTier) -> None:
    tier.put(key(1), b"x")
    tier.close()
    tier.close()


def test_tier_error_is_runtime_error() -> None:
    assert issubclass(TierError, RuntimeError)


def test_closed_tier_raises_tier_error(tier: StorageTier) -> None:
    tier.close()
    with pytest.raises(TierError, match="closed"):
        tier.put(key(1), b"x")
    with pytest.raises(TierError, match="closed"):
        tier.get(key(1))


def test_scan_keys_of_size_is_scan_filtered_by_size(tier: StorageTier) -> None:
    tier.put_many([(key(1), b"a" * 8), (key(2), b"b" * 5), (key(3), b"c" * 8)])
    assert sorted(tier.scan_keys_of_size(8)) == [key(1), key(3)]
    assert sorted(k for k, size in tier.scan() if size == 8) == sorted(tier.scan_keys_of_size(8))
    assert tier.scan_keys_of_size(7) == []
