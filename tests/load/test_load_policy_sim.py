"""The offline policy simulator: Belady is an upper bound of every online policy."""

import functools
import itertools
import json
import random

import pytest

from cache.eviction import EVICTION_POLICIES, make_policy
from cache.policies.admission import make_admission_policy
from load import policy_sim
from load.cli import main
from load.policy_sim import (
    next_use_index,
    simulate,
    simulate_belady,
    simulate_online,
    simulate_tiered,
)
from load.trace import default_trace_path, read_trace

REAL_TRACE = str(default_trace_path())


def test_next_use_index():
    assert next_use_index([[1, 2], [1], [3, 2]]) == [{1: 1, 2: 2}, {1: 3}, {3: 3, 2: 3}]


def test_lru_and_belady_by_hand():
    requests = [[1], [2], [3], [1], [2], [3]]
    # capacity 2: LRU always evicts the block needed next -> no hit
    assert simulate_online(requests, make_policy("lru"), 2) == 0
    # Belady keeps 1 (bypassing 3, used after 1 and 2), hits 1, then keeps 2 ...
    assert simulate_belady(requests, 2) == 2
    assert simulate_belady(requests, 3) == 3


def test_repeats_within_a_request_are_one_access():
    assert simulate_online([[7, 7], [7, 7]], make_policy("lru"), 4) == 1
    assert simulate_belady([[7, 7], [7, 7]], 4) == 1
    table = simulate([[7, 7], [7, 7]], [4], ["belady"])
    assert table.num_accesses == 2 and table.hit_rate["belady"] == [0.5]


def test_a_block_after_a_miss_is_not_a_hit():
    # 1 and 3 are cached, 2 is not: only 1 counts (3 follows the miss)
    requests = [[1, 3], [1, 2, 3]]
    assert simulate_online(requests, make_policy("lru"), 8) == 1
    assert simulate_online(requests, make_policy("lru"), 8, prefix_only=False) == 2
    assert simulate_belady(requests, 8) == 1
    assert simulate_belady(requests, 8, prefix_only=False) == 2


def test_lru_keeps_parents_more_recent_than_children():
    # capacity 2 after [1, 2]: 1 (the parent) is the more recent, so inserting 3
    # evicts 2 and the next request still hits its prefix [1]
    assert simulate_online([[1, 2], [3], [1, 4]], make_policy("lru"), 2) == 1


def test_admission_keeps_first_seen_blocks_out_of_a_single_cache():
    second_hit = make_admission_policy("second-hit", 8)
    assert simulate_online([[1], [1], [1]], make_policy("lru"), 8, second_hit) == 1


def test_tiered_model_admits_only_from_hbm_evictions():
    requests = [[1], [2], [1], [2], [1]]
    # HBM 1 block + lower 1 block: with always-admit, 1 and 2 alternate between them
    always = simulate_tiered(requests, make_policy("lru"), 2, make_admission_policy("always", 2), 1)
    assert always == 3
    # second-hit: 1 is evicted from HBM before its second access, so not admitted
    second = simulate_tiered(
        requests, make_policy("lru"), 2, make_admission_policy("second-hit", 2), 1
    )
    assert second < always


def test_a_request_hits_only_what_was_cached_before_it():
    # capacity 1: the request's second block evicts its first, so the next request
    # (same blocks) hits only the one left
    assert simulate_online([[1, 2], [1, 2]], make_policy("lru"), 1) == 1
    assert simulate_belady([[1, 2], [1, 2]], 1) == 1


def _optimum(requests, capacity):
    """Exhaustive optimum of the batched model, for tiny inputs."""

    @functools.cache
    def best(i, state):
        if i == len(requests):
            return 0
        blocks = requests[i]
        hits = sum(1 for k in set(blocks) if k in state)
        pool = sorted(state | set(blocks))
        options = (
            frozenset(c)
            for r in range(min(capacity, len(pool)) + 1)
            for c in itertools.combinations(pool, r)
        )
        return hits + max(best(i + 1, s) for s in options)

    return best(0, frozenset())


