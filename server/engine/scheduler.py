"""Continuous batching with chunked prefill, prefix reuse across tiers, and preemption.

The scheduler is the one writer of request state (docs/architecture.md, "Who writes
request state"). Each step spends a token budget on running requests (a decode token, a
prefill chunk), then on admitting waiting ones: all or nothing, with the prefix found
in any tier; DDR/flash blocks reload while the request waits in LOADING_KV. Short of
HBM, the newest running request is preempted (its full blocks stay cached) and resumes
from cache; with `preempt_for_priority` (vNPU engines) a waiting request takes budget,
seats and HBM from requests of a worse priority value. `update_from_output` applies a
step: tokens, block commits, every finish.

A live request is in `requests` and in exactly one of `waiting` and `running`, or in
neither while its KV is loading (the cache manager reports the load under its id).
Delegated, and owned by the scheduler: the order of `waiting` (`waiting.py`), prefetch
for queued requests (`prefetch.py`: writes only a request's prefetch fields), who gives
way (`preemption.py`: pure) and a token's text and stop (`finish.py`: the detokenizer).
"""

from __future__ import annotations

import logging
import time

from cache.manager import CacheManager
from cache.records import PrefixHit
from server.engine.finish import finished_record, token_output
from server.engine.load_planner import LoadPlanner
from server.engine.plan import ScheduledChunk, SchedulerConfig, SchedulerOutput
from server.engine.preemption import (
    chunks_to_reclaim,
    priority_of,
    victim_for_priority,
    victim_to_grow,
)
from server.engine.prefetch import Prefetcher
from server.engine.request import (
    EngineRequest,
    FinishedRequest,
    FinishReason,
    RequestOutput,
    RequestStatus,
    TailLoad,
)
from server.engine.waiting import WaitingQueue

__all__ = ["ScheduledChunk", "Scheduler", "SchedulerConfig", "SchedulerOutput"]

logger = logging.getLogger(__name__)


