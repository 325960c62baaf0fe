"""The cache manager on the virtual clock: loads arrive when the modelled lanes say.

`VirtualTimeCache` is the server's `CacheManager`, unchanged but for its public load
methods. `admit` and `prefetch` note, for a request whose prefix must come up from DDR
or flash, the
virtual time its load arrives: the finish, on the `VirtualLanes`, of the last batch its
tiers' lanes carried (the load is the last job `admit` submits, so after the drain it
is the last charge on each of its lanes). `poll` hands a finished load to the caller
only once the virtual clock has reached that time. Everything else (matching,
admission, eviction, spills, demotion, policies, statistics) is the manager's own code.

`--reload-timeout-ms` is applied on the virtual clock: a load whose last part arrives
after its deadline is handed over at the deadline with the leading blocks whose lane
part had arrived by then (as `LoadGuard` marks them in the server), and the hits of the
others are taken back out of the statistics and counted as a reload timeout.

Approximations: a loaded block is registered in HBM (visible to other requests) when
the in-memory transfer finished, which may be before its modelled arrival (a block past
an abandoned load's deadline stays registered, where the server recomputes it); an
abandoned load's lane time is charged in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cache.layout import KVLayout
from cache.manager import CacheManager
from cache.records import Admission, CacheConfig, FinishedLoad, PrefixHit
from cache.stats import Tier
from cache.tiers.base import StorageTier
from server.simulate.clock import VirtualLanes
from server.simulate.inline_worker import make_inline


@dataclass(slots=True)
class _VirtualLoad:
    tiers: list[Tier]  # source tier of each block, in chain order
    arrival: float  # virtual time it is handed over (its deadline, if it misses it)
    num_in_time: int  # leading blocks whose lane part arrived by then


class VirtualTimeCache(CacheManager):
    """A `CacheManager` whose loads finish on the virtual clock. Simulator thread only."""

    def __init__(
        self,
        layout: KVLayout,
        config: CacheConfig,
        lanes: VirtualLanes,
        ddr: StorageTier | None = None,
        flash: StorageTier | None = None,
        reload_timeout_s: float = 0.0,
    ) -> None:
        """`config.reload_timeout_s` must be 0 (no wall-clock deadlines);
        `reload_timeout_s` is the deadline on the virtual clock (0: none)."""
        if config.reload_timeout_s:
            raise ValueError("the simulator's deadlines are virtual: reload_timeout_s")
        super().__init__(layout, config, ddr=ddr, flash=flash, charge=lanes)
        make_inline(self._worker)  # in-memory tiers, virtual time: no threads needed
        self._lanes = lanes
        self._timeout = reload_timeout_s
        self._virtual: dict[str, _VirtualLoad] = {}  # by load key, until handed over
        self._landed: list[FinishedLoad] = []  # finished for real, not yet due

    def admit(
        self,
        hit: PrefixHit,
        key: str,
        num_query_tokens: int,
        num_query_blocks: int,
        num_new_blocks: int = 0,
        num_head_blocks: int = 0,
    ) -> Admission | None:
        admission = super().admit(
            hit, key, num_query_tokens, num_query_blocks, num_new_blocks, num_head_blocks
        )
        if admission is not None and admission.is_loading:
            self._note_load(hit, key)
        return admission

    def prefetch(self, hit: PrefixHit, key: str) -> Admission | None:
        admission = super().prefetch(hit, key)
        if admission is not None and admission.is_loading:
            self._note_load(hit, key)
        return admission

    def _note_load(self, hit: PrefixHit, key: str) -> None:
        """When the load just submitted under `key` arrives on the virtual lanes."""
        self.wait_transfers()
        tiers = [tier for _, tier in hit.lower]
        finish = {t: self._lanes.finish_of_last(t) for t in set(tiers)}
        load = _VirtualLoad(tiers, max(finish.values()), len(tiers))
        deadline = self._lanes.clock.now + self._timeout
        if self._timeout > 0 and load.arrival > deadline:
            late = [i for i, t in enumerate(tiers) if finish[t] > deadline]
            load.arrival, load.num_in_time = deadline, late[0]
        self._virtual[key] = load

    def poll(self) -> list[FinishedLoad]:
        """Loads whose modelled arrival is due, in arrival order."""
        self.wait_transfers()
        self._landed.extend(super().poll())
        now = self._lanes.clock.now
        due = [d for d in self._landed if self._virtual[d.key].arrival <= now]
        if not due:
            return []
        self._landed = [d for d in self._landed if self._virtual[d.key].arrival > now]
        due.sort(key=lambda d: self._virtual[d.key].arrival)
        return [self._hand_over(done) for done in due]

    def _hand_over(self, done: FinishedLoad) -> FinishedLoad:
        load = self._virtual.pop(done.key)
        if load.num_in_time >= done.num_loaded_blocks:
            return done
        # Abandoned at its deadline: the blocks after `num_in_time` are recomputed.
        late = load.tiers[load.num_in_time : done.num_loaded_blocks]
        for tier in late:
            self.stats.tiers[tier].hit_blocks -= 1
            self.stats.hit_tokens[tier] -= self.layout.block_size
        for tier in set(load.tiers[load.num_in_time :]):
            self.stats.tiers[tier].reload_timeouts += 1
        return FinishedLoad(done.key, load.num_in_time)

    def cancel_load(self, key: str, block_ids: Sequence[int]) -> None:
        self.wait_transfers()
        self._landed.extend(super().poll())
        self._virtual.pop(key, None)
        for i, done in enumerate(self._landed):
            if done.key == key:
                del self._landed[i]
                self.pool.free(block_ids)
                return
        super().cancel_load(key, block_ids)

    def next_load_arrival(self) -> float | None:
        """The earliest virtual time a load not yet handed over arrives (None: none)."""
        return min((v.arrival for v in self._virtual.values()), default=None)
