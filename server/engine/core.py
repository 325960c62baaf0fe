"""EngineCore: one scheduling step, one executor step, the scheduler applies the results.

The core never writes request state: it turns the scheduler's plan into executor inputs
and hands the sampled tokens back to `Scheduler.update_from_output`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cache.manager import CacheManager
from npu_sim.executor import Executor, StepSequence
from server.engine.overlap import TransferOverlap
from server.engine.request import EngineRequest, FinishedRequest, RequestOutput
from server.engine.scheduler import Scheduler, SchedulerOutput


@dataclass(slots=True)
class EngineStats:
    """Engine counters, published as a fresh copy after every step (single writer)."""

    num_running: int = 0
    num_waiting: int = 0
    num_loading: int = 0
    num_preemptions: int = 0
    num_steps: int = 0
    num_prompt_tokens_computed: int = 0
    num_generated_tokens: int = 0
    modelled_busy_seconds: float = 0.0
    wall_busy_seconds: float = 0.0  # from each step's start on the device to its return
    host_overlap_seconds: float = 0.0  # host time between steps hidden behind the device
    num_prefetched_blocks: int = 0
    load_inflight_seconds: float = 0.0  # see server.engine.overlap
    load_exposed_seconds: float = 0.0


@dataclass(slots=True)
class PlannedStep:
    """A scheduled step and the executor inputs built from it."""

    plan: SchedulerOutput
    seqs: list[StepSequence]


class EngineCore:
    """Runs steps on the engine thread: schedule -> execute -> update requests."""

    def __init__(
        self,
        scheduler: Scheduler,
        executor: Executor,
        cache: CacheManager,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`clock` times the load overlap (`TransferOverlap`)."""
        self.scheduler = scheduler
        self.executor = executor
        self.cache = cache
        self.stats = EngineStats()
        self.overlap = TransferOverlap()
        self.ran_step = False  # the last step() ran a batch (else nothing was schedulable)
        self._clock = clock

    def add(self, request: EngineRequest) -> None:
        self.scheduler.add(request)

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    def poll_transfers(self) -> None:
        self.scheduler.update_from_loads()
        self._observe(busy=None if self.has_work() else False)

    def has_work(self) -> bool:
        return self.scheduler.has_schedulable_work()

    def take_finished(self) -> list[FinishedRequest]:
        """Requests finished since the last call (by step or abort), each once; the
        model is told they finished (`Executor.release`)."""
        finished = self.scheduler.take_finished()
        if finished:
            self.executor.release(f.request_id for f in finished)
        return finished

    def step(self) -> list[RequestOutput]:
        """Run one batch. Returns an output for every request that got a token or finished."""
        planned = self.plan()
        return [] if planned is None else self.execute(planned)

    def idle(self) -> None:
        """Nothing to run this iteration: the device idles (see `Executor.idle`)."""
        self.executor.idle()

    def plan(self) -> PlannedStep | None:
        """Schedule the next step (None: nothing to run). A plan that is dropped instead
        of executed has no effect beyond blocks the scheduler reserved and admissions it
        made, which the next plan reuses (used to cut a step short on a vNPU)."""
        plan = self.scheduler.schedule()
        self.ran_step = bool(plan.chunks)
        self._observe(busy=self.ran_step)
        if not plan.chunks:
            self.idle()
            return None
        seqs = []
        for chunk in plan.chunks:
            req, start = chunk.request, chunk.request.num_computed_tokens
            end = start + chunk.num_new_tokens
            seqs.append(
                StepSequence(
                    seq_id=req.request_id,
                    token_ids=req.token_ids(start, end),
                    start_pos=start,
                    block_table=req.block_ids,
                    sampler=req.sampler if end == req.num_tokens else None,
                )
            )
        return PlannedStep(plan, seqs)

    def execute(self, planned: PlannedStep) -> list[RequestOutput]:
        """Run a plan from `plan()` (the latest one, nothing scheduled in between)."""
        for seq in planned.seqs:
            n_prompt = len(self.scheduler.requests[seq.seq_id].prompt_token_ids)
            end = seq.start_pos + len(seq.token_ids)
            self.stats.num_prompt_tokens_computed += max(0, min(end, n_prompt) - seq.start_pos)
        result = self.executor.step(planned.seqs)
        self.stats.num_steps += 1
        self.stats.modelled_busy_seconds += result.modelled_seconds
        self.stats.wall_busy_seconds += result.wall_seconds
        self.stats.host_overlap_seconds += result.host_overlap_seconds
        self.stats.num_generated_tokens += len(result.sampled)
        return self.scheduler.update_from_output(planned.plan, result.sampled)

    def refresh_stats(self) -> EngineStats:
        """Bring the queue-length gauges up to date and return the stats record."""
        s = self.stats
        s.num_running = len(self.scheduler.running)
        s.num_waiting = len(self.scheduler.waiting)
        s.num_loading = self.scheduler.num_loading
        s.num_preemptions = self.scheduler.num_preemptions
        s.num_prefetched_blocks = self.scheduler.num_prefetched_blocks
        s.load_inflight_seconds = self.overlap.inflight_seconds
        s.load_exposed_seconds = self.overlap.exposed_seconds
        return s

    def _observe(self, busy: bool | None) -> None:
        """The device is busy from one non-empty plan until a plan (or a poll with no
        work) finds nothing to run: host time between steps is not load waiting. A load
        counts while a request waits for it (`Scheduler.is_waiting_for_loads`): a queued
        request's prefetch nobody waits for yet is neither hidden nor exposed."""
        loading = self.scheduler.is_waiting_for_loads
        self.overlap.observe(self._clock(), loading=loading, busy=busy)
