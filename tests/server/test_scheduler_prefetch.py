"""Prefetch for queued requests (issue #10, item 1), driven step by step with fake tokens.

The cache manager is real: HBM pool in memory, LMDB flash in a temp dir.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from cache.manager import CacheManager
from cache.stats import Tier
from npu_sim.device import get_device
from npu_sim.executor import Executor
from npu_sim.links import TierPaths, get_media
from npu_sim.model_config import get_cost_model_config
from server.engine.core import EngineCore
from server.engine.load_planner import LoadPlanner
from server.engine.request import FinishReason, RequestStatus
from server.engine.scheduler import Scheduler, SchedulerConfig
from tests.server.test_scheduler import BS, cache_factory, fill_flash, request, step

PROMPT = list(range(1, 14))  # 13 tokens: 3 full blocks cacheable


def make_scheduler(cache: CacheManager, prefetch_blocks: int, max_num_seqs: int = 1) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=64,
        max_model_len=64,
        block_size=BS,
        prefetch_blocks=prefetch_blocks,
    )
    return Scheduler(config, cache)


@pytest.fixture
def make_cache(tmp_path: Path) -> Iterator[Callable[..., CacheManager]]:
    yield from cache_factory(tmp_path)


def settle(sched: Scheduler) -> None:
    """Let every transfer finish and hand the finished loads to the scheduler."""
    sched.cache.wait_transfers()
    sched.update_from_loads()


def queued_behind_busy(
    make_cache: Callable[..., CacheManager],
    busy_max_tokens: int,
    r_max_tokens: int = 8,
    prefetch_blocks: int = 8,
) -> tuple[CacheManager, Scheduler]:
    """PROMPT's 3 blocks in flash; one seat, taken by "busy" (3 tokens) at the first step,
    with "r" (PROMPT) queued behind it."""
    cache = make_cache(hbm_blocks=16, flash_blocks=16)
    fill_flash(cache, PROMPT)
    sched = make_scheduler(cache, prefetch_blocks=prefetch_blocks)
    sched.add(request("busy", [100, 101, 102], max_tokens=busy_max_tokens))
    sched.add(request("r", PROMPT, max_tokens=r_max_tokens))
    return cache, sched


def run_to_end(sched: Scheduler, max_steps: int | None = None) -> None:
    """Step and settle until no request is left (fails if `max_steps` do not do it)."""
    num_steps = 0
    while sched.requests:
        assert max_steps is None or num_steps < max_steps, f"stuck: {list(sched.requests)}"
        step(sched)
        settle(sched)
        num_steps += 1


def test_a_queued_request_is_prefetched_and_runs_at_once_when_admitted(make_cache):
    cache, sched = queued_behind_busy(make_cache, busy_max_tokens=3, r_max_tokens=2)
    step(sched)  # busy takes the only seat; r waits and its prefix starts loading
    r = sched.requests["r"]
    assert r.status is RequestStatus.WAITING and r.is_prefetching
    assert len(r.prefetch_block_ids) == 3
    assert sched.num_prefetched_blocks == 3
    settle(sched)
    assert not r.is_prefetching and len(r.prefetch_block_ids) == 3
    assert cache.stats.tiers[Tier.FLASH].hit_blocks == 0  # counted at admission
    while "busy" in sched.requests:
        step(sched)
        settle(sched)
    step(sched)
    assert r.status is RequestStatus.RUNNING  # no LOADING_KV: its prefix is in HBM
    assert r.num_cached_tokens == 12 and not r.prefetch_block_ids
    assert cache.stats.tiers[Tier.FLASH].hit_blocks == 3
    assert cache.stats.hit_tokens[Tier.FLASH] == 12
    assert cache.stats.hit_tokens[Tier.HBM] == 0
    run_to_end(sched)
    assert [f.reason for f in sched.take_finished()] == [FinishReason.LENGTH] * 2
    assert cache.pool.num_active_blocks == 0


def test_a_seat_freed_while_the_prefetch_runs_waits_for_that_load_not_a_second(make_cache):
    cache, sched = queued_behind_busy(make_cache, busy_max_tokens=3, r_max_tokens=2)
    step(sched)
    r = sched.requests["r"]
    while "busy" in sched.requests:  # no poll: the prefetch is still in flight for us
        step(sched)
    step(sched)  # the seat is free: r takes it and waits for its prefetch
    assert r.status is RequestStatus.LOADING_KV and r.is_prefetching
    assert sched.num_loading == 1
    settle(sched)
    assert r.status is RequestStatus.WAITING and not r.is_prefetching
    step(sched)
    assert r.status is RequestStatus.RUNNING and r.num_cached_tokens == 12
    assert cache.stats.tiers[Tier.FLASH].hit_blocks == 3  # one load, counted once
    run_to_end(sched)
    assert cache.pool.num_active_blocks == 0


def test_abort_while_waiting_in_a_seat_for_the_prefetch_frees_everything(make_cache):
    cache, sched = queued_behind_busy(make_cache, busy_max_tokens=1)
    step(sched)  # busy finishes at once
    step(sched)
    assert sched.requests["r"].status is RequestStatus.LOADING_KV
    sched.abort("r")
    settle(sched)
    assert not sched.requests and cache.pool.num_active_blocks == 0


def test_without_prefetch_the_queued_request_loads_after_admission(make_cache):
    _, sched = queued_behind_busy(make_cache, 3, r_max_tokens=2, prefetch_blocks=0)
    while "busy" in sched.requests:
        step(sched)
        settle(sched)
    assert not sched.requests["r"].prefetch_block_ids
    step(sched)
    assert sched.requests["r"].status is RequestStatus.LOADING_KV


def test_abort_while_prefetching_frees_the_blocks_when_the_load_lands(make_cache):
    cache, sched = queued_behind_busy(make_cache, busy_max_tokens=8)
    step(sched)
    assert sched.requests["r"].is_prefetching
    sched.abort("r")
    assert [(f.request_id, f.reason) for f in sched.take_finished()] == [("r", FinishReason.ABORT)]
    settle(sched)  # nothing is handed over for r: it is gone
    sched.abort("busy")
    assert cache.pool.num_active_blocks == 0
    assert cache.stats.tiers[Tier.FLASH].hit_blocks == 0  # never admitted: no hit


def test_abort_after_the_prefetch_landed_frees_its_hold(make_cache):
    cache, sched = queued_behind_busy(make_cache, busy_max_tokens=8)
    step(sched)
    settle(sched)
    assert len(sched.requests["r"].prefetch_block_ids) == 3
    sched.abort("r")
    sched.abort("busy")
    assert cache.pool.num_active_blocks == 0
    # The blocks it brought up stay cached in HBM for others.
    hit = cache.match(sched_hashes(PROMPT), 3)
    assert len(hit.hbm_block_ids) == 3


def test_prefetch_holds_at_most_its_budget(make_cache):
    cache = make_cache(hbm_blocks=32, flash_blocks=32)
    prompts = [[p * 100 + i for i in range(13)] for p in range(1, 4)]
    for prompt in prompts:
        fill_flash(cache, prompt)
    sched = make_scheduler(cache, prefetch_blocks=5)
    sched.add(request("busy", [7, 8, 9], max_tokens=8))
    for i, prompt in enumerate(prompts):
        sched.add(request(f"q{i}", prompt))
    step(sched)
    held = [len(sched.requests[f"q{i}"].prefetch_block_ids) for i in range(3)]
    assert held == [3, 2, 0]  # the second prefix is cut to what the budget has left
    settle(sched)
    for i in range(3):
        sched.abort(f"q{i}")
    sched.abort("busy")
    assert cache.pool.num_active_blocks == 0


def test_a_running_request_takes_back_a_prefetch_hold_instead_of_preempting(make_cache):
    cache = make_cache(hbm_blocks=6, flash_blocks=16)
    fill_flash(cache, PROMPT)
    sched = make_scheduler(cache, prefetch_blocks=6)
    sched.add(request("busy", [100, 101, 102, 103], max_tokens=12))  # grows to 4 blocks
    sched.add(request("r", PROMPT, max_tokens=2))
    step(sched)
    settle(sched)
    assert len(sched.requests["r"].prefetch_block_ids) == 3
    released = False
    while "busy" in sched.requests:
        step(sched)
        settle(sched)
        busy = sched.requests.get("busy")
        if not released and busy is not None and busy.num_tokens == 14:
            # It just computed position 12, in its 4th block: only the hold could give it.
            assert not sched.requests["r"].prefetch_block_ids
            released = True
    assert released and sched.num_preemptions == 0
    run_to_end(sched)
    assert cache.pool.num_active_blocks == 0


def sched_hashes(prompt: list[int]) -> list:
    r = request("h", prompt)
    r.update_block_hashes(BS)
    return r.block_hashes


# -- chunk-wise: the head computes while the tail loads (issue #10, item 2) ----------------

LONG = list(range(1, 42))  # 41 tokens: 10 full blocks cacheable


def split_scheduler(cache: CacheManager) -> tuple[Scheduler, int, int]:
    """A scheduler whose planner splits LONG's flash hit; returns it and the split."""
    device = get_device("h100-sxm")
    shape = get_cost_model_config("llama-3-8b")
    paths = TierPaths(device.host_link, get_media("local-ddr"), get_media("nfs"))
    # Blocks 8x the shape's size: a load as long as the chunked prefill, so they meet.
    planner = LoadPlanner(shape, device, paths, shape.kv_bytes_per_token * BS * 8, BS, 8)
    config = SchedulerConfig(
        max_num_seqs=4, max_num_batched_tokens=8, max_model_len=64, block_size=BS
    )
    c, k = planner.split(0, [Tier.FLASH] * 10, len(LONG))
    assert 0 < c < k, (c, k)  # the precondition of these tests
    return Scheduler(config, cache, planner), c, k