@pytest.mark.parametrize("seed", range(30))
def test_belady_is_the_optimum_on_tiny_traces(seed):
    rng = random.Random(seed)
    requests = tuple(tuple(rng.sample("abcde", rng.randint(1, 3))) for _ in range(7))
    for capacity in (1, 2, 3):
        optimum = _optimum(requests, capacity)
        assert simulate_belady(requests, capacity, prefix_only=False) == optimum


def _prefix_trace(seed, num_requests=300):
    """Requests that share prefixes like conversations: block i of a chain of length n."""
    rng = random.Random(seed)
    chains: list[list[int]] = []
    next_id = 0
    requests = []
    for _ in range(num_requests):
        if chains and rng.random() < 0.6:
            chain = rng.choice(chains)
            chain = chain[: rng.randint(1, len(chain))]
        else:
            chain = []
        chain = chain + list(range(next_id, next_id + rng.randint(1, 6)))
        next_id += len(chain)
        chains.append(chain)
        requests.append(chain)
    return requests


@pytest.mark.parametrize("policy", sorted(EVICTION_POLICIES))
@pytest.mark.parametrize("seed", range(5))
def test_belady_beats_every_online_policy_on_random_traces(policy, seed):
    requests = _prefix_trace(seed)
    for capacity in (1, 4, 16, 64, 256):
        online = simulate_online(requests, make_policy(policy), capacity, prefix_only=False)
        assert simulate_belady(requests, capacity, prefix_only=False) >= online


def test_belady_beats_every_online_policy_on_the_real_trace():
    requests = [r.hash_ids for r in read_trace(REAL_TRACE, limit=1500)]
    names = ["belady", *sorted(EVICTION_POLICIES)]
    table = simulate(requests, [100, 1000, 5000, 100_000], names)
    for name in EVICTION_POLICIES:
        for bel, other in zip(table.hit_rate["belady"], table.hit_rate[name], strict=True):
            assert bel >= other
    # an unbounded cache hits every repeated access
    distinct = len({k for r in requests for k in r})
    assert table.hit_rate["belady"][-1] == pytest.approx(1 - distinct / table.num_accesses)
    assert table.hit_rate["lru"][-1] == pytest.approx(table.hit_rate["belady"][-1])


def test_policy_command_on_a_real_trace_slice(tmp_path, capsys):
    out = tmp_path / "policy.json"
    code = main(
        [
            "policy",
            "--trace",
            REAL_TRACE,
            "--num-requests",
            "500",
            "--capacity-blocks",
            "200",
            "2000",
            "--policies",
            "fifo",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert data["capacities"] == [200, 2000]
    assert set(data["hit_rate"]) == {"lru", "belady", "fifo"}
    assert all(0 <= x <= 1 for rates in data["hit_rate"].values() for x in rates)
    assert "belady" in capsys.readouterr().out


def test_policy_command_rejects_unknown_policy(capsys):
    code = main(
        [
            "policy",
            "--trace",
            REAL_TRACE,
            "--num-requests",
            "10",
            "--capacity-blocks",
            "10",
            "--policies",
            "nope",
        ]
    )
    assert code == 2
    assert "unknown policy" in capsys.readouterr().out


def test_oracle_admission_admits_exactly_the_blocks_used_again():
    # 1 and 2 are used by a later request, 3 and 4 never again: with room for two
    # blocks the oracle keeps 1 and 2 out of 3's and 4's way, LRU does not.
    requests = [[1, 2], [3, 4], [1, 2]]
    table = policy_sim.simulate(requests, [2], ["lru", "lru+oracle"])
    assert table.hit_rate["lru"] == [0.0]
    assert table.hit_rate["lru+oracle"] == [2 / 6]
    tiered = policy_sim.simulate(requests, [3], ["lru+oracle"], hbm_fraction=0.34)
    assert tiered.hit_rate["lru+oracle"] == [2 / 6]
    assert "lru+oracle" in policy_sim.registered_policy_names()
