"""EngineCore: one scheduling step, one executor step, bookkeeping of the results."""

from __future__ import annotations

from dataclasses import dataclass

from cache.manager import CacheManager
from npu_sim.executor import Executor, StepSequence
from server.engine.request import EngineRequest, FinishReason, RequestOutput
from server.engine.scheduler import Scheduler


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
    wall_busy_seconds: float = 0.0


class EngineCore:
    """Runs steps on the engine thread: schedule -> execute -> update requests."""

    def __init__(self, scheduler: Scheduler, executor: Executor, cache: CacheManager) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.cache = cache
        self.block_size = scheduler.config.block_size
        self.max_model_len = scheduler.config.max_model_len
        self.stats = EngineStats()

    def add(self, request: EngineRequest) -> None:
        self.scheduler.add(request)

    def abort(self, request: EngineRequest) -> None:
        self.scheduler.abort(request)

    def poll_transfers(self) -> None:
        self.scheduler.on_loads_finished()

    def has_work(self) -> bool:
        return self.scheduler.has_schedulable_work()

    def step(self) -> list[RequestOutput]:
        """Run one batch. Returns an output for every request that got a token or finished."""
        plan = self.scheduler.schedule()
        if not plan.chunks:
            return []
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
        result = self.executor.step(seqs)
        self.stats.num_steps += 1
        self.stats.modelled_busy_seconds += result.modelled_seconds
        self.stats.wall_busy_seconds += result.wall_seconds

        outputs: list[RequestOutput] = []
        for chunk in plan.chunks:
            output = self._advance(chunk.request, chunk.num_new_tokens, result.sampled)
            if output is not None:
                outputs.append(output)
        return outputs

    def _advance(
        self, req: EngineRequest, num_new: int, sampled: dict[str, int]
    ) -> RequestOutput | None:
        n_prompt = len(req.prompt_token_ids)
        self.stats.num_prompt_tokens_computed += max(
            0, min(req.num_computed_tokens + num_new, n_prompt) - req.num_computed_tokens
        )
        req.num_computed_tokens += num_new
        new_tokens: list[int] = []
        if req.request_id in sampled:
            token = sampled[req.request_id]
            req.output_token_ids.append(token)
            new_tokens.append(token)
            self.stats.num_generated_tokens += 1
        req.update_block_hashes(self.block_size)
        num_full = req.num_computed_tokens // self.block_size
        if num_full > req.num_committed_blocks:
            lo = req.num_committed_blocks
            self.cache.commit(req.block_ids[lo:num_full], req.block_hashes[lo:num_full])
            req.num_committed_blocks = num_full

        reason: FinishReason | None = None
        if new_tokens:
            if new_tokens[-1] in req.stop_token_ids:
                reason = FinishReason.STOP
            elif (
                len(req.output_token_ids) >= req.max_tokens
                or req.num_tokens >= self.max_model_len
            ):
                reason = FinishReason.LENGTH
        if reason is not None:
            self.scheduler.finish(req, reason)
        if not new_tokens and reason is None:
            return None
        return RequestOutput(
            request_id=req.request_id,
            new_token_ids=new_tokens,
            num_prompt_tokens=n_prompt,
            num_cached_tokens=req.num_cached_tokens or 0,
            num_output_tokens=len(req.output_token_ids),
            finish_reason=reason,
        )

    def refresh_stats(self) -> EngineStats:
        """Bring the queue-length gauges up to date and return the stats record."""
        s = self.stats
        s.num_running = len(self.scheduler.running)
        s.num_waiting = len(self.scheduler.waiting)
        s.num_loading = len(self.scheduler.loading)
        s.num_preemptions = self.scheduler.num_preemptions
        return s
