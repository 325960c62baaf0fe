"""Transfer lanes that run their jobs at submission, on the caller's thread (simulator only).

In the server each lower tier's jobs run FIFO on their own thread. The simulator's tiers
are in-memory dicts and its clock is virtual (`VirtualLanes` charges every job when it
runs), so threads only cost hand-offs: for an hour of trace they were the largest cost
of a run. `make_inline` keeps the `TransferWorker` (its jobs, FIFO order, results and
accounting) and replaces only its lanes with ones that run each task as it is queued,
which is the same order the threads run them in. It reaches into `TransferWorker`'s
lanes (`_lanes`, each with `put(run, keys, urgent)` and `thread.join`; a lane stops at a
`None` task): tests/server/test_simulate.py breaks if that changes. Urgent loads passing
queued tasks (the server's lanes) cannot happen here: nothing is ever queued.
"""

from __future__ import annotations

from collections.abc import Callable

from cache.block_hash import BlockHash
from cache.transfer import TransferWorker


class _NoThread:
    def join(self, timeout: float | None = None) -> None:
        return None


class _InlineLane:
    def __init__(self) -> None:
        self.thread = _NoThread()

    def put(
        self,
        run: Callable[[], None] | None,
        keys: frozenset[BlockHash] = frozenset(),
        urgent: bool = False,
    ) -> None:
        if run is not None:
            run()


def make_inline(worker: TransferWorker) -> None:
    """Stop `worker`'s lane threads (idle: call before submitting anything) and run its
    tasks inline from now on."""
    lanes = worker._lanes
    for lane in lanes.values():
        lane.put(None)
    for lane in lanes.values():
        lane.thread.join()
    for tier in list(lanes):
        lanes[tier] = _InlineLane()  # type: ignore[assignment]
