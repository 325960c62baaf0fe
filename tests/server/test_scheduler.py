"""The scheduler driven step by step with fake sampled tokens (no model, no executor).

The cache manager is real: HBM pool in memory and, where reloads matter, LMDB flash in
a temp dir.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cache.block_format import encoded_size
from cache.block_hash import root_hash
from cache.layout import KVLayout
from cache.manager import CacheConfig, CacheManager
from cache.stats import Tier
from cache.tiers.lmdb_tier import LmdbTier
from npu_sim import tokenizer
from npu_sim.sampling import Sampler, SamplingParams
from server.engine.request import (
    EngineRequest,
    FinishReason,
    RequestOutput,
    RequestStatus,
)
from server.engine.scheduler import Scheduler, SchedulerConfig

BS = 4  # tokens per block
LAYOUT = KVLayout("sched-test", num_layers=1, num_kv_heads=1, head_dim=4, block_size=BS)
ROOT = root_hash("sched-test", 1)
X = ord("x")


def make_scheduler(
    cache: CacheManager, max_model_len: int = 64, max_num_batched_tokens: int = 64
) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=8,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        block_size=BS,
    )
    return Scheduler(config, cache)


def cache_factory(tmp_path: Path) -> Iterator[Callable[..., CacheManager]]:
    """Yields `make(hbm_blocks, flash_blocks=0)`: a real `CacheManager` on `LAYOUT` (LMDB
    flash under `tmp_path` when `flash_blocks`); closes every one made afterwards."""
    made: list[CacheManager] = []

    def make(hbm_blocks: int, flash_blocks: int = 0) -> CacheManager:
        flash = None
        if flash_blocks:
            flash = LmdbTier(tmp_path / f"flash{len(made)}", 16 << 20, LAYOUT.namespace)
        block = encoded_size(LAYOUT.block_shape, LAYOUT.np_dtype)
        config = CacheConfig(hbm_blocks, flash_capacity_bytes=flash_blocks * block)
        cache = CacheManager(LAYOUT, config, flash=flash)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


@pytest.fixture
def make_cache(tmp_path: Path) -> Iterator[Callable[..., CacheManager]]:
    yield from cache_factory(tmp_path)


def request(
    request_id: str,
    prompt: list[int],
    max_tokens: int = 8,
    stop: tuple[str, ...] = (),
    stop_token_ids: frozenset[int] = frozenset(),
    priority: int = 0,
    min_tokens: int = 0,
    include_stop_str_in_output: bool = False,
) -> EngineRequest:
    return EngineRequest(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampler=Sampler(SamplingParams(temperature=0.0), tokenizer.sampleable_mask),
        max_tokens=max_tokens,
        root_hash=ROOT,
        stop_token_ids=stop_token_ids,
        stop=stop,
        priority=priority,
        min_tokens=min_tokens,
        include_stop_str_in_output=include_stop_str_in_output,
    )


def step(sched: Scheduler, tokens: dict[str, int] | None = None) -> list[RequestOutput]:
    """One engine step: every chunk that reaches the end of its tokens samples one token
    (from `tokens`, default "x")."""
    plan = sched.schedule()
    sampled = {
        c.request.request_id: (tokens or {}).get(c.request.request_id, X)
        for c in plan.chunks
        if c.request.num_computed_tokens + c.num_new_tokens == c.request.num_tokens
    }
    return sched.update_from_output(plan, sampled)


def run_to_end(sched: Scheduler, max_steps: int = 100) -> None:
    for _ in range(max_steps):
        if not sched.requests:
            return
        sched.cache.wait_transfers()
        sched.update_from_loads()
        step(sched)
    raise AssertionError(f"still live after {max_steps} steps: {list(sched.requests)}")


def test_admission_that_does_not_fit_is_counted_once_when_it_finally_happens(make_cache):
    # Issue #7 defect 11a: a rolled-back admission counted the query and its HBM hit
    # tokens again on every retry.
    cache = make_cache(hbm_blocks=4)
    sched = make_scheduler(cache)
    prompt = list(range(1, 10))  # 9 tokens: 2 full blocks are cacheable
    sched.add(request("c", prompt, max_tokens=1))
    step(sched)  # c finishes: its 2 full blocks stay cached-free, 2 blocks free
    sched.add(request("a", [100, 101, 102, 103], max_tokens=3))
    step(sched)  # a takes one free block
    sched.add(request("b", prompt, max_tokens=2))
    queries = cache.stats.query_tokens
    assert queries == 9 + 4
    step(sched)  # a takes the last free block; b's hit would leave no block for it
    step(sched)  # a finishes here; b still waited this step
    assert sched.requests["b"].status is RequestStatus.WAITING
    assert cache.stats.query_tokens == queries
    assert cache.stats.hit_tokens[Tier.HBM] == 0
    step(sched)
    assert sched.requests["b"].status is RequestStatus.RUNNING
    assert sched.requests["b"].num_cached_tokens == 8
    assert cache.stats.query_tokens == queries + 9
    assert cache.stats.hit_tokens[Tier.HBM] == 8


def test_stop_token_finishes_with_stop(make_cache):
    sched = make_scheduler(make_cache(hbm_blocks=8))
    sched.add(request("r", [1, 2, 3], stop_token_ids=frozenset({tokenizer.EOS})))
    (first,) = step(sched)
    assert first.new_text == "x" and not first.is_finished
    (last,) = step(sched, {"r": tokenizer.EOS})
    assert last.finish_reason is FinishReason.STOP and last.new_text == ""
    assert [(f.request_id, f.reason) for f in sched.take_finished()] == [("r", FinishReason.STOP)]
    assert not sched.requests and sched.cache.pool.num_active_blocks == 0


def test_stop_string_finishes_in_the_engine_and_its_text_is_held_back(make_cache):
    # Issue #7 defect 11b: a stop string was decided by the front end, which aborted
    # the request; it was never counted as a finish.
    sched = make_scheduler(make_cache(hbm_blocks=8))
    sched.add(request("r", [1, 2, 3], stop=("ab",)))
    texts = [step(sched, {"r": ord(c)})[0] for c in "xya"]
    assert [o.new_text for o in texts] == ["", "x", "y"]  # "a" may start the stop string
    (last,) = step(sched, {"r": ord("b")})
    assert last.finish_reason is FinishReason.STOP and last.new_text == ""
    assert [f.reason for f in sched.take_finished()] == [FinishReason.STOP]


def test_held_back_text_is_released_when_the_request_ends_otherwise(make_cache):
    sched = make_scheduler(make_cache(hbm_blocks=8))
    sched.add(request("r", [1, 2, 3], max_tokens=2, stop=("ab",)))
    outs = [step(sched, {"r": ord(c)})[0] for c in "xa"]
    assert [o.new_text for o in outs] == ["", "xa"]
    assert outs[-1].finish_reason is FinishReason.LENGTH


def test_max_tokens_and_max_model_len_finish_with_length(make_cache):
    sched = make_scheduler(make_cache(hbm_blocks=8), max_model_len=6)
    sched.add(request("short", [1, 2, 3], max_tokens=2))
    sched.add(request("long", [4, 5, 6, 7], max_tokens=10))  # max_model_len stops it at 6
    run_to_end(sched)
    finished = {f.request_id: f.reason for f in sched.take_finished()}
    assert finished == {"short": FinishReason.LENGTH, "long": FinishReason.LENGTH}
    assert sched.cache.pool.num_active_blocks == 0


def test_preempted_request_resumes_from_cache_and_finishes_once(make_cache):
    cache = make_cache(hbm_blocks=5)
    sched = make_scheduler(cache)
    sched.add(request("old", [1, 2, 3, 4, 5, 6, 7], max_tokens=6))
    sched.add(request("new", [11, 12, 13, 14, 15, 16, 17], max_tokens=6))
    outputs: dict[str, list[RequestOutput]] = {"old": [], "new": []}
    for _ in range(40):
        if not sched.requests:
            break
        for out in step(sched):
            outputs[out.request_id].append(out)
    assert sched.num_preemptions >= 1
    for rid in ("old", "new"):
        assert [len(o.new_token_ids) for o in outputs[rid]] == [1] * 6  # no token lost
        assert outputs[rid][-1].finish_reason is FinishReason.LENGTH
    assert sorted(f.request_id for f in sched.take_finished()) == ["new", "old"]
    assert cache.pool.num_active_blocks == 0


def test_abort_while_waiting_counts_once_and_frees_everything(make_cache):
    sched = make_scheduler(make_cache(hbm_blocks=8))
    sched.add(request("r", [1, 2, 3]))
    sched.abort("r")
    sched.abort("r")  # a second abort of a finished request is ignored
    assert [(f.request_id, f.reason) for f in sched.take_finished()] == [("r", FinishReason.ABORT)]
    assert not sched.requests and not sched.waiting and step(sched) == []


def test_abort_while_running_frees_its_blocks(make_cache):
    sched = make_scheduler(make_cache(hbm_blocks=8))
    sched.add(request("r", [1, 2, 3, 4, 5]))
    step(sched)
    assert sched.cache.pool.num_active_blocks > 0
    sched.abort("r")
    assert [f.reason for f in sched.take_finished()] == [FinishReason.ABORT]
    assert not sched.running and sched.cache.pool.num_active_blocks == 0


def fill_flash(cache: CacheManager, prompt: list[int]) -> None:
    """Compute `prompt` once and push its full blocks out of HBM into flash."""
    sched = make_scheduler(cache)
    sched.add(request("fill", prompt, max_tokens=1))
    run_to_end(sched)
    assert cache.offload(Tier.HBM) > 0


def test_request_reloading_from_flash_runs_once_its_load_lands(make_cache):
    cache = make_cache(hbm_blocks=8, flash_blocks=16)
    prompt = list(range(1, 14))  # 13 tokens: 3 full blocks cacheable
    fill_flash(cache, prompt)
    sched = make_scheduler(cache)
    sched.add(request("r", prompt, max_tokens=2))
    assert step(sched) == []
    assert sched.requests["r"].status is RequestStatus.LOADING_KV and sched.num_loading == 1
    cache.offload(Tier.HBM)  # the load lands meanwhile: it must not be lost (defect 1)
    sched.update_from_loads()
    assert sched.requests["r"].status is RequestStatus.RUNNING
    assert sched.requests["r"].num_cached_tokens == 12
    run_to_end(sched)
    assert [f.reason for f in sched.take_finished()] == [FinishReason.LENGTH]
    assert cache.pool.num_active_blocks == 0


def test_abort_while_loading_counts_once_and_frees_blocks_when_the_load_lands(make_cache):
    cache = make_cache(hbm_blocks=8, flash_blocks=16)
    prompt = list(range(1, 14))
    fill_flash(cache, prompt)
    free_at_start = cache.pool.num_free_blocks
    sched = make_scheduler(cache)
    sched.add(request("r", prompt))
    step(sched)
    assert sched.requests["r"].status is RequestStatus.LOADING_KV
    sched.abort("r")
    assert [(f.request_id, f.reason) for f in sched.take_finished()] == [("r", FinishReason.ABORT)]
    assert not sched.requests and sched.num_loading == 0
    cache.wait_transfers()
    sched.update_from_loads()  # nothing to hand over: the request is gone
    assert cache.pool.num_active_blocks == 0
    assert cache.pool.num_free_blocks == free_at_start
    assert len(cache.match(run_hashes(prompt), 3).hbm_block_ids) == 3  # kept for others


def run_hashes(prompt: list[int]) -> list:
    r = request("h", prompt)
    r.update_block_hashes(BS)
    return r.block_hashes


def test_priority_orders_a_saturated_queue(make_cache):
    # One sequence at a time: the queue is served by priority (lower first), then FIFO.
    cache = make_cache(hbm_blocks=16)
    sched = Scheduler(SchedulerConfig(1, 64, 64, BS), cache)
    for rid, prio in (("low", 5), ("mid", 1), ("high", -3), ("mid2", 1)):
        sched.add(request(rid, [1, 2, 3], max_tokens=1, priority=prio))
    order = []
    for _ in range(4):
        order += [o.request_id for o in step(sched) if o.is_finished]
    assert order == ["high", "mid", "mid2", "low"]


def test_preemption_takes_the_lowest_priority_request_first(make_cache):
    # 3 blocks of 4 tokens: two requests of 4 prompt tokens each hold one block; when
    # both need a second one, the lower-priority one (higher value) is preempted even
    # though it was admitted first.
    cache = make_cache(hbm_blocks=3)
    sched = make_scheduler(cache)
    sched.add(request("background", [1, 2, 3, 4], max_tokens=8, priority=10))
    sched.add(request("urgent", [5, 6, 7, 8], max_tokens=8, priority=0))
    step(sched)  # prefill both (1 block each) + their first tokens
    for _ in range(6):
        step(sched)
        if sched.num_preemptions:
            break
    assert sched.num_preemptions == 1
    assert sched.requests["background"].status is RequestStatus.WAITING
    assert sched.requests["urgent"].status is RequestStatus.RUNNING


def test_min_tokens_holds_back_stop_tokens_and_strings(make_cache):
    sched = make_scheduler(make_cache(hbm_blocks=8))
    sched.add(
        request(
            "r",
            [1, 2, 3],
            max_tokens=10,
            stop=("x",),
            min_tokens=3,
            stop_token_ids=frozenset({tokenizer.EOS}),
        )
    )
    step(sched, {"r": tokenizer.EOS})  # 1 of 3: a stop token does not stop
    step(sched)  # "x" is a stop string, 2 of 3: no stop either
    (out,) = step(sched, {"r": ord("y")})
    assert not out.is_finished
    (out,) = step(sched, {"r": tokenizer.EOS})
    assert out.finish_reason is FinishReason.STOP


def test_include_stop_str_in_output_keeps_the_stop_string_and_token_text(make_cache):
    sched = make_scheduler(make_cache(hbm_blocks=8))
    sched.add(request("s", [1, 2, 3], stop=("xy",), include_stop_str_in_output=True))
    sched.add(
        request(
            "t", [4, 5, 6], stop_token_ids=frozenset({ord("z")}), include_stop_str_in_output=True
        )
    )
    sched.add(request("u", [7, 8, 9], stop_token_ids=frozenset({ord("z")})))
    texts: dict[str, str] = {"s": "", "t": "", "u": ""}
    for tokens in ({}, {"s": ord("y"), "t": ord("z"), "u": ord("z")}):
        for o in step(sched, {"s": X, "t": X, "u": X, **tokens}):
            texts[o.request_id] += o.new_text
    assert texts == {"s": "xy", "t": "xz", "u": "x"}
    assert not sched.requests


def _priority_scheduler(cache: CacheManager, max_num_seqs: int) -> Scheduler:
    config = SchedulerConfig(max_num_seqs, 64, 64, BS, preempt_for_priority=True)
    return Scheduler(config, cache)


def test_urgent_request_preempts_a_full_batch_and_the_victim_resumes_from_cache(make_cache):
    # Two background requests fill max_num_seqs; an urgent one arrives. It is admitted in
    # the next step (the newest background request is preempted, its full blocks stay
    # cached) and the victim later resumes with those blocks as cached tokens.
    cache = make_cache(hbm_blocks=32)
    sched = _priority_scheduler(cache, max_num_seqs=2)
    sched.add(request("bg1", list(range(1, 10)), max_tokens=6, priority=5))
    sched.add(request("bg2", list(range(20, 29)), max_tokens=6, priority=5))
    step(sched)
    step(sched)
    sched.add(request("urgent", [40, 41, 42], max_tokens=2, priority=0))
    plan = sched.schedule()
    assert "urgent" in [c.request.request_id for c in plan.chunks]
    assert [r.request_id for r in plan.preempted] == ["bg2"]
    assert "bg2" not in [c.request.request_id for c in plan.chunks]
    sched.update_from_output(plan, {c.request.request_id: X for c in plan.chunks})
    run_to_end(sched)
    assert sched.num_preemptions == 1
    assert cache.snapshot_stats().hit_tokens[Tier.HBM] >= 8  # bg2's 2 full blocks


def test_equal_priority_does_not_preempt(make_cache):
    sched = _priority_scheduler(make_cache(hbm_blocks=32), max_num_seqs=1)
    sched.add(request("a", [1, 2, 3], max_tokens=4, priority=0))
    step(sched)
    sched.add(request("b", [4, 5, 6], max_tokens=4, priority=0))
    plan = sched.schedule()
    assert [c.request.request_id for c in plan.chunks] == ["a"] and not plan.preempted


def test_priority_preemption_is_off_by_default(make_cache):
    sched = Scheduler(SchedulerConfig(1, 64, 64, BS), make_cache(hbm_blocks=32))
    sched.add(request("bg", [1, 2, 3], max_tokens=4, priority=5))
    step(sched)
    sched.add(request("urgent", [4, 5, 6], max_tokens=4, priority=0))
    plan = sched.schedule()
    assert [c.request.request_id for c in plan.chunks] == ["bg"] and not plan.preempted


def test_urgent_request_takes_the_budget_of_worse_chunks(make_cache):
    # The background prefill fills the whole token budget; an urgent request still gets
    # into the next step (the background chunk waits a step, keeping its blocks).
    cache = make_cache(hbm_blocks=64)
    sched = Scheduler(SchedulerConfig(8, 16, 128, BS, preempt_for_priority=True), cache)
    sched.add(request("bg", list(range(1, 60)), max_tokens=4, priority=5))
    step(sched)  # 16 of 59 prompt tokens
    sched.add(request("urgent", [70, 71, 72], max_tokens=2, priority=0))
    plan = sched.schedule()
    assert [c.request.request_id for c in plan.chunks] == ["urgent"]
    assert not plan.preempted and sched.requests["bg"].block_ids
    sched.update_from_output(plan, {"urgent": X})
    run_to_end(sched)
    assert sched.num_preemptions == 0


def test_queue_order_matches_the_plain_walk_for_mixed_priorities(make_cache):
    # `WaitingQueue.enqueue` skips the walk of the queue in its common cases (simulator profile of
    # an overloaded replica); the order must stay exactly the walk's: by priority, new
    # requests after their equals, resumed ones before them.
    rng = random.Random(7)
    sched = make_scheduler(make_cache(hbm_blocks=4))
    expected: list[EngineRequest] = []
    for i in range(300):
        r = request(f"r{i}", [1, 2, 3], priority=rng.choice((-1, 0, 0, 0, 2)))
        resumed = rng.random() < 0.3
        index = next(
            (
                k
                for k, o in enumerate(expected)
                if o.priority > r.priority or (resumed and o.priority == r.priority)
            ),
            len(expected),
        )
        expected.insert(index, r)
        sched.waiting.enqueue(r, resumed=resumed)
        if rng.random() < 0.2:
            expected.pop(0)
            sched.waiting.popleft()
    assert list(sched.waiting) == expected
