"""Offline cache-policy simulator over a trace's block sequence (no server).

Model: requests arrive in trace order; each request looks up its (distinct) blocks in
order, a hit is counted per block found (and the policy is touched), then the
request's missing blocks are inserted, evicting as the policy chooses. Capacity is in
blocks.

Online policies come from ``cache.eviction`` (``make_policy(name)``); ``belady`` is
implemented here: with knowledge of the future it keeps, after each request, the
blocks whose next use is nearest (bypassing a block used later than everything kept),
which is the optimum for this model (tests check it against exhaustive search) and so
an upper bound for every online policy.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

BELADY = "belady"
REQUIRED_POLICIES = ("lru", BELADY)


class EvictionPolicy(Protocol):
    """The interface of ``cache.eviction`` policies, as used here."""

    def insert(self, key: int) -> None: ...
    def touch(self, key: int) -> None: ...
    def remove(self, key: int) -> None: ...
    def pop_victim(self) -> int | None: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...


PolicyFactory = Callable[[], EvictionPolicy]


class PolicyUnavailableError(RuntimeError):
    """A policy name that neither ``cache.eviction`` nor this module provides."""


@dataclass(slots=True, frozen=True)
class PolicyTable:
    """Hit rates: ``hit_rate[policy][i]`` is at ``capacities[i]``."""

    capacities: list[int]
    hit_rate: dict[str, list[float]]
    num_accesses: int
    num_distinct: int

    def to_json(self) -> dict[str, object]:
        return {"capacities": self.capacities, "hit_rate": self.hit_rate,
                "num_accesses": self.num_accesses, "num_distinct_blocks": self.num_distinct}


def simulate_online(requests: Sequence[Sequence[int]], policy: EvictionPolicy,
                    capacity: int) -> int:
    """Number of block hits of ``policy`` (fresh, empty) at ``capacity`` blocks."""
    _check_capacity(capacity)
    hits = 0
    for blocks in distinct_blocks(requests):
        missing = []
        for key in blocks:
            if key in policy:
                hits += 1
                policy.touch(key)
            else:
                missing.append(key)
        for key in missing:
            while len(policy) >= capacity:
                if policy.pop_victim() is None:
                    break
            if len(policy) < capacity:
                policy.insert(key)
    return hits


def distinct_blocks(requests: Sequence[Sequence[int]]) -> list[list[int]]:
    """Each request's blocks with repeats dropped (first occurrence kept). A prefix
    cache stores a block once per request (trace ids are chained hashes, which never
    repeat within a prompt), so a repeat is not a separate access."""
    return [list(dict.fromkeys(blocks)) for blocks in requests]


def next_use_index(requests: Sequence[Sequence[int]]) -> list[dict[int, int]]:
    """For each request and each key it accesses, the index of the next request using
    the key (``len(requests)`` if none)."""
    never = len(requests)
    out: list[dict[int, int]] = [{} for _ in requests]
    upcoming: dict[int, int] = {}
    for i in range(len(requests) - 1, -1, -1):
        out[i] = {key: upcoming.get(key, never) for key in requests[i]}
        for key in requests[i]:
            upcoming[key] = i
    return out


def simulate_belady(requests: Sequence[Sequence[int]], capacity: int,
                    next_use: list[dict[int, int]] | None = None) -> int:
    """Number of block hits of the clairvoyant policy; O(log n) per access.

    After each request it keeps the ``capacity`` blocks, among those cached and those
    just requested, that the earliest future request uses. Blocks first needed by the
    same request tie harmlessly (that request can keep any of them afterwards); a block
    never used again is not inserted at all.
    """
    _check_capacity(capacity)
    requests = distinct_blocks(requests)
    if next_use is None:
        next_use = next_use_index(requests)
    never = len(requests)
    cached: dict[int, int] = {}  # key -> index of the next request using it
    heap: list[tuple[int, int]] = []  # (-next use, key); stale entries skipped lazily
    hits = 0
    for i, blocks in enumerate(requests):
        missing = []
        for key in blocks:
            nxt = next_use[i][key]
            if key in cached:
                hits += 1
                cached[key] = nxt
                heapq.heappush(heap, (-nxt, key))
            else:
                missing.append(key)
        for key in missing:
            nxt = next_use[i][key]
            if nxt == never:
                continue  # never used again: keeping it cannot help
            if len(cached) >= capacity:
                while heap and cached.get(heap[0][1]) != -heap[0][0]:
                    heapq.heappop(heap)
                if not heap or -heap[0][0] <= nxt:
                    continue  # everything kept is needed as soon: bypass
                del cached[heapq.heappop(heap)[1]]
            cached[key] = nxt
            heapq.heappush(heap, (-nxt, key))
    return hits


def registered_policy_names() -> list[str]:
    """Names from ``cache.eviction.EVICTION_POLICIES`` plus ``belady``."""
    eviction = _eviction_module()
    return [*list(eviction.EVICTION_POLICIES), BELADY]


def online_factory(name: str) -> PolicyFactory:
    eviction = _eviction_module()
    if name not in eviction.EVICTION_POLICIES:
        known = ", ".join([*eviction.EVICTION_POLICIES, BELADY])
        raise PolicyUnavailableError(f"unknown policy {name!r}; known: {known}")
    return lambda: eviction.make_policy(name)


def _eviction_module() -> ModuleType:
    try:
        import cache.eviction as eviction  # the one non-HTTP dependency of load/
    except ImportError as exc:
        raise PolicyUnavailableError(
            f"online policies need cache.eviction, which cannot be imported ({exc})"
        ) from exc
    return eviction


def simulate(requests: Sequence[Sequence[int]], capacities: Sequence[int],
             policies: Sequence[str],
             factory: Callable[[str], PolicyFactory] = online_factory) -> PolicyTable:
    """Hit rate of every policy at every capacity. ``factory`` maps an online policy
    name to a constructor (default: ``cache.eviction``)."""
    for c in capacities:
        _check_capacity(c)
    requests = distinct_blocks(requests)
    num_accesses = sum(len(b) for b in requests)
    table: dict[str, list[float]] = {}
    next_use = next_use_index(requests) if BELADY in policies else None
    for name in policies:
        make = None if name == BELADY else factory(name)
        rates = []
        for capacity in capacities:
            if make is None:
                hits = simulate_belady(requests, capacity, next_use)
            else:
                hits = simulate_online(requests, make(), capacity)
            rates.append(hits / num_accesses if num_accesses else 0.0)
        table[name] = rates
    distinct = len({k for blocks in requests for k in blocks})
    return PolicyTable(list(capacities), table, num_accesses, distinct)


def _check_capacity(capacity: int) -> None:
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1 block, got {capacity}")
