"""What one scheduling step decides (`Scheduler.schedule`): the chunks to run and the
requests it preempted. The engine core runs the chunks and hands the plan back to
`Scheduler.update_from_output`."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.engine.request import EngineRequest


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
