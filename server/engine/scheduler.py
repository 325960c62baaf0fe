"""Continuous batching with chunked prefill, prefix reuse across tiers, and preemption.

Each step the scheduler spends a token budget: first on running requests (one token
for a decode, a chunk for an unfinished prefill), then on admitting waiting requests.
Admission looks the prompt up in every tier; blocks found in DDR or flash are reloaded
while the request waits in LOADING_KV and the others keep running. When HBM runs out
for a running request, the newest running request is preempted: its blocks are freed
(full ones stay cached and spill to DDR when evicted) and it resumes later from cache.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from cache.manager import CacheManager
from server.engine.request import EngineRequest, FinishReason, RequestStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int


@dataclass(slots=True)
class ScheduledChunk:
    request: EngineRequest
    num_new_tokens: int


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[EngineRequest] = field(default_factory=list)


class Scheduler:
    """Owns the waiting, loading and running sets. Engine thread only."""

    def __init__(self, config: SchedulerConfig, cache: CacheManager) -> None:
        self.config = config
        self.cache = cache
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.loading: dict[int, EngineRequest] = {}
        self.num_preemptions = 0

    def has_schedulable_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, request: EngineRequest) -> None:
        request.update_block_hashes(self.config.block_size)
        self.waiting.append(request)

    def abort(self, request: EngineRequest) -> None:
        """Finish `request` now; a request whose KV is still loading is freed on arrival."""
        request.is_aborted = True
        request.finish_reason = request.finish_reason or FinishReason.ABORT
        if request.status is RequestStatus.LOADING_KV:
            return
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._finish(request)

    def finish(self, request: EngineRequest, reason: FinishReason) -> None:
        request.finish_reason = reason
        self.running.remove(request)
        self._finish(request)

    def on_loads_finished(self) -> None:
        """Move requests whose reloads finished to running (or release aborted ones)."""
        for done in self.cache.poll():
            request = self.loading.pop(done.ticket)
            if request.is_aborted:
                self._finish(request)
                continue
            num_hbm_blocks = request.num_computed_tokens // self.config.block_size
            num_blocks = num_hbm_blocks + done.num_loaded_blocks
            request.num_computed_tokens = num_blocks * self.config.block_size
            request.num_committed_blocks = num_blocks
            if request.num_cached_tokens is None:
                request.num_cached_tokens = request.num_computed_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)

    # -- the step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._reserve(request, request.num_computed_tokens + num_new, out):
                continue
            out.chunks.append(ScheduledChunk(request, num_new))
            budget -= num_new

        while self.waiting and budget > 0 and not out.preempted:
            if len(self.running) + len(self.loading) >= self.config.max_num_seqs:
                break
            request = self.waiting[0]
            if not self._admit(request, budget):
                break
            self.waiting.popleft()
            if request.status is RequestStatus.LOADING_KV:
                continue
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._reserve(request, request.num_computed_tokens + num_new, out, False):
                # Never preempt for an admission: give the prefix back and retry later.
                self.cache.free(request.block_ids)
                request.block_ids, request.num_computed_tokens = [], 0
                request.status = RequestStatus.WAITING
                self.waiting.appendleft(request)
                break
            self.running.append(request)
            out.chunks.append(ScheduledChunk(request, num_new))
            budget -= num_new
        return out

    def _admit(self, request: EngineRequest, budget: int) -> bool:
        """Match the request's cached prefix and take it (starting reloads if needed)."""
        bs = self.config.block_size
        # Keep at least the last token to compute: its logits give the next token.
        max_blocks = (request.num_tokens - 1) // bs
        hit = self.cache.match_prefix(request.block_hashes, max_blocks)
        first_chunk = min(request.num_tokens - hit.num_blocks * bs, budget)
        blocks_for_chunk = -(-(hit.num_blocks * bs + first_chunk) // bs) - hit.num_blocks
        if not self.cache.can_allocate(len(hit.lower) + blocks_for_chunk):
            return False
        acquired = self.cache.acquire_prefix(hit, request.num_tokens, max_blocks)
        if acquired is None:
            return False
        request.block_ids = acquired.block_ids
        request.num_computed_tokens = acquired.num_hbm_blocks * bs
        request.num_committed_blocks = acquired.num_hbm_blocks
        if acquired.ticket is not None:
            request.status = RequestStatus.LOADING_KV
            self.loading[acquired.ticket] = request
            return True
        if request.num_cached_tokens is None:
            request.num_cached_tokens = request.num_computed_tokens
        request.status = RequestStatus.RUNNING
        return True

    def _reserve(
        self,
        request: EngineRequest,
        num_tokens: int,
        out: SchedulerOutput,
        may_preempt: bool = True,
    ) -> bool:
        """Make `request` hold blocks for `num_tokens`, preempting newer requests if needed.

        Returns False if that was impossible (the request itself was preempted, or
        `may_preempt` is False and HBM is full).
        """
        needed = -(-num_tokens // self.config.block_size) - len(request.block_ids)
        while needed > 0:
            new_blocks = self.cache.allocate(needed)
            if new_blocks is not None:
                request.block_ids.extend(new_blocks)
                return True
            if not may_preempt:
                return False
            victim = self.running[-1] if self.running else request
            self._preempt(victim, out)
            if victim is request:
                return False
        return True

    def _preempt(self, request: EngineRequest, out: SchedulerOutput) -> None:
        if request in self.running:
            self.running.remove(request)
        self.cache.free(request.block_ids)
        request.block_ids = []
        request.num_computed_tokens = 0
        request.num_committed_blocks = 0
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.num_preemptions += 1
        out.preempted.append(request)
        logger.debug("preempted %s at %d tokens", request.request_id, request.num_tokens)

    def _finish(self, request: EngineRequest) -> None:
        request.status = RequestStatus.FINISHED
        if request.block_ids:
            self.cache.free(request.block_ids)
            request.block_ids = []
