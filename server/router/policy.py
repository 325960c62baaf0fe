"""Routing policies: which replica gets a request.

`cache-aware` follows Dynamo's KV router: the cost of sending a request to a replica is

    overlap_weight x prefill_blocks + decode_blocks

where `prefill_blocks` is what the replica would have to compute (the request's prompt
blocks it does not hold in any tier, plus the uncached blocks of requests it is still
prefilling) and `decode_blocks` is the KV of every request it is running (prompt plus
expected output). The overlap is llm-d's "precise prefix" match: the leading prompt
blocks, hashed exactly as the replica hashes them, found in the replica's index as
rebuilt from its KV events. Blocks in DDR or flash count as held (reloading is far
cheaper than recomputing). Lowest cost wins; ties go round-robin.

`least-loaded` picks the fewest in-flight requests; `round-robin` cycles.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from cache.block_hash import BlockHash
from server.router.replica import Replica

# A prompt's block hashes per (numerics_id, block_size): replicas of one model share them.
_HashMemo = dict[tuple[str | None, int | None], list[BlockHash]]


@dataclass(slots=True)
class RouteRequest:
    """What the policy sees of a request."""

    token_ids: list[int] | None  # None: the router could not tokenize it
    cache_salt: str | None
    max_tokens: int


@dataclass(slots=True)
class Decision:
    replica: Replica
    num_prompt_blocks: int
    num_cached_blocks: int


class Router:
    """Picks replicas by one policy; called on the event loop only."""

    def __init__(self, replicas: list[Replica], policy: str, overlap_weight: float) -> None:
        self.replicas = replicas
        self.policy = policy
        self.overlap_weight = overlap_weight
        self._turn = itertools.count()

    def pick(self, request: RouteRequest, exclude: frozenset[str] = frozenset()) -> Decision:
        """The replica for `request` (never one in `exclude`, unless all are)."""
        candidates = [r for r in self.replicas if r.url not in exclude] or self.replicas
        turn = next(self._turn)
        # Rotate so ties break round-robin.
        start = turn % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        if self.policy == "round-robin":
            return self._decision(rotated[0], request, overlap=None)
        if self.policy == "least-loaded" or request.token_ids is None:
            return self._decision(min(rotated, key=lambda r: len(r.in_flight)), request, None)
        best: Decision | None = None
        best_cost = 0.0
        hashes: _HashMemo = {}  # the prompt is hashed once, not once per replica
        for replica in rotated:
            decision = self._decision(replica, request, overlap=True, hashes=hashes)
            new_blocks = decision.num_prompt_blocks - decision.num_cached_blocks
            cost = (
                self.overlap_weight * (new_blocks + replica.prefill_blocks())
                + replica.active_blocks()
            )
            if best is None or cost < best_cost:
                best, best_cost = decision, cost
        assert best is not None
        return best

    def _decision(
        self,
        replica: Replica,
        request: RouteRequest,
        overlap: bool | None,
        hashes: _HashMemo | None = None,
    ) -> Decision:
        if request.token_ids is None or replica.block_size is None:
            return Decision(replica, 0, 0)
        num_prompt = len(request.token_ids) // replica.block_size
        cached = 0
        if overlap and replica.is_cache_aware:
            memo = {} if hashes is None else hashes
            key = (replica.numerics_id, replica.block_size)
            if key not in memo:
                memo[key] = replica.block_hashes(request.token_ids, request.cache_salt)
            cached = len(replica.cached_prefix(memo[key]))
        return Decision(replica, num_prompt, cached)
