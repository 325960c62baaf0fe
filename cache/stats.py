"""Cache statistics: plain counters owned by the engine thread.

The transfer thread never writes here: it reports figures in its job results and the
manager (engine thread) adds them up, so every counter has a single writer. Readers on
other threads (the /metrics scrape) take `snapshot()` copies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum


class Tier(StrEnum):
    HBM = "hbm"
    DDR = "ddr"
    FLASH = "flash"


class TierOp(StrEnum):
    """Tier operations whose failures are counted (`TierStats.io_errors_by_op`)."""

    LOAD = "load"  # reload into HBM
    STORE = "store"  # spill from HBM, write-back at shutdown
    DEMOTE = "demote"  # DDR -> flash
    REMOVE = "remove"
    SCAN = "scan"  # index rebuild at start-up


HEALTH_STATES = ("ok", "degraded", "down", "quarantined", "disabled")
"""Values of `TierStats.health`: ok and degraded serve traffic; down, quarantined
(its store was moved aside at start-up; a fresh one may serve) and disabled do not count
as up in `tierkv:tier_up`."""


# Reload latency buckets (seconds): a 16 KiB block from a local Redis takes ~50 us, a
# 2k-token prefix (125 blocks) a few ms; flash on a cold page cache can take longer.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


@dataclass(slots=True)
class LatencyHistogram:
    """Fixed-bucket histogram (cumulative counts are derived when exported)."""

    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total_seconds: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1
                break
        else:
            self.bucket_counts[-1] += 1
        self.total_seconds += seconds
        self.count += 1

    def copy(self) -> LatencyHistogram:
        return LatencyHistogram(list(self.bucket_counts), self.total_seconds, self.count)


@dataclass(slots=True)
class TierStats:
    """Per-tier counters. Block counts are in blocks, sizes in bytes."""

    hit_blocks: int = 0
    miss_blocks: int = 0
    admission_rejects: int = 0  # evicted HBM blocks the admission policy kept out of here
    read_bytes: int = 0
    write_bytes: int = 0
    used_bytes: int = 0
    capacity_bytes: int = 0
    num_blocks: int = 0
    active_blocks: int = 0  # HBM only: blocks referenced by requests
    evictions: int = 0
    checksum_failures: int = 0
    io_errors: int = 0  # every failed operation; by operation in io_errors_by_op
    io_errors_by_op: dict[TierOp, int] = field(default_factory=lambda: {o: 0 for o in TierOp})
    wrong_size_blocks: int = 0  # entries of the wrong size found (and deleted) at start-up
    index_repairs: int = 0  # index entries dropped because the store no longer had them
    reload_timeouts: int = 0  # loads abandoned at their deadline (the request recomputed)
    faults_injected: dict[str, int] = field(default_factory=dict)  # by kind (--tier-faults)
    reload_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    health: str = "ok"  # one of HEALTH_STATES
    health_detail: str = ""

    def count_io_error(self, op: TierOp, num: int = 1) -> None:
        self.io_errors += num
        self.io_errors_by_op[op] += num

    @property
    def is_up(self) -> bool:
        return self.health in ("ok", "degraded")

    def copy(self) -> TierStats:
        return dataclasses.replace(
            self,
            io_errors_by_op=dict(self.io_errors_by_op),
            faults_injected=dict(self.faults_injected),
            reload_latency=self.reload_latency.copy(),
        )


@dataclass(slots=True)
class CacheStats:
    """Everything the cache manager counts; exported by the server's /metrics."""

    query_tokens: int = 0
    hit_tokens: dict[Tier, int] = field(default_factory=lambda: {t: 0 for t in Tier})
    tiers: dict[Tier, TierStats] = field(default_factory=lambda: {t: TierStats() for t in Tier})

    def snapshot(self) -> CacheStats:
        """An independent copy (taken once per engine step: explicit, not deepcopy)."""
        return CacheStats(
            self.query_tokens, dict(self.hit_tokens), {t: s.copy() for t, s in self.tiers.items()}
        )