class Scheduler:
    """Owns every live request and its state. Engine thread only."""

    def __init__(
        self, config: SchedulerConfig, cache: CacheManager, planner: LoadPlanner | None = None
    ) -> None:
        """`planner`: decides how much of a lower-tier hit to reload rather than recompute
        (None: reload every block found)."""
        self.config = config
        self.cache = cache
        self._planner = planner
        self.requests: dict[str, EngineRequest] = {}  # every live request, by id
        self.waiting = WaitingQueue()
        self.running: list[EngineRequest] = []
        self.num_preemptions = 0
        self._prefetcher = Prefetcher(cache, config.prefetch_blocks)
        self._finished: list[FinishedRequest] = []  # until take_finished()

    @property
    def num_prefetched_blocks(self) -> int:
        """Lower-tier blocks prefetches started loading."""
        return self._prefetcher.num_prefetched_blocks

    @property
    def num_loading(self) -> int:
        return len(self.requests) - len(self.waiting) - len(self.running)

    @property
    def is_waiting_for_loads(self) -> bool:
        """A request waits for a load: admitted in LOADING_KV, or running a split hit
        whose tail has not landed. A prefetch for a queued request does not count."""
        return self.num_loading > 0 or any(
            r.tail_load is not None and r.tail_load.num_loaded is None for r in self.running
        )

    def has_schedulable_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, request: EngineRequest) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request {request.request_id} is already in the engine")
        request.update_block_hashes(self.config.block_size)
        # Before anything touches its blocks (a prefetch, the admission): the eviction
        # policy files them under this request (`cache.policies.prefix_aware`).
        self.cache.note_request(request.block_hashes)
        self.requests[request.request_id] = request
        self.waiting.enqueue(request, resumed=False)

    def abort(self, request_id: str) -> None:
        """Finish a live request now (`abort`); unknown or finished ids are ignored."""
        request = self.requests.get(request_id)
        if request is None:
            return
        if request.status is RequestStatus.LOADING_KV and request.is_prefetching:
            self._prefetcher.drop(request)  # admitted to wait for its prefetch
        elif request.status is RequestStatus.LOADING_KV:
            # The transfer thread is writing into its slots: the manager frees them
            # when the load lands.
            self.cache.cancel_load(request_id, request.block_ids)
            request.block_ids = []
        elif request.status is RequestStatus.RUNNING:
            self.running.remove(request)
            self._let_go(request)
        else:
            self.waiting.remove(request)
            self._prefetcher.drop(request)
        self._finish(request, FinishReason.ABORT)

    def take_finished(self) -> list[FinishedRequest]:
        """Every finish since the last call, each exactly once."""
        finished, self._finished = self._finished, []
        return finished

    def update_from_loads(self) -> None:
        """Move requests whose reloads finished to running."""
        bs = self.config.block_size
        for done in self.cache.poll():
            request = self.requests[done.key]
            if request.is_prefetching:  # a prefetch landed
                self._prefetcher.land(request, done.num_loaded_blocks)
                if request.status is RequestStatus.LOADING_KV:  # it has a seat: admit next
                    request.status = RequestStatus.WAITING
                    self.waiting.enqueue(request, resumed=True)
                continue
            if request.tail_load is not None:  # its head is being computed meanwhile
                request.tail_load.num_loaded = done.num_loaded_blocks
                self._join_tail(request)
                continue
            num_blocks = request.num_computed_tokens // bs + done.num_loaded_blocks
            request.num_computed_tokens = num_blocks * bs
            request.num_committed_blocks = num_blocks
            self._start_running(request)

    # -- the step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        head_waits_for_hbm = False
        # Lowest priority value first (stable: admission order within a priority), so
        # preemption (of the lowest-priority unscheduled request) never hits one that
        # is already in this step.
        for request in sorted(self.running, key=priority_of):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = self._chunk_size(request, budget)
            if num_new <= 0:
                continue  # its head is computed; the rest of its prefix is still loading
            if not self._reserve(request, request.num_computed_tokens + num_new, out):
                continue
            out.chunks.append(ScheduledChunk(request, num_new))
            budget -= num_new

        short_of_memory = bool(out.preempted)
        while self.waiting and not short_of_memory:
            request = self.waiting[0]
            if request in out.preempted:
                break  # preempted in this step: it resumes at a later one
            if budget == 0:
                budget = self._reclaim_budget(request, out)
                if budget == 0:
                    break
            if len(self.running) + self.num_loading >= self.config.max_num_seqs:
                if self._preempt_for_priority(request, out):
                    budget = self.config.max_num_batched_tokens - out.num_planned_tokens
                    continue
                break
            if request.is_prefetching:
                # Its prefix is on its way up: it takes its seat and waits in LOADING_KV
                # for that load (not a second one); it is admitted first once it landed.
                self.waiting.popleft()
                request.status = RequestStatus.LOADING_KV
                continue
            if not self._admit(request, budget):
                if self._prefetcher.release_newest(self.waiting):
                    continue  # holds of requests behind it must not block the head
                if self._preempt_for_priority(request, out):
                    budget = self.config.max_num_batched_tokens - out.num_planned_tokens
                    continue
                head_waits_for_hbm = True  # no new prefetch may take the room it waits for
                break  # retry at a later step
            self.waiting.popleft()
            if request.status is RequestStatus.LOADING_KV:
                continue
            num_new = self._chunk_size(request, budget)
            out.chunks.append(ScheduledChunk(request, num_new))
            budget -= num_new
        if self._prefetcher.is_on and not out.preempted and not head_waits_for_hbm:
            self._prefetcher.start(self.waiting, self.requests.values(), self._match_hit)
        return out

    def update_from_output(
        self, out: SchedulerOutput, sampled: dict[str, int]
    ) -> list[RequestOutput]:
        """Apply one executed step: advance each chunk, append its sampled token, finish.

        Returns an output for every request that got a token or finished.
        """
        bs = self.config.block_size
        outputs: list[RequestOutput] = []
        for chunk in out.chunks:
            req = chunk.request
            req.num_computed_tokens += chunk.num_new_tokens
            token = sampled.get(req.request_id)
            if token is not None:
                req.output_token_ids.append(token)
                req.last_token_time = time.perf_counter()
                if req.first_token_time is None:
                    req.first_token_time = req.last_token_time
            req.update_block_hashes(bs)
            num_full = req.num_computed_tokens // bs
            if num_full > req.num_committed_blocks:
                lo = req.num_committed_blocks
                self.cache.commit(req.block_ids[lo:num_full], req.block_hashes[lo:num_full])
                req.num_committed_blocks = num_full
            if req.tail_load is not None:
                self._join_tail(req)
            if token is None:
                continue  # a prefill chunk short of the prompt's end
            output = token_output(req, token, self.config.max_model_len)
            if output.finish_reason is not None:
                self.running.remove(req)
                self._finish(req, output.finish_reason)
            outputs.append(output)
        return outputs

    # -- internals -----------------------------------------------------------------------

    def _match(self, request: EngineRequest) -> tuple[PrefixHit, int, int]:
        """The cached prefix worth using (the planner may cut its lower-tier part), how
        many of its lower-tier blocks to compute while the others load (`LoadPlanner.split`),
        and the `max_blocks` it was matched with."""
        # Keep at least the last token to compute: its logits give the next token.
        max_blocks = (request.num_tokens - 1) // self.config.block_size
        hit = self.cache.match(request.block_hashes, max_blocks)
        head = 0
        if self._planner is not None:
            hit, head = self._planner.plan(hit, request.num_tokens, is_idle=not self.running)
        return hit, head, max_blocks

    def _match_hit(self, request: EngineRequest) -> PrefixHit:
        return self._match(request)[0]

    def _chunk_size(self, request: EngineRequest, budget: int) -> int:
        """Tokens `request` may compute in this step: up to its end, or while part of its
        prefix is loading, up to that part."""
        end = request.num_tokens
        if request.tail_load is not None:
            end = request.tail_load.first_block * self.config.block_size
        return min(end - request.num_computed_tokens, budget)

    def _join_tail(self, request: EngineRequest) -> None:
        """Once its head is computed and its tail landed, the request goes on after the
        tail's intact blocks (it recomputes from the first one that did not arrive)."""
        tail = request.tail_load
        bs = self.config.block_size
        if (
            tail is None
            or tail.num_loaded is None
            or request.num_computed_tokens < tail.first_block * bs
        ):
            return
        request.num_computed_tokens = (tail.first_block + tail.num_loaded) * bs
        request.num_committed_blocks = tail.first_block + tail.num_loaded
        if tail.counts_as_cached and request.num_cached_tokens is not None:
            request.num_cached_tokens += tail.num_loaded * bs
        request.tail_load = None

    def _let_go(self, request: EngineRequest) -> None:
        """Free a running request's blocks (its tail's, when the load lands)."""
        if request.tail_load is not None and request.tail_load.num_loaded is None:
            self.cache.cancel_load(request.request_id, request.block_ids)
        else:
            self.cache.free(request.block_ids)
        request.block_ids = []
        request.tail_load = None

    def _admit(self, request: EngineRequest, budget: int) -> bool:
        """Admit `request` with its cached prefix and its first chunk's blocks, or not at all."""
        bs = self.config.block_size
        hit, head, max_blocks = self._match(request)
        if head:  # compute `head` blocks while the rest of the hit loads
            hit = PrefixHit(hit.hbm_block_ids, hit.lower[head:])
            num_new_blocks = 0
        else:
            num_cached = hit.num_blocks * bs
            first_chunk = min(request.num_tokens - num_cached, budget)
            num_new_blocks = -(-(num_cached + first_chunk) // bs) - hit.num_blocks
        admission = self.cache.admit(
            hit, request.request_id, request.num_tokens, max_blocks, num_new_blocks, head
        )
        if admission is None:
            return False
        self._prefetcher.drop(request)  # admit referenced what it held (if it still matched)
        if request.scheduled_time is None:
            request.scheduled_time = time.perf_counter()
        request.block_ids = admission.block_ids
        request.num_computed_tokens = admission.num_hbm_blocks * bs
        request.num_committed_blocks = admission.num_hbm_blocks
        if admission.is_loading and head:
            first = admission.num_hbm_blocks + head
            fresh = request.num_cached_tokens is None
            request.tail_load = TailLoad(first, admission.num_loading_blocks, None, fresh)
            self._start_running(request)
        elif admission.is_loading:
            request.status = RequestStatus.LOADING_KV
        else:
            self._start_running(request)
        return True

    def _start_running(self, request: EngineRequest) -> None:
        if request.num_cached_tokens is None:  # a resumed request keeps its first figure
            request.num_cached_tokens = request.num_computed_tokens
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _reserve(self, request: EngineRequest, num_tokens: int, out: SchedulerOutput) -> bool:
        """Make `request` hold blocks for `num_tokens`, preempting newer requests if needed.

        Returns False if that was impossible (the request itself was preempted).
        """
        needed = -(-num_tokens // self.config.block_size) - len(request.block_ids)
        while needed > 0:
            new_blocks = self.cache.allocate(needed)
            if new_blocks is not None:
                request.block_ids.extend(new_blocks)
                return True
            if self._prefetcher.release_newest(self.waiting):
                continue
            victim = victim_to_grow(request, self.running, out.chunks)
            self._preempt(victim, out)
            if victim is request:
                return False
        return True

    def _preempt(self, request: EngineRequest, out: SchedulerOutput) -> None:
        if request in self.running:
            self.running.remove(request)
        self._let_go(request)
        request.num_computed_tokens = 0
        request.num_committed_blocks = 0
        request.status = RequestStatus.WAITING
        request.prefetch_tried = False
        self.waiting.enqueue(request, resumed=True)
        self.num_preemptions += 1
        out.preempted.append(request)
        logger.debug("preempted %s at %d tokens", request.request_id, request.num_tokens)

    def _reclaim_budget(self, request: EngineRequest, out: SchedulerOutput) -> int:
        """With `preempt_for_priority`: take `chunks_to_reclaim` out of this step (they
        keep their blocks and run at the next step). Returns the budget freed."""
        if not self.config.preempt_for_priority:
            return 0
        taken = chunks_to_reclaim(request, out.chunks)
        for chunk in taken:
            out.chunks.remove(chunk)
        return sum(c.num_new_tokens for c in taken)

    def _preempt_for_priority(self, request: EngineRequest, out: SchedulerOutput) -> bool:
        """With `preempt_for_priority`: preempt `victim_for_priority`, taking its chunk
        out of this step (a planned chunk has no effect until `update_from_output`); it
        resumes from cache. Returns whether a request was preempted."""
        if not self.config.preempt_for_priority:
            return False
        victim = victim_for_priority(request, self.running)
        if victim is None:
            return False
        out.chunks = [c for c in out.chunks if c.request is not victim]
        self._preempt(victim, out)
        return True

    def _finish(self, request: EngineRequest, reason: FinishReason) -> None:
        """The one place a request ends: free its blocks, forget it, record the finish."""
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        if request.block_ids:
            self.cache.free(request.block_ids)
            request.block_ids = []
        del self.requests[request.request_id]
        now = time.perf_counter()
        self._finished.append(finished_record(request, reason, now))