def test_a_split_request_computes_its_head_then_joins_its_loaded_tail(make_cache):
    cache = make_cache(hbm_blocks=32, flash_blocks=32)
    fill_flash(cache, LONG)
    sched, c, k = split_scheduler(cache)
    sched.add(request("r", LONG, max_tokens=2))
    r = sched.requests["r"]
    computed = []
    while r.num_computed_tokens < c * BS:  # no poll: the tail's load is not seen yet
        step(sched)
        assert r.status is RequestStatus.RUNNING and r.tail_load is not None
        computed.append(r.num_computed_tokens)
    assert computed[-1] == c * BS
    assert sched.schedule().chunks == []  # nothing more until the tail arrives
    settle(sched)
    assert r.tail_load is None and r.num_computed_tokens == k * BS
    assert r.num_cached_tokens == (k - c) * BS
    assert cache.stats.tiers[Tier.FLASH].hit_blocks == k - c
    run_to_end(sched)
    assert [f.reason for f in sched.take_finished()] == [FinishReason.LENGTH]
    assert cache.pool.num_active_blocks == 0


def test_abort_of_a_split_request_frees_its_blocks_when_the_tail_lands(make_cache):
    cache = make_cache(hbm_blocks=32, flash_blocks=32)
    fill_flash(cache, LONG)
    sched, _, _ = split_scheduler(cache)
    sched.add(request("r", LONG))
    step(sched)
    assert sched.requests["r"].tail_load is not None
    sched.abort("r")
    assert cache.pool.num_active_blocks > 0  # the lane may still write into the tail
    settle(sched)
    assert not sched.requests and cache.pool.num_active_blocks == 0


