"""The scheduler's queue of waiting requests, ordered by priority.

Lower priority values first; within a priority, new requests in arrival order and a
resumed (preempted) request before the others, so it resumes first (vLLM's order).
"""

from __future__ import annotations

from collections import deque

from server.engine.request import EngineRequest


class WaitingQueue(deque[EngineRequest]):
    """A deque kept in priority order by `enqueue` (the scheduler's only insertion).

    Everything else is the deque's: the scheduler pops the head, removes aborted
    requests and walks it in order. Engine thread only, like the scheduler that owns it.
    """

    def enqueue(self, request: EngineRequest, resumed: bool) -> None:
        """Insert `request`: a new request after every request of its priority, a
        resumed one before them."""
        p = request.priority
        # The queue is sorted by priority value: the common cases (a new request that is
        # not better than the last one, a resumed one not worse than the first) need no
        # walk of a long queue.
        if not resumed and (not self or self[-1].priority <= p):
            self.append(request)
            return
        if resumed and (not self or self[0].priority >= p):
            self.appendleft(request)
            return
        index = len(self)
        for i, other in enumerate(self):
            if other.priority > p or (resumed and other.priority == p):
                index = i
                break
        self.insert(index, request)
