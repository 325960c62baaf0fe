"""The cache manager on the virtual clock: loads arrive when the modelled lanes say.

`VirtualTimeCache` is the server's `CacheManager`, unchanged but for two public
methods. `admit` notes, for a request whose prefix must come up from DDR or flash, the
virtual time its load arrives: the finish, on the `VirtualLanes`, of the last batch its
tiers' lanes carried (the load is the last job `admit` submits, so after the drain it
is the last charge on each of its lanes). `poll` hands a finished load to the caller
only once the virtual clock has reached that time. Everything else (matching,
admission, eviction, spills, demotion, policies, statistics) is the manager's own code.

Not modelled: `--reload-timeout-ms` (a load is never abandoned), and a loaded block is
registered in HBM (visible to other requests) when the in-memory transfer finished,
which may be before its modelled arrival.
"""

from __future__ import annotations

from collections.abc import Sequence

from cache.layout import KVLayout
from cache.manager import CacheManager
from cache.records import Admission, CacheConfig, FinishedLoad, PrefixHit
from cache.tiers.base import StorageTier
from server.simulate.clock import VirtualLanes


class VirtualTimeCache(CacheManager):
    """A `CacheManager` whose loads finish on the virtual clock. Simulator thread only."""

    def __init__(
        self,
        layout: KVLayout,
        config: CacheConfig,
        lanes: VirtualLanes,
        ddr: StorageTier | None = None,
        flash: StorageTier | None = None,
    ) -> None:
        super().__init__(layout, config, ddr=ddr, flash=flash, charge=lanes)
        self._lanes = lanes
        self._arrivals: dict[str, float] = {}  # load key -> virtual arrival time
        self._landed: list[FinishedLoad] = []  # finished for real, not yet due

    def admit(
        self,
        hit: PrefixHit,
        key: str,
        num_query_tokens: int,
        num_query_blocks: int,
        num_new_blocks: int = 0,
    ) -> Admission | None:
        admission = super().admit(hit, key, num_query_tokens, num_query_blocks, num_new_blocks)
        if admission is not None and admission.is_loading:
            self.wait_transfers()
            tiers = {tier for _, tier in hit.lower}
            self._arrivals[key] = max(self._lanes.finish_of_last(t) for t in tiers)
        return admission

    def poll(self) -> list[FinishedLoad]:
        """Loads whose modelled arrival is due, in arrival order."""
        self.wait_transfers()
        self._landed.extend(super().poll())
        now = self._lanes.clock.now
        due = [d for d in self._landed if self._arrivals[d.key] <= now]
        if not due:
            return []
        self._landed = [d for d in self._landed if self._arrivals[d.key] > now]
        due.sort(key=lambda d: self._arrivals[d.key])
        for done in due:
            del self._arrivals[done.key]
        return due

    def cancel_load(self, key: str, block_ids: Sequence[int]) -> None:
        self.wait_transfers()
        self._landed.extend(super().poll())
        self._arrivals.pop(key, None)
        for i, done in enumerate(self._landed):
            if done.key == key:
                del self._landed[i]
                self.pool.free(block_ids)
                return
        super().cancel_load(key, block_ids)

    def next_load_arrival(self) -> float | None:
        """The earliest virtual time a load not yet handed over arrives (None: none)."""
        return min(self._arrivals.values(), default=None)