def test_holds_of_requests_behind_it_never_keep_the_head_of_the_queue_out(make_cache):
    cache = make_cache(hbm_blocks=8, flash_blocks=16)
    fill_flash(cache, PROMPT)
    sched = make_scheduler(cache, prefetch_blocks=4)
    sched.add(request("busy", [100, 101, 102], max_tokens=3))
    sched.add(request("a", list(range(200, 221)), max_tokens=2))  # 21 new tokens: 6 blocks
    sched.add(request("b", PROMPT, max_tokens=2))  # its 3 flash blocks get prefetched
    step(sched)
    settle(sched)
    assert len(sched.requests["b"].prefetch_block_ids) == 3
    run_to_end(sched, max_steps=50)
    assert cache.pool.num_active_blocks == 0


def test_no_prefetch_starts_while_the_head_of_the_queue_waits_for_hbm(make_cache):
    """A step whose head request did not fit HBM starts no prefetch for requests behind
    it (it did, so under steady arrivals in-flight holds kept taking the room the head
    waits for)."""
    cache = make_cache(hbm_blocks=8, flash_blocks=16)
    fill_flash(cache, PROMPT)
    sched = make_scheduler(cache, prefetch_blocks=4, max_num_seqs=2)
    sched.add(request("busy", [100, 101, 102], max_tokens=3))
    sched.add(request("a", list(range(200, 229)), max_tokens=2))  # 29 tokens: 8 blocks
    sched.add(request("b", PROMPT, max_tokens=2))  # 3 flash blocks it could prefetch
    step(sched)
    assert sched.requests["a"].status is RequestStatus.WAITING
    assert not sched.requests["b"].prefetch_block_ids
    run_to_end(sched, max_steps=50)
    assert cache.pool.num_active_blocks == 0


def test_a_prefetch_nobody_waits_for_is_not_counted_as_load_time(make_cache):
    # The overlap figure (server.engine.overlap) measures the loads requests wait for. A
    # queued request's prefetch running behind another request's step is neither hidden
    # nor exposed load time: counting it inflated the hidden fraction.
    cache = make_cache(hbm_blocks=16, flash_blocks=16)
    fill_flash(cache, PROMPT)
    sched = make_scheduler(cache, prefetch_blocks=8)
    now = [0.0]
    core = EngineCore(sched, cast(Executor, None), cache, clock=lambda: now[0])  # never executes
    sched.add(request("busy", [100, 101, 102], max_tokens=3))
    sched.add(request("r", PROMPT, max_tokens=2))
    assert core.plan() is not None  # busy computes; r's prefetch starts
    assert sched.requests["r"].is_prefetching
    now[0] = 1.0
    core.poll_transfers()
    assert core.overlap.inflight_seconds == 0
