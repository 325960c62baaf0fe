"""The ``prefix-aware`` eviction policy: orphans first, leaves first, learned classes.

The contract every policy keeps is tested in test_eviction.py (without notes this one
is LRU); here the behaviour that needs request notes, with expected orders and hits
worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from cache.block_hash import BlockHash, hash_full_blocks, root_hash
from cache.layout import KVLayout
from cache.manager import CacheConfig, CacheManager
from cache.policies.eviction import make_policy
from cache.policies.prefix_aware import CONTINUATION, FRESH, PrefixAwarePolicy
from load.policy_sim import simulate_online

LAYOUT = KVLayout("test-model", num_layers=2, num_kv_heads=2, head_dim=8, block_size=4)


def chain(n: int) -> list[BlockHash]:
    tokens = list(np.random.default_rng(0).integers(0, 256, n * LAYOUT.block_size))
    return hash_full_blocks(tokens, LAYOUT.block_size, root_hash("test-model", 1))


def _pop_all(policy: PrefixAwarePolicy[int]) -> list[int]:
    order = list(policy)
    popped = []
    while (key := policy.pop_victim()) is not None:
        popped.append(key)
    assert popped == order  # iteration shows the victim order
    return popped


def test_leaves_go_first() -> None:
    """Chain 1 -> 2 -> 3 and an unrelated block 9, used in the order 1, 2, 9, 3.

    LRU evicts 1, 2, 9, 3: once 1 is gone, 2 and 3 can never be prefix hits here. Block 1
    is also prefix-aware's first choice, but it evicts 1's deepest descendant in its
    place: 3, then 2, then 1, then 9, so the chain's head stays usable longest."""
    lru = make_policy("lru")
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2, 3])
    for key in (1, 2, 9, 3):
        lru.insert(key)
        policy.insert(key)
    assert [lru.pop_victim() for _ in range(4)] == [1, 2, 9, 3]
    assert _pop_all(policy) == [3, 2, 1, 9]


def test_the_oldest_child_is_followed_down() -> None:
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2, 3])
    policy.note_request([1, 4])  # a fork: 1 has children 2 (used first) and 4
    for key in (1, 2, 4, 3):
        policy.insert(key)
    assert _pop_all(policy) == [3, 2, 4, 1]


def test_a_block_inserted_after_its_parent_was_evicted_goes_first() -> None:
    """Block 2's parent 1 was evicted before 2 came in (a request held 2 in HBM while
    1 went): 2 cannot be a prefix hit here, so it goes before the older 9, and it
    rejoins the LRU order when 1 returns."""
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2])
    policy.insert(1)
    policy.insert(9)
    assert policy.pop_victim() == 1
    policy.insert(2)
    policy.insert(8)
    assert list(policy) == [2, 9, 8]
    policy.touch(2)  # a use without the parent cannot be a prefix hit: still first
    assert list(policy) == [2, 9, 8]
    policy.insert(1)  # the parent is back: 2 rejoins the LRU order as just used
    assert list(policy) == [9, 8, 2, 1]


def test_a_new_request_brings_its_chain_back() -> None:
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2])
    policy.insert(1)
    assert policy.pop_victim() == 1
    policy.note_request([1, 2])  # this request recomputes or reloads 1
    policy.insert(2)
    policy.insert(9)
    assert list(policy) == [2, 9]


def test_a_block_in_use_elsewhere_does_not_orphan_its_children() -> None:
    """``remove`` (the HBM pool takes a block a request uses) is not an eviction."""
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2])
    for key in (9, 1, 2):
        policy.insert(key)
    policy.remove(1)
    policy.insert(3)
    assert list(policy) == [9, 2, 3]


def test_chained_output_blocks_take_their_parent_and_class() -> None:
    policy: PrefixAwarePolicy[int] = PrefixAwarePolicy()
    policy.note_request([1, 2])
    policy.note_chain([1, 2, 3])  # 3: an output block the request computed
    for key in (1, 2, 3):  # root first, so LRU alone would evict 1 first
        policy.insert(key)
    assert _pop_all(policy) == [3, 2, 1]


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


def test_the_manager_chains_a_request_s_output_blocks() -> None:
    """A continuation's prompt blocks h0-h2 and its output block h3 (committed during
    decode, so never in a note) are freed together. The continuation class scores lower
    than the fresh one here, so the class's oldest block goes first: that must be h3,
    the chain's leaf, not h2 (which would leave h3 in HBM behind a missing parent: the
    HBM part of a match must lead, so h3 could never be hit)."""
    hashes = chain(4)
    config = CacheConfig(4, 0, 0, eviction_policy="prefix-aware")
    manager = CacheManager(LAYOUT, config)
    manager.note_request(hashes[:1])  # a first request...
    manager.note_request(hashes[:3])  # ...and its continuation, through its end
    block_ids = manager.allocate(4)
    assert block_ids is not None
    manager.commit(block_ids, hashes)
    manager.free(block_ids)
    assert manager.allocate(1) is not None  # evicts one block
    assert manager.match(hashes, 4).num_blocks == 3
