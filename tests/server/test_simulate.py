"""The simulator's engine side (server.simulate): virtual clock, lanes, loads on it."""

from __future__ import annotations

import pytest

from cache.stats import Tier
from npu_sim.links import TierPaths, get_media
from npu_sim.model_config import get_cost_model_config
from server.config import GB, Settings
from server.simulate.clock import ClockError, VirtualClock, VirtualLanes
from server.simulate.engine import SimRequest, Simulator
from server.stack import ConfigError, scheduler_config

SHAPE = get_cost_model_config("llama-3-8b")
BLOCK_BYTES = SHAPE.kv_bytes_per_token * 16  # 2 MiB


def hbm_gb(num_blocks: int) -> float:
    return (SHAPE.weight_bytes + num_blocks * BLOCK_BYTES) / GB


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = dict(
        emulate="llama-3-8b",
        hbm_gb=hbm_gb(600),
        ddr_gb=600 * BLOCK_BYTES / GB,
        flash_gb=0,
        max_model_len=8192,
    )
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


def test_the_virtual_clock_never_goes_back():
    clock = VirtualClock()
    clock.advance_to(1.5)
    clock.advance_to(1.5)
    with pytest.raises(ClockError):
        clock.advance_to(1.0)
    assert clock.now == 1.5


def test_lanes_run_each_tier_fifo_and_tiers_in_parallel():
    clock = VirtualClock(10.0)
    host = get_media("local-ddr")
    paths = TierPaths(host_link=host, ddr=get_media("local-ddr"), flash=get_media("nvme"))
    lanes = VirtualLanes(clock, paths, logical_per_stored=1.0)
    one = paths.seconds("ddr", 1e9)
    first = lanes(Tier.DDR, 10**9, 0.0, False)
    second = lanes(Tier.DDR, 10**9, 0.0, False)
    flash = lanes(Tier.FLASH, 10**9, 0.0, True)
    assert first == pytest.approx(10.0 + one)
    assert second == pytest.approx(10.0 + 2 * one)  # queued behind the first
    assert flash == pytest.approx(10.0 + paths.seconds("flash", 1e9, write=True))
    assert lanes.finish_of_last(Tier.DDR) == second


def test_records_and_samples_run_forward_in_virtual_time():
    sim = Simulator(settings(), sample_interval_s=0.05)
    prompt = sim.tokenize_completion("shared system prompt " * 40)
    for i in range(12):
        tail = sim.tokenize_completion(f"question {i} " * 30)[1:]
        sim.submit(SimRequest(i, 0.03 * i, prompt + tail, 8))
    records = sim.run()
    assert sorted(r.index for r in records) == list(range(12))
    for r in records:
        assert r.error is None and r.output_tokens == 8 and len(r.token_times_s) == 8
        assert r.first_token_s is not None and r.end_s is not None
        assert r.arrival_s < r.first_token_s <= r.end_s
        assert r.token_times_s == sorted(r.token_times_s)
        assert r.token_times_s[0] == r.first_token_s and r.token_times_s[-1] == r.end_s
    times = [s.t_s for s in sim.samples]
    assert len(times) > 3 and times == sorted(times)
    assert max(r.cached_tokens for r in records) > 0  # the shared prompt was reused
    assert sim.totals().steps > 0 and sim.num_in_flight == 0


def test_a_ddr_hit_waits_for_the_modelled_link():
    sim = Simulator(settings())
    prompt = sim.tokenize_completion("y" * 4095)  # 4,096 tokens with BOS
    sim.submit(SimRequest(0, 0.0, prompt, 1))
    (cold,) = sim.run()
    assert sim.cache.offload(Tier.HBM) == 256
    sim.submit(SimRequest(1, 10.0, prompt, 1))
    (hit,) = sim.run()
    assert hit.cached_tokens == 4080  # the last token is always computed
    stats = sim.totals().cache
    assert stats.hit_tokens[Tier.DDR] == 4080 and stats.hit_tokens[Tier.HBM] == 0
    link = sim.lanes.paths.seconds("ddr", 255 * BLOCK_BYTES)
    assert hit.first_token_s is not None and cold.first_token_s is not None
    ttft_hit = hit.first_token_s - hit.arrival_s
    assert ttft_hit >= link  # 255 blocks of 2 MiB at the host link's 25 GB/s: ~21 ms
    assert ttft_hit < cold.first_token_s - cold.arrival_s


def test_a_load_past_its_deadline_is_recomputed_as_in_the_server():
    # 255 blocks from NFS take ~0.49 s modelled: past the 300 ms deadline.
    sim = Simulator(
        settings(ddr_gb=0, flash_gb=600 * BLOCK_BYTES / GB, flash_media="nfs", device="h100-sxm")
    )
    prompt = sim.tokenize_completion("z" * 4095)
    sim.submit(SimRequest(0, 0.0, prompt, 1))
    sim.run()
    sim.cache.offload(Tier.HBM)
    sim.submit(SimRequest(1, 10.0, prompt, 1))
    (late,) = sim.run()
    stats = sim.totals().cache
    assert late.cached_tokens == 0
    assert stats.hit_tokens[Tier.FLASH] == 0 and stats.tiers[Tier.FLASH].hit_blocks == 0
    assert stats.tiers[Tier.FLASH].reload_timeouts == 1
    assert late.first_token_s is not None and late.first_token_s - late.arrival_s > 0.3


def test_only_emulated_replicas_and_prompts_that_fit():
    with pytest.raises(ConfigError):
        Simulator(Settings(hbm_gb=1))
    sim = Simulator(settings(max_model_len=1024))
    sim.submit(SimRequest(0, 0.0, sim.tokenize_completion("a" * 1020), 8))
    (refused,) = sim.run()
    assert refused.error is not None and refused.error.startswith("400")
    assert refused.first_token_s is None


def test_the_simulated_scheduler_is_configured_as_the_server_s():
    """Same SchedulerConfig as `build_stack` (the simulator never prefetched: it built its
    own config without `prefetch_blocks`)."""
    s = settings(prefetch_fraction=0.25)
    sim = Simulator(s)
    assert sim.scheduler.config == scheduler_config(s, sim.sizing.config.hbm_num_blocks)
    assert sim.scheduler.config.prefetch_blocks > 0
