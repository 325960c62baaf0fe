"""Eviction policies: one contract over every registered policy, plus each one's order."""

from __future__ import annotations

import random

import pytest

from cache.eviction import (
    EVICTION_POLICIES,
    EvictionPolicy,
    FifoPolicy,
    LfuPolicy,
    LruPolicy,
    make_policy,
)


@pytest.fixture(params=sorted(EVICTION_POLICIES))
def policy(request: pytest.FixtureRequest) -> EvictionPolicy[int]:
    return make_policy(request.param)


# --- contract, every policy --------------------------------------------------------


def test_empty(policy: EvictionPolicy[int]) -> None:
    assert len(policy) == 0
    assert list(policy) == []
    assert policy.peek_victim() is None
    assert policy.pop_victim() is None
    assert 1 not in policy


def test_insert_contains_len(policy: EvictionPolicy[int]) -> None:
    for k in (1, 2, 3):
        policy.insert(k)
    assert len(policy) == 3
    assert 2 in policy
    assert sorted(policy) == [1, 2, 3]
    policy.insert(2)  # re-insert counts as a touch, not a second entry
    assert len(policy) == 3


def test_remove_and_remove_absent(policy: EvictionPolicy[int]) -> None:
    policy.insert(1)
    policy.insert(2)
    policy.remove(1)
    policy.remove(1)
    policy.remove(42)
    assert list(policy) == [2]


def test_touch_absent_raises_key_error(policy: EvictionPolicy[int]) -> None:
    with pytest.raises(KeyError):
        policy.touch(7)
    policy.insert(7)
    policy.remove(7)
    with pytest.raises(KeyError):
        policy.touch(7)


def test_peek_matches_pop_and_iteration_order(policy: EvictionPolicy[int]) -> None:
    rng = random.Random(1)
    for k in range(50):
        policy.insert(k)
    for _ in range(200):
        policy.touch(rng.randrange(50))
    order = list(policy)
    popped = []
    while (victim := policy.peek_victim()) is not None:
        assert policy.pop_victim() == victim
        assert victim not in policy
        popped.append(victim)
    assert popped == order
    assert sorted(popped) == list(range(50))
    assert len(policy) == 0


def test_works_with_bytes_keys(policy: EvictionPolicy[bytes]) -> None:
    policy.insert(b"\x00" * 16)
    policy.insert(b"\x01" * 16)
    assert policy.pop_victim() in (b"\x00" * 16, b"\x01" * 16)


def test_make_policy_is_case_insensitive_and_fresh() -> None:
    a, b = make_policy("LRU"), make_policy("lru")
    assert isinstance(a, LruPolicy)
    assert a is not b


def test_make_policy_unknown_lists_names() -> None:
    with pytest.raises(ValueError, match="fifo.*lfu.*lru"):
        make_policy("belady")


# --- each policy's order -----------------------------------------------------------


def test_lru_order() -> None:
    p: LruPolicy[str] = LruPolicy()
    for k in "abcd":
        p.insert(k)
    p.touch("a")
    p.insert("c")
    assert list(p) == ["b", "d", "a", "c"]
    assert p.pop_victim() == "b"


def test_fifo_ignores_use() -> None:
    p: FifoPolicy[str] = FifoPolicy()
    for k in "abcd":
        p.insert(k)
    p.touch("a")
    p.insert("a")
    assert list(p) == ["a", "b", "c", "d"]
    p.remove("a")
    p.insert("a")  # a new life starts at the back
    assert list(p) == ["b", "c", "d", "a"]


def test_lfu_order_ties_broken_by_lru() -> None:
    p: LfuPolicy[str] = LfuPolicy()
    for k in "abcd":
        p.insert(k)
    p.touch("a")
    p.touch("a")
    p.touch("b")
    p.touch("c")
    assert p.frequency("a") == 3
    assert list(p) == ["d", "b", "c", "a"]  # b and c tie at 2: b was used first
    p.touch("b")
    assert list(p) == ["d", "c", "a", "b"]  # b now 3, used after a
    assert p.pop_victim() == "d"
    p.remove("c")
    assert p.peek_victim() == "a"


def test_lfu_new_key_is_next_victim() -> None:
    p: LfuPolicy[int] = LfuPolicy()
    p.insert(1)
    p.touch(1)
    p.insert(2)
    assert p.peek_victim() == 2


# --- every policy against a slow, obviously correct model -------------------------


class _Reference:
    """O(n) model: victim = min over (rank(key)), rank defined per policy."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.clock = 0
        self.inserted: dict[int, int] = {}
        self.used: dict[int, int] = {}
        self.freq: dict[int, int] = {}

    def insert(self, k: int) -> None:
        if k in self.inserted:
            self.touch(k)
            return
        self.clock += 1
        self.inserted[k] = self.used[k] = self.clock
        self.freq[k] = 1

    def touch(self, k: int) -> None:
        self.clock += 1
        self.used[k] = self.clock
        self.freq[k] += 1

    def remove(self, k: int) -> None:
        for d in (self.inserted, self.used, self.freq):
            d.pop(k, None)

    def rank(self, k: int) -> tuple[int, int]:
        if self.name in ("lru", "prefix-aware"):  # prefix-aware is LRU until requests are noted
            return (0, self.used[k])
        if self.name == "fifo":
            return (0, self.inserted[k])
        return (self.freq[k], self.used[k])  # lfu

    def order(self) -> list[int]:
        return sorted(self.inserted, key=self.rank)


@pytest.mark.parametrize("name", sorted(EVICTION_POLICIES))
def test_matches_reference_model_under_random_operations(name: str) -> None:
    policy: EvictionPolicy[int] = make_policy(name)
    model = _Reference(name)
    rng = random.Random(name)
    for _ in range(5000):
        op, k = rng.random(), rng.randrange(60)
        if op < 0.35:
            policy.insert(k)
            model.insert(k)
        elif op < 0.7:
            if k in model.inserted:
                policy.touch(k)
                model.touch(k)
        elif op < 0.85:
            policy.remove(k)
            model.remove(k)
        else:
            victim = policy.pop_victim()
            expected = model.order()[0] if model.inserted else None
            assert victim == expected
            if expected is not None:
                model.remove(expected)
        assert len(policy) == len(model.inserted)
    assert list(policy) == model.order()


def test_lfu_bookkeeping_stays_bounded_without_victim_lookups() -> None:
    p: LfuPolicy[int] = LfuPolicy()
    p.insert(1)
    for _ in range(10_000):
        p.touch(1)  # every touch opens a new frequency bucket
    assert len(p._heap) <= 2 * len(p._buckets) + 17
    assert p.pop_victim() == 1


@pytest.mark.parametrize("name", sorted(EVICTION_POLICIES))
@pytest.mark.parametrize("start", [[], [3, 9]])
@pytest.mark.parametrize("keys", [[5, 1, 4, 2], [5, 1, 5, 3, 9]])
def test_insert_many_is_insert_in_order(name: str, start: list[int], keys: list[int]) -> None:
    bulk, one_by_one = make_policy(name), make_policy(name)
    for key in start:
        bulk.insert(key)
        one_by_one.insert(key)
    bulk.insert_many(keys)
    for key in keys:
        one_by_one.insert(key)
    assert list(bulk) == list(one_by_one)
