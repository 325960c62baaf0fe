"""The scheduler's terms: its configuration (`SchedulerConfig`) and what one step
decides (`Scheduler.schedule`'s `SchedulerOutput`: the chunks to run and the requests
it preempted). The engine core runs the chunks and hands the plan back to
`Scheduler.update_from_output`."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.engine.request import EngineRequest


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int
    # A waiting request may preempt running requests of a worse (higher) priority value
    # to be admitted at once (vNPU engines; `Scheduler._preempt_for_priority`). Off: a
    # waiting request never preempts, it waits for room.
    preempt_for_priority: bool = False
    prefetch_blocks: int = 0  # most HBM blocks prefetches for queued requests hold; 0: off


@dataclass(slots=True)
class ScheduledChunk:
    request: EngineRequest
    num_new_tokens: int


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[EngineRequest] = field(default_factory=list)

    @property
    def num_planned_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)
