"""The jobs the cache manager hands its transfer lanes (`cache.transfer`), and their
results: what to store, demote, remove or load, and how each block fared.

Plain data, shared by the engine thread (which builds jobs and reads results) and the
lanes (which run jobs and fill results); `LoadGuard` is the one lock between them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from cache.block_hash import BlockHash
from cache.stats import Tier, TierOp


class LoadStatus(StrEnum):
    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"
    IO_ERROR = "io_error"


@dataclass(slots=True)
class StoreJob:
    """Write `blocks[i]` into `tier` under `keys[i]`.

    `blocks` is the job's own staging copy of the blocks' KV (one block per leading
    index), gathered from the HBM pool by the engine thread in one copy when it submits
    the job, so the slots are free to reuse at once. The lane encodes it
    (`encode_blocks`: header and checksum per block) and writes it: the engine thread
    does no per-block encoding work for a spill.
    """

    tier: Tier
    keys: list[BlockHash]
    blocks: np.ndarray

    def take(self, tier: Tier, rows: list[int]) -> StoreJob:
        """A job writing the blocks at `rows` of this one to `tier` (engine thread: a
        failed spill falling through; no copy when `rows` is all of them)."""
        blocks = self.blocks if len(rows) == len(self.keys) else self.blocks[rows]
        return StoreJob(tier, [self.keys[i] for i in rows], blocks)


@dataclass(slots=True)
class DemoteJob:
    """Move blocks from DDR to flash (read, write, delete), or copy them (`keep_source`)."""

    keys: list[BlockHash]
    keep_source: bool = False


@dataclass(slots=True)
class RemoveJob:
    tier: Tier
    keys: list[BlockHash]


class LoadGuard:
    """Makes abandoning a load and copying its blocks into HBM mutually exclusive.

    The transfer thread copies the load's blocks in pieces of at most
    `COPY_CHUNK_BLOCKS` (one `BlockDecoder` call each) under `lock` and only if the load
    is not abandoned, so `abandon()` may wait for one piece's copy; `abandon()` (engine
    thread, at the load's deadline) takes the same lock, so once it returns no byte of
    this load reaches HBM again and the slots can be recomputed into. `statuses[i]` is
    OK once block i is in its slot and its transfer has been charged (with pacing, once
    the modelled link has carried it).
    """

    __slots__ = ("lock", "abandoned", "statuses")

    def __init__(self, num_items: int) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.statuses = [LoadStatus.MISSING] * num_items

    def abandon(self) -> list[LoadStatus]:
        """Stop the load; return the statuses as of now (OK blocks are in their slots)."""
        with self.lock:
            self.abandoned = True
            return list(self.statuses)


@dataclass(slots=True)
class LoadJob:
    """Copy blocks from lower tiers into reserved HBM slots, validating every block."""

    ticket: int
    items: list[tuple[BlockHash, int, Tier]]  # (hash, HBM block id, source tier)
    guard: LoadGuard | None = None  # None: never abandoned
    urgent: bool = True  # a request waits for it: it passes queued work (see _Lane.put)


Job = StoreJob | DemoteJob | RemoveJob | LoadJob


@dataclass(slots=True)
class JobResult:
    """What a job did. `statuses` is per item for loads and stores (OK or IO_ERROR).

    `failures` lists each failed tier operation once, as (tier, operation).
    """

    job: Job
    statuses: list[LoadStatus] = field(default_factory=list)
    read_bytes: dict[Tier, int] = field(default_factory=dict)
    write_bytes: dict[Tier, int] = field(default_factory=dict)
    seconds: dict[Tier, float] = field(default_factory=dict)
    error: str | None = None
    failures: list[tuple[Tier, TierOp]] = field(default_factory=list)

    def fail(self, tier: Tier, op: TierOp, exc: Exception) -> None:
        self.failures.append((tier, op))
        self.error = f"{self.error}; {exc}" if self.error else str(exc)


def job_op(job: Job) -> TierOp:
    """The operation a job performs, for counting its failures."""
    if isinstance(job, LoadJob):
        return TierOp.LOAD
    if isinstance(job, StoreJob):
        return TierOp.STORE
    if isinstance(job, DemoteJob):
        return TierOp.DEMOTE
    return TierOp.REMOVE
