"""Who gives way in a step: the scheduler's victim choices, as pure functions.

They only choose; the `Scheduler` preempts the request (or takes the chunks out of the
step) it is handed, and stays the one writer of request state. Priority: a lower value
is more urgent (vLLM's `priority`); among equals the most recently admitted gives way.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.engine.plan import ScheduledChunk
from server.engine.request import EngineRequest


def priority_of(request: EngineRequest) -> int:
    return request.priority


def victim_to_grow(
    request: EngineRequest, running: Sequence[EngineRequest], scheduled: Sequence[ScheduledChunk]
) -> EngineRequest:
    """The running request to preempt so `request` can grow: of those not scheduled in
    this step yet (`request` included), the one with the highest priority value, the
    most recently admitted among equals (`request` itself if no other is left)."""
    planned = {id(c.request) for c in scheduled}
    candidates = [r for r in running if id(r) not in planned] or [request]
    return max(reversed(candidates), key=priority_of)


def victim_for_priority(
    request: EngineRequest, running: Sequence[EngineRequest]
) -> EngineRequest | None:
    """The running request with the worst priority value, if worse than `request`'s
    (None: nobody gives way to it)."""
    worse = [r for r in running if r.priority > request.priority]
    return max(reversed(worse), key=priority_of) if worse else None


def chunks_to_reclaim(
    request: EngineRequest, chunks: Sequence[ScheduledChunk]
) -> list[ScheduledChunk]:
    """The planned chunks of requests with a worse priority value than `request`'s to take
    out of the step so that `request`'s tokens fit: worst first, until they free
    `request.num_tokens` tokens or none is left."""
    left = list(chunks)
    taken: list[ScheduledChunk] = []
    freed = 0
    while freed < request.num_tokens:
        worse = [c for c in left if c.request.priority > request.priority]
        if not worse:
            break
        chunk = max(reversed(worse), key=lambda c: c.request.priority)
        left.remove(chunk)
        taken.append(chunk)
        freed += chunk.num_new_tokens
    return taken
