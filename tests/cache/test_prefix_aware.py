"""The ``prefix-aware`` eviction policy: orphans first, leaves first, learned classes.

The contract every policy keeps is tested in test_eviction.py (without notes this one
is LRU); here the behaviour that needs request notes, with expected orders and hits
worked out by hand.
"""

from __future__ import annotations

import pytest

from cache.policies.eviction import make_policy
from cache.policies.prefix_aware import CONTINUATION, FRESH, PrefixAwarePolicy
from load.policy_sim import simulate_online


def _pop_all(policy: PrefixAwarePolicy[int]) -> list[int]:
    order = list(policy)
    popped = []
    while (key := policy.pop_victim()) is not None:
        popped.append(key)
    assert popped == order  # iteration shows the victim order
    return popped


def test_children_of_an_evicted_block_go_next() -> None:
    """Chain 1 -> 2 -> 3 and an unrelated block 9, used in the order 1, 2, 9, 3.

    LRU evicts 1, 2, 9, 3. Once 1 is gone, 2 and then 3 can never be prefix hits here,
    so prefix-aware evicts them before 9: 1, 2, 3, 9."""
    lru = make_policy("lru")
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2, 3])
    for key in (1, 2, 9, 3):
        lru.insert(key)
        policy.insert(key)
    assert [lru.pop_victim() for _ in range(4)] == [1, 2, 9, 3]
    assert _pop_all(policy) == [1, 2, 3, 9]


def test_orphans_go_oldest_first_and_return_when_the_parent_does() -> None:
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2, 3])
    policy.note_request([1, 4])  # a fork: 1 has children 2 and 4
    for key in (1, 4, 2, 3, 9):
        policy.insert(key)
    assert policy.pop_victim() == 1  # orphans 4 (used before 2) and 2
    assert list(policy)[:2] == [4, 2]
    policy.insert(1)  # the parent is back: 4 and 2 rejoin the LRU order as just used
    assert list(policy) == [3, 9, 1, 4, 2]


def test_a_touched_orphan_stays_an_orphan() -> None:
    """A use of a block whose parent is gone cannot be a prefix hit through this tier."""
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2])
    for key in (1, 9, 2):
        policy.insert(key)
    assert policy.pop_victim() == 1
    policy.touch(2)
    assert policy.peek_victim() == 2


def test_a_block_in_use_elsewhere_does_not_orphan_its_children() -> None:
    """``remove`` (the HBM pool takes a block a request uses) is not an eviction."""
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2])
    for key in (1, 9, 2):
        policy.insert(key)
    policy.remove(1)
    assert list(policy) == [9, 2]


def test_continuation_is_learned_from_chain_ends() -> None:
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2])  # fresh
    policy.note_request([5])  # fresh
    policy.note_request([1, 2, 3])  # runs through the end of the first: continuation
    assert policy.continuation_odds(FRESH) == pytest.approx((1 + 1) / (2 + 2))
    assert policy.continuation_odds(CONTINUATION) == pytest.approx((0 + 1) / (1 + 2))
    # one gap of 2 requests (bit length 2): ages in a shorter bucket survive, longer die
    assert policy.reuse_score(FRESH, 1) == pytest.approx(0.5)  # S = 1: the odds
    assert policy.reuse_score(FRESH, 2) == pytest.approx(1 / 3)  # S = 1/2
    assert policy.reuse_score(FRESH, 4) == 0.0


def test_hand_made_trace_keeps_the_conversation_lru_drops() -> None:
    """Capacity 3. A conversation starts ([1, 2]), seven one-off requests follow, the
    conversation continues ([1, 2, 3], 8 requests later, all evicted by then), two more
    one-offs ([201], [202]) arrive, and the conversation continues ([1, 2, 3, 4]).

    LRU after [1, 2, 3]: 3, 2, 1 (leaf first); [201] evicts 3, [202] evicts 2, so the
    last turn hits only block 1: **1 hit** in all.

    prefix-aware learned by then: fresh chains were continued 1 time in 10
    (odds (1+1)/(10+2) = 1/6), continuations 0 in 1 ((0+1)/(1+2) = 1/3), and the one gap
    seen was 8 requests, so blocks younger than that survive (S = 1) and rank by their
    class's odds. [201] evicts 3 (the only candidates are the conversation's), [202]
    evicts 201 (1/6 < 1/3) rather than 2, and the last turn hits 1 and 2: **2 hits**."""
    trace = [[1, 2], *([100 + i] for i in range(1, 8)), [1, 2, 3], [201], [202], [1, 2, 3, 4]]
    assert simulate_online(trace, make_policy("lru"), 3) == 1
    assert simulate_online(trace, make_policy("prefix-aware"), 3) == 2


def test_notes_are_bounded() -> None:
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    for i in range(20_000):
        policy.note_request([i, i + 1_000_000])
    assert len(policy._meta) <= 4096 and len(policy._ends) <= 4096
