"""Offline cache-policy simulator over a trace's block sequence (no server).

Model: requests arrive in trace order; each request looks up its (distinct) blocks in
order. **Hit rate counts prefix hits only**, as the server does: a request's hits are
its leading blocks found in the cache, up to the first missing one; a cached block
after that miss is recomputed (a prefix cache cannot use it) and is not a hit. Hit rate
= prefix hits / block accesses. Then the request's blocks are touched, leaf first (so
a parent stays more recent than its children, as in the server), and its missing blocks
are inserted if the admission policy admits them, evicting as the eviction policy
chooses. Capacity is in blocks.

Online policies are the server's own classes: eviction from ``cache.policies.eviction``
(``lru``, ``fifo``, ``lfu``), admission from ``cache.policies.admission``; a policy name
``EVICTION+ADMISSION`` (e.g. ``lru+second-hit``) combines them, a bare name admits
``always``. The simulator models one cache, so admission decides which blocks enter it
at all (in the server it decides which evicted HBM blocks enter DDR and flash).
``belady`` is implemented here: with knowledge of the future it keeps, after each
request, the blocks whose next use is nearest (bypassing a block used later than
everything kept). Counting every cached block as a hit (``prefix_only=False``) that is
the optimum (tests check it against exhaustive search); counting prefix hits it is a
clairvoyant reference, not a proven optimum.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cache.policies.admission import AdmissionPolicy

BELADY = "belady"
ORACLE_ADMISSION = "oracle"
"""Clairvoyant admission, ``EVICTION+oracle``: admits a block only if a later request
uses it again. A heuristic, not a bound: admitting a block used again *later* can
evict one used *sooner* (LRU of one block over A, B, A, A, B: admitting B gives 1 hit,
refusing it 2). It shows how much a filter that knew reuse could gain here."""
REQUIRED_POLICIES = ("lru", BELADY)


class EvictionPolicy(Protocol):
    """The interface of ``cache.policies.eviction`` policies, as used here."""

    def insert(self, key: int) -> None: ...
    def note_request(self, hashes: Sequence[int]) -> None: ...
    def touch(self, key: int) -> None: ...
    def remove(self, key: int) -> None: ...
    def pop_victim(self) -> int | None: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...


PolicyFactory = Callable[[int], tuple[EvictionPolicy, "AdmissionPolicy | None"]]
"""Builds the (eviction, admission) pair for a cache of the given capacity in blocks."""


class PolicyUnavailableError(RuntimeError):
    """A policy name that neither ``cache.policies`` nor this module provides."""


@dataclass(slots=True, frozen=True)
class PolicyTable:
    """Hit rates: ``hit_rate[policy][i]`` is at ``capacities[i]``."""

    capacities: list[int]
    hit_rate: dict[str, list[float]]
    num_accesses: int
    num_distinct: int

    def to_json(self) -> dict[str, object]:
        return {
            "capacities": self.capacities,
            "hit_rate": self.hit_rate,
            "num_accesses": self.num_accesses,
            "num_distinct_blocks": self.num_distinct,
        }


def simulate_online(
    requests: Sequence[Sequence[int]],
    policy: EvictionPolicy,
    capacity: int,
    admission: AdmissionPolicy | None = None,
    *,
    prefix_only: bool = True,
) -> int:
    """Number of block hits of ``policy`` (fresh, empty) at ``capacity`` blocks, with
    ``admission`` (default: admit every block) deciding what enters the cache."""
    _check_capacity(capacity)
    hits = 0
    for blocks in distinct_blocks(requests):
        if admission is not None:
            for key in blocks:
                admission.record_access(key)
        policy.note_request(blocks)
        hits += _count_hits(blocks, policy, prefix_only)
        for key in reversed(blocks):  # leaf first: parents end up more recent
            if key in policy:
                policy.touch(key)
                continue
            if admission is not None and not admission.should_admit(key):
                continue
            while len(policy) >= capacity:
                if policy.pop_victim() is None:
                    break
            if len(policy) < capacity:
                policy.insert(key)
    return hits


def simulate_tiered(
    requests: Sequence[Sequence[int]],
    policy: EvictionPolicy,
    capacity: int,
    admission: AdmissionPolicy,
    hbm_blocks: int,
) -> int:
    """Prefix hits of the server's two-level shape: ``hbm_blocks`` of LRU "HBM" that
    holds every block a request uses, over a lower tier of ``capacity - hbm_blocks``
    blocks run by ``policy``, which HBM's evicted blocks enter only if ``admission``
    admits them (write-back), or, for a write-through admission, as soon as a hit makes
    it admit them. Lower-tier hits are copied up (the lower tier keeps its copy)."""
    _check_capacity(capacity)
    if not 1 <= hbm_blocks < capacity:
        raise ValueError(f"hbm_blocks must be in [1, capacity), got {hbm_blocks}")
    from cache.policies.eviction import LruPolicy

    hbm: LruPolicy[int] = LruPolicy()
    lower_capacity = capacity - hbm_blocks
    hits = 0

    def store(key: int) -> None:
        while len(policy) >= lower_capacity:
            if policy.pop_victim() is None:
                return
        policy.insert(key)

    for blocks in distinct_blocks(requests):
        for key in blocks:
            admission.record_access(key)
        policy.note_request(blocks)
        n = 0
        for key in blocks:
            if key not in hbm and key not in policy:
                break
            n += 1
        hits += n
        for i, key in enumerate(reversed(blocks)):  # leaf first, as the server frees
            if key in policy:
                policy.touch(key)
            elif (
                admission.writes_through and len(blocks) - i <= n and (admission.should_admit(key))
            ):
                store(key)
            if key in hbm:
                hbm.touch(key)
                continue
            while len(hbm) >= hbm_blocks:
                victim = hbm.pop_victim()
                if victim is None or victim in policy:
                    continue
                if admission.should_admit(victim):
                    store(victim)
            hbm.insert(key)
    return hits


def _count_hits(
    blocks: Sequence[int], cached: EvictionPolicy | dict[int, int], prefix_only: bool
) -> int:
    """Prefix hits: leading blocks in ``cached`` up to the first missing one (or, with
    ``prefix_only=False``, every block in ``cached``)."""
    if not prefix_only:
        return sum(1 for key in blocks if key in cached)
    n = 0
    for key in blocks:
        if key not in cached:
            break
        n += 1
    return n


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


def simulate_belady(
    requests: Sequence[Sequence[int]],
    capacity: int,
    next_use: list[dict[int, int]] | None = None,
    *,
    prefix_only: bool = True,
) -> int:
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
        hits += _count_hits(blocks, cached, prefix_only)
        missing = []
        for key in blocks:
            nxt = next_use[i][key]
            if key in cached:
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


class _OracleAdmission:
    """Admits a block iff a request after the current one uses it.

    Follows the request it is in by counting ``record_access`` calls, which the
    simulators make once per distinct block of each request, in trace order."""

    writes_through = False

    def __init__(self, requests: Sequence[Sequence[int]]) -> None:
        self._requests = requests
        self._uses: dict[int, list[int]] = {}  # key -> indices of the requests using it
        for i, blocks in enumerate(requests):
            for key in blocks:
                self._uses.setdefault(key, []).append(i)
        self._request = -1
        self._left = 0

    def record_access(self, key: int) -> None:
        while self._left == 0:
            self._request += 1
            self._left = len(self._requests[self._request])
        self._left -= 1

    def should_admit(self, key: int) -> bool:
        uses = self._uses.get(key, [])
        return bisect.bisect_right(uses, self._request) < len(uses)


def registered_policy_names() -> list[str]:
    """Eviction policy names, each eviction policy combined with every admission policy
    but ``always`` (``lru+second-hit`` ...), plus ``belady``."""
    from cache.policies import admission, eviction  # the one non-HTTP dependency of load/

    combined = [
        f"{e}+{a}"
        for e in eviction.EVICTION_POLICIES
        for a in admission.ADMISSION_POLICIES
        if a != admission.DEFAULT_ADMISSION_POLICY
    ]
    oracles = [f"{e}+{ORACLE_ADMISSION}" for e in eviction.EVICTION_POLICIES]
    return [*eviction.EVICTION_POLICIES, *combined, *oracles, BELADY]


def online_factory(name: str) -> PolicyFactory:
    """A constructor of ``(eviction, admission)`` for a cache of ``capacity`` blocks, for
    a name ``EVICTION`` or ``EVICTION+ADMISSION``."""
    from cache.policies import admission, eviction

    evict_name, _, admit_name = name.partition("+")
    admit_name = admit_name or admission.DEFAULT_ADMISSION_POLICY
    if evict_name not in eviction.EVICTION_POLICIES or (
        admit_name not in admission.ADMISSION_POLICIES
    ):
        known = ", ".join([*eviction.EVICTION_POLICIES, BELADY])
        admits = ", ".join(admission.ADMISSION_POLICIES)
        raise PolicyUnavailableError(
            f"unknown policy {name!r}; known: {known}, optionally +ADMISSION from {admits}"
        )
    return lambda capacity: (
        eviction.make_policy(evict_name),
        admission.make_admission_policy(admit_name, capacity),
    )


def simulate(
    requests: Sequence[Sequence[int]],
    capacities: Sequence[int],
    policies: Sequence[str],
    factory: Callable[[str], PolicyFactory] = online_factory,
    hbm_fraction: float = 0.0,
) -> PolicyTable:
    """Prefix hit rate of every policy at every capacity. ``factory`` maps an online
    policy name to a constructor (default: ``cache.policies``). With ``hbm_fraction``
    > 0, online policies run in the server's two-level shape (:func:`simulate_tiered`,
    that share of each capacity being HBM); otherwise as one cache."""
    if not 0.0 <= hbm_fraction < 1.0:
        raise ValueError(f"hbm_fraction must be in [0, 1), got {hbm_fraction}")
    for c in capacities:
        _check_capacity(c)
    requests = distinct_blocks(requests)
    num_accesses = sum(len(b) for b in requests)
    table: dict[str, list[float]] = {}
    next_use = next_use_index(requests) if BELADY in policies else None
    for name in policies:
        evict_name, _, admit_name = name.partition("+")
        is_oracle = admit_name == ORACLE_ADMISSION
        make = None if name == BELADY else factory(evict_name if is_oracle else name)
        rates = []
        for capacity in capacities:
            if make is None:
                hits = simulate_belady(requests, capacity, next_use)
            else:
                policy, admission = make(capacity)
                if is_oracle:
                    admission = _OracleAdmission(requests)  # type: ignore[assignment]
                hbm_blocks = int(capacity * hbm_fraction)
                if hbm_blocks >= 1 and admission is not None:
                    hits = simulate_tiered(requests, policy, capacity, admission, hbm_blocks)
                else:
                    hits = simulate_online(requests, policy, capacity, admission)
            rates.append(hits / num_accesses if num_accesses else 0.0)
        table[name] = rates
    distinct = len({k for blocks in requests for k in blocks})
    return PolicyTable(list(capacities), table, num_accesses, distinct)


def _check_capacity(capacity: int) -> None:
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1 block, got {capacity}")
