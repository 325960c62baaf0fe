"""Continuous batching with chunked prefill, prefix reuse across tiers, and preemption.

The scheduler is the one writer of request state. Each step it spends a token budget:
first on running requests (one token for a decode, a chunk for an unfinished prefill),
then on admitting waiting requests. Admission matches the prompt in every tier (no side
effects) and admits it in one all-or-nothing call; blocks found in DDR or flash are
reloaded while the request waits in LOADING_KV and the others keep running. When HBM
runs out for a running request, the newest running request is preempted: its blocks are
freed (full ones stay cached and spill to DDR when evicted) and it resumes later from
cache. With `preempt_for_priority` (vNPU engines), a waiting request that finds no room
takes the step's token budget from requests of a worse priority value and, short of
seats or HBM, preempts the running request of the worst priority value worse than its
own, so it starts in the very next step. After the step, `update_from_output` appends the sampled
tokens, decides every finish (stop token, stop string, max_tokens, max_model_len) and
frees the request.

A live request is in `requests` and in exactly one of `waiting` and `running`, or in
neither while its KV is loading (the cache manager reports the load under its id).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from cache.manager import CacheManager
from cache.records import PrefixHit
from server.engine.load_planner import LoadPlanner
from server.engine.request import (
    EngineRequest,
    FinishedRequest,
    FinishReason,
    RequestOutput,
    RequestStatus,
    TailLoad,
)

logger = logging.getLogger(__name__)


PREFETCH_SCAN = 64
"""How many queued requests a step considers for prefetch (each costs a prefix match)."""


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int
    # A waiting request may preempt running requests of a worse (higher) priority value
    # to be admitted at once (vNPU engines; see `_preempt_for_priority`). Off: a
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
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.num_preemptions = 0
        self.num_prefetched_blocks = 0  # lower-tier blocks prefetches started loading
        self._finished: list[FinishedRequest] = []  # until take_finished()

    @property
    def num_loading(self) -> int:
        return len(self.requests) - len(self.waiting) - len(self.running)

    def has_schedulable_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, request: EngineRequest) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request {request.request_id} is already in the engine")
        request.update_block_hashes(self.config.block_size)
        self.requests[request.request_id] = request
        self._enqueue(request, resumed=False)

    def abort(self, request_id: str) -> None:
        """Finish a live request now (`abort`); unknown or finished ids are ignored."""
        request = self.requests.get(request_id)
        if request is None:
            return
        if request.status is RequestStatus.LOADING_KV and request.is_prefetching:
            self._drop_prefetch(request)  # admitted to wait for its prefetch
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
            self._drop_prefetch(request)
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
                keep = request.prefetch_num_hbm_blocks + done.num_loaded_blocks
                self.cache.free(request.prefetch_block_ids[keep:])
                del request.prefetch_block_ids[keep:]
                request.is_prefetching = False
                if request.status is RequestStatus.LOADING_KV:  # it has a seat: admit next
                    request.status = RequestStatus.WAITING
                    self._enqueue(request, resumed=True)
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
        for request in sorted(self.running, key=_priority):
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
                    budget = self.config.max_num_batched_tokens - _planned(out)
                    continue
                break
            if request.is_prefetching:
                # Its prefix is on its way up: it takes its seat and waits in LOADING_KV
                # for that load (not a second one); it is admitted first once it landed.
                self.waiting.popleft()
                request.status = RequestStatus.LOADING_KV
                continue
            if not self._admit(request, budget):
                if self._release_prefetches():
                    continue  # holds of requests behind it must not block the head
                if self._preempt_for_priority(request, out):
                    budget = self.config.max_num_batched_tokens - _planned(out)
                    continue
                head_waits_for_hbm = True  # no new prefetch may take the room it waits for
                break  # retry at a later step
            self.waiting.popleft()
            if request.status is RequestStatus.LOADING_KV:
                continue
            num_new = self._chunk_size(request, budget)
            out.chunks.append(ScheduledChunk(request, num_new))
            budget -= num_new
        if self.config.prefetch_blocks > 0 and not out.preempted and not head_waits_for_hbm:
            self._prefetch()
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
            may_stop = len(req.output_token_ids) >= req.min_tokens
            if may_stop and token in req.stop_token_ids and not req.include_stop_str_in_output:
                text = ""  # a stop token's text is not shown (vLLM)
            else:
                text = req.detokenizer.feed([token], check_stop=may_stop)
            reason = self._stop_reason(req, token, may_stop)
            if reason is not None:
                text += req.detokenizer.flush()  # nothing after a stop string
                self.running.remove(req)
                self._finish(req, reason)
            outputs.append(
                RequestOutput(
                    request_id=req.request_id,
                    new_token_ids=[token],
                    new_text=text,
                    num_prompt_tokens=len(req.prompt_token_ids),
                    num_cached_tokens=req.num_cached_tokens or 0,
                    num_output_tokens=len(req.output_token_ids),
                    finish_reason=reason,
                )
            )
        return outputs

    # -- internals -----------------------------------------------------------------------

    def _stop_reason(self, req: EngineRequest, token: int, may_stop: bool) -> FinishReason | None:
        if may_stop and (token in req.stop_token_ids or req.detokenizer.done):
            return FinishReason.STOP
        if (
            len(req.output_token_ids) >= req.max_tokens
            or req.num_tokens >= self.config.max_model_len
        ):
            return FinishReason.LENGTH
        return None

    def _match(self, request: EngineRequest) -> tuple[PrefixHit, int, int]:
        """The cached prefix worth using (the planner may cut its lower-tier part), how
        many of its lower-tier blocks to compute while the others load (`LoadPlanner.split`),
        and the `max_blocks` it was matched with."""
        # Keep at least the last token to compute: its logits give the next token.
        max_blocks = (request.num_tokens - 1) // self.config.block_size
        hit = self.cache.match(request.block_hashes, max_blocks)
        head = 0
        if self._planner is not None and hit.lower:
            tiers = [tier for _, tier in hit.lower]
            h, n = len(hit.hbm_block_ids), request.num_tokens
            if self.running:
                # The split trades device time for TTFT: worth it only on an otherwise
                # idle device. In a busy batch a load hides behind the others' compute.
                k = self._planner.blocks_to_load(h, tiers, n)
            else:
                head, k = self._planner.split(h, tiers, n)
            hit = PrefixHit(hit.hbm_block_ids, hit.lower[:k])
        return hit, head, max_blocks

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

    def _prefetch(self) -> None:
        """Start loading the lower-tier prefix of queued requests (HiCache's prefetch).

        Runs after admission, so every request still waiting was not admitted (no room
        in the batch or in HBM). In queue order, the first `PREFETCH_SCAN` of them, while
        prefetches hold at most `prefetch_blocks` HBM blocks; a prefix that does not fit
        the rest of that budget is cut. The load is the same as an admission's (deadline,
        abandonment, `poll` as the only exit); its landed blocks are held for the request
        until it is admitted (they are HBM hits then), aborted, or HBM runs short for
        running requests (`_release_prefetches`).
        """
        held = sum(len(r.prefetch_block_ids) for r in self.requests.values())
        room = self.config.prefetch_blocks - held
        for request in itertools.islice(self.waiting, PREFETCH_SCAN):  # no copy of the queue
            if room <= 0:
                return
            if request.prefetch_tried:
                continue  # one look per wait: a cut or abandoned prefetch is not retried
            hit, _, _ = self._match(request)
            if not hit.lower:
                request.prefetch_tried = True  # nothing below HBM: no match every step
                continue
            hit = PrefixHit(hit.hbm_block_ids, hit.lower[: room - len(hit.hbm_block_ids)])
            if len(hit.hbm_block_ids) >= room or not hit.lower:
                continue
            taken = self.cache.prefetch(hit, request.request_id)
            if taken is None:
                return  # HBM is full: nothing else fits either
            request.prefetch_block_ids = taken.block_ids
            request.prefetch_num_hbm_blocks = taken.num_hbm_blocks
            request.is_prefetching = request.prefetch_tried = True
            room -= len(taken.block_ids)
            self.num_prefetched_blocks += taken.num_loading_blocks

    def _drop_prefetch(self, request: EngineRequest) -> None:
        """Let go of the blocks a prefetch holds for `request` (cancelling it if in flight)."""
        if request.is_prefetching:
            self.cache.cancel_load(request.request_id, request.prefetch_block_ids)
        elif request.prefetch_block_ids:
            self.cache.release_prefetch(request.request_id, request.prefetch_block_ids)
        request.prefetch_block_ids = []
        request.is_prefetching = False

    def _release_prefetches(self) -> bool:
        """Hand back the newest landed prefetch's hold: HBM ran short for a running
        request or for the head of the queue (a prefetch never takes blocks they need,
        nor holds the queue up). False if there is none."""
        if self.config.prefetch_blocks <= 0:
            return False  # prefetch is off: no request holds any (saves a queue walk)
        for request in reversed(self.waiting):
            if request.prefetch_block_ids and not request.is_prefetching:
                self._drop_prefetch(request)
                return True
        return False

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
        self._drop_prefetch(request)  # admit referenced what it held (if it still matched)
        if request.scheduled_time is None:
            request.scheduled_time = time.perf_counter()
            self.cache.note_request(request.block_hashes)  # once: a resumption is not new
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

    def _reserve(
        self,
        request: EngineRequest,
        num_tokens: int,
        out: SchedulerOutput,
    ) -> bool:
        """Make `request` hold blocks for `num_tokens`, preempting newer requests if needed.

        Returns False if that was impossible (the request itself was preempted).
        """
        needed = -(-num_tokens // self.config.block_size) - len(request.block_ids)
        while needed > 0:
            new_blocks = self.cache.allocate(needed)
            if new_blocks is not None:
                request.block_ids.extend(new_blocks)
                return True
            if self._release_prefetches():
                continue
            victim = self._pick_victim(request, out)
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
        self._enqueue(request, resumed=True)
        self.num_preemptions += 1
        out.preempted.append(request)
        logger.debug("preempted %s at %d tokens", request.request_id, request.num_tokens)

    def _reclaim_budget(self, request: EngineRequest, out: SchedulerOutput) -> int:
        """With `preempt_for_priority`: take chunks of requests with a worse priority
        value than `request`'s out of this step (worst first; they keep their blocks and
        run at the next step) until `request`'s tokens fit. Returns the budget freed."""
        if not self.config.preempt_for_priority:
            return 0
        freed = 0
        while freed < request.num_tokens:
            worse = [c for c in out.chunks if c.request.priority > request.priority]
            if not worse:
                break
            chunk = max(reversed(worse), key=lambda c: c.request.priority)
            out.chunks.remove(chunk)
            freed += chunk.num_new_tokens
        return freed

    def _preempt_for_priority(self, request: EngineRequest, out: SchedulerOutput) -> bool:
        """With `preempt_for_priority`: preempt the running request with the worst
        priority value, if it is worse than `request`'s, taking its chunk out of this
        step (a planned chunk has no effect until `update_from_output`). Its full blocks
        stay cached (spilled to DDR when evicted) and it resumes from cache. Returns
        whether a request was preempted."""
        if not self.config.preempt_for_priority:
            return False
        worse = [r for r in self.running if r.priority > request.priority]
        if not worse:
            return False
        victim = max(reversed(worse), key=_priority)
        out.chunks = [c for c in out.chunks if c.request is not victim]
        self._preempt(victim, out)
        return True

    def _pick_victim(self, request: EngineRequest, out: SchedulerOutput) -> EngineRequest:
        """The running request to preempt so `request` can grow: of those not scheduled
        in this step yet (`request` included), the one with the highest priority value,
        the most recently admitted among equals."""
        scheduled = {id(c.request) for c in out.chunks}
        candidates = [r for r in self.running if id(r) not in scheduled] or [request]
        return max(reversed(candidates), key=_priority)

    def _enqueue(self, request: EngineRequest, resumed: bool) -> None:
        """Put `request` in `waiting`, ordered by priority: a new request after every
        request of its priority, a preempted one before them (it resumes first)."""
        p = request.priority
        waiting = self.waiting
        # `waiting` is sorted by priority value: the common cases (a new request that is
        # not better than the last one, a resumed one not worse than the first) need no
        # walk of a long queue.
        if not resumed and (not waiting or waiting[-1].priority <= p):
            waiting.append(request)
            return
        if resumed and (not waiting or waiting[0].priority >= p):
            waiting.appendleft(request)
            return
        index = len(self.waiting)
        for i, other in enumerate(self.waiting):
            if other.priority > p or (resumed and other.priority == p):
                index = i
                break
        self.waiting.insert(index, request)

    def _finish(self, request: EngineRequest, reason: FinishReason) -> None:
        """The one place a request ends: free its blocks, forget it, record the finish."""
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        if request.block_ids:
            self.cache.free(request.block_ids)
            request.block_ids = []
        del self.requests[request.request_id]
        now = time.perf_counter()
        self._finished.append(_finished_record(request, reason, now))


def _finished_record(request: EngineRequest, reason: FinishReason, now: float) -> FinishedRequest:
    scheduled, first, last = (
        request.scheduled_time,
        request.first_token_time,
        request.last_token_time,
    )
    return FinishedRequest(
        request.request_id,
        reason,
        now - request.arrival_time,
        num_prompt_tokens=len(request.prompt_token_ids),
        num_output_tokens=len(request.output_token_ids),
        queue_seconds=(scheduled if scheduled is not None else now) - request.arrival_time,
        prefill_seconds=first - scheduled if first is not None and scheduled is not None else 0.0,
        decode_seconds=last - first if last is not None and first is not None else 0.0,
        inference_seconds=last - scheduled if last is not None and scheduled is not None else 0.0,
    )


def _planned(out: SchedulerOutput) -> int:
    return sum(c.num_new_tokens for c in out.chunks)


def _priority(request: EngineRequest) -> int:
    return request.priority
