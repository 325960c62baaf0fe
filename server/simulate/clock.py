"""The simulator's virtual clock and its modelled transfer lanes.

`VirtualClock` is the one notion of "now" in a simulation: seconds since the run
started, moved forward only by the event loop (`advance_to`, never backwards).

`VirtualLanes` is the `charge` hook the simulator hands the real `CacheManager`. The
manager's transfer lanes call it after every batch they read or write, as they call
`npu_sim.links.TransferClock.finish` in the server; here it never sleeps: each tier's
lane is busy on the virtual clock until `max(busy, now) + modelled seconds` (FIFO, as
the real lane), and the lane's last finish time is kept so the cache can tell when a
load it just submitted arrives. The simulator drains the (real, in-memory) transfer
threads before it moves the clock, so every charge of a job submitted at virtual time
`now` is made while the clock still reads `now`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from cache.stats import Tier
from npu_sim.links import TierPaths


class ClockError(RuntimeError):
    """Something asked the virtual clock to go backwards."""


@dataclass(slots=True)
class VirtualClock:
    """Virtual seconds since the run started; monotone."""

    now: float = 0.0

    def advance_to(self, t: float) -> None:
        """Move to `t` (>= now; `ClockError` otherwise)."""
        if t < self.now:
            raise ClockError(f"virtual clock asked to go back from {self.now} to {t}")
        self.now = t


@dataclass(slots=True)
class LaneTotals:
    """Per tier: modelled seconds and logical bytes moved (reads and writes)."""

    seconds: float = 0.0
    read_bytes: float = 0.0
    write_bytes: float = 0.0


@dataclass(slots=True)
class VirtualLanes:
    """Modelled per-tier transfer lanes on a `VirtualClock` (the manager's `charge`).

    paths: the modelled links (as the server's `TransferClock`).
    logical_per_stored: logical bytes per byte the simulator's tiny layout stores (so a
        block is charged at the emulated model's full block size).
    """

    clock: VirtualClock
    paths: TierPaths
    logical_per_stored: float
    busy_until: dict[Tier, float] = field(default_factory=dict)
    last_finish: dict[Tier, float] = field(default_factory=dict)
    totals: dict[Tier, LaneTotals] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, tier: Tier, stored_bytes: int, started: float, write: bool) -> float:
        """Charge one finished batch (see `cache.transfer.TransferCharge`); `started` is
        the lane's wall clock and is ignored. Returns the batch's virtual finish time."""
        logical = stored_bytes * self.logical_per_stored
        seconds = self.paths.seconds(tier.value, logical, write=write)
        with self._lock:
            start = max(self.busy_until.get(tier, 0.0), self.clock.now)
            finish = start + seconds
            self.busy_until[tier] = finish
            self.last_finish[tier] = finish
            totals = self.totals.setdefault(tier, LaneTotals())
            totals.seconds += seconds
            if write:
                totals.write_bytes += logical
            else:
                totals.read_bytes += logical
        return finish

    def finish_of_last(self, tier: Tier) -> float:
        """Virtual finish time of the last batch charged on `tier`'s lane (now if none)."""
        with self._lock:
            return self.last_finish.get(tier, self.clock.now)
