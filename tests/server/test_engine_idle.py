"""The engine tells the executor when the device idles (async-scheduling overlap)."""

from __future__ import annotations

from collections.abc import Callable

from cache.block_hash import root_hash
from npu_sim.sampling import Sampler, SamplingParams
from server.config import Settings
from server.engine.core import EngineCore
from server.engine.request import EngineRequest
from server.stack import EngineStack, build_stack


def _request(stack: EngineStack, request_id: str, num_tokens: int) -> EngineRequest:
    return EngineRequest(
        request_id=request_id,
        prompt_token_ids=[65 + i % 26 for i in range(num_tokens)],
        sampler=Sampler(SamplingParams(temperature=0.0), stack.tokenizer.sampleable_mask),
        max_tokens=2,
        root_hash=root_hash(stack.numerics_id, 1),
    )


def _run_to_end(core: EngineCore) -> None:
    while core.scheduler.requests:
        core.poll_transfers()
        if core.has_work():
            core.step()


def test_a_step_after_an_idle_engine_hides_no_host_time(
    make_settings: Callable[..., Settings],
) -> None:
    # Back-to-back steps start on the device where the previous one ended (host work in
    # between is overlapped); once the engine found nothing to run, the next request's
    # first step starts when submitted. Before, host time between steps was added to
    # every step instead of hidden.
    settings = make_settings(emulate="llama-3-8b", hbm_gb=20, ddr_gb=0, flash_gb=0, pace="real")
    stack = build_stack(settings, lambda: None)
    core = stack.core
    try:
        core.add(_request(stack, "a", 40))
        _run_to_end(core)
        hidden_while_busy = core.stats.host_overlap_seconds
        assert core.stats.num_steps >= 2 and hidden_while_busy > 0.0
        assert core.step() == []  # nothing to run: the device idles
        core.add(_request(stack, "b", 40))
        core.poll_transfers()
        core.step()  # b's first step
        assert core.stats.host_overlap_seconds == hidden_while_busy
        assert core.stats.wall_busy_seconds >= core.stats.modelled_busy_seconds
    finally:
        stack.close()
