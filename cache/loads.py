"""The cache manager's book of loads: from `admit` / `prefetch` until `poll` hands them over.

Every load gets a ticket when it is submitted. It stays pending until its transfer
lands (or is abandoned at its deadline); a landed load waits in the hand-over list
until `CacheManager.poll` takes it, so no path can lose one. A load can be cancelled
while pending (its blocks are freed when it lands) or after landing but before the
hand-over (its blocks are freed at once).

A prefetch (a load for a request still queued) also remembers which blocks it brought
up from which tier, so that the admission that later finds them in HBM counts them as
hits of the tier they came from.

Engine thread only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from cache.block_hash import BlockHash
from cache.records import FinishedLoad
from cache.stats import Tier


@dataclass(slots=True)
class _Pending:
    key: str
    is_prefetch: bool
    cancelled_blocks: list[int] | None = None  # set by cancel: free these on arrival


class LoadBook:
    """Pending and landed loads, by ticket and by key."""

    def __init__(self) -> None:
        self._tickets = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._landed: list[FinishedLoad] = []
        self._prefetched: dict[str, dict[BlockHash, Tier]] = {}

    @property
    def num_in_flight(self) -> int:
        """Loads pending and not cancelled, or landed and not handed over (prefetches too)."""
        pending = sum(1 for p in self._pending.values() if p.cancelled_blocks is None)
        return pending + len(self._landed)

    def start(self, key: str, *, is_prefetch: bool = False) -> int:
        """A new load under `key`; returns its ticket."""
        ticket = next(self._tickets)
        self._pending[ticket] = _Pending(key, is_prefetch)
        return ticket

    def is_prefetch(self, ticket: int) -> bool:
        return self._pending[ticket].is_prefetch

    def cancel(self, key: str, block_ids: Sequence[int]) -> list[int]:
        """Cancel the load under `key`; returns the blocks to free now (none while the
        load is pending: `land` returns them then). KeyError if there is no such load."""
        for pending in self._pending.values():
            if pending.key == key and pending.cancelled_blocks is None:
                pending.cancelled_blocks = list(block_ids)
                return []
        for i, done in enumerate(self._landed):
            if done.key == key:
                del self._landed[i]
                self._prefetched.pop(key, None)
                return list(block_ids)
        raise KeyError(f"no load pending under {key!r}")

    def land(self, ticket: int, loaded: Sequence[tuple[BlockHash, int, Tier]]) -> list[int]:
        """The load is over with `loaded` (its leading items, (hash, HBM block, source
        tier), that arrived intact).

        Returns the blocks to free now (a cancelled load's), else queues the hand-over."""
        pending = self._pending.pop(ticket)
        if pending.cancelled_blocks is not None:
            return pending.cancelled_blocks
        if pending.is_prefetch:
            self._prefetched[pending.key] = {h: t for h, _, t in loaded}
        self._landed.append(FinishedLoad(pending.key, len(loaded)))
        return []

    def hand_over(self) -> list[FinishedLoad]:
        """Every load landed since the last call, each once."""
        landed, self._landed = self._landed, []
        return landed

    def take_prefetched(self, key: str) -> dict[BlockHash, Tier]:
        """Forget (and return) what a landed prefetch under `key` brought up, and whence."""
        return self._prefetched.pop(key, {})
