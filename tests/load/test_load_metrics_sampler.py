"""Sampling /metrics during a run: reducing scrapes and building the time series."""

import asyncio
import time

import httpx
import pytest

from load.metrics_sampler import (
    MetricsSampler,
    ServerPoint,
    kv_usage,
    reduce_snapshot,
    server_timeline,
)
from load.metrics_scrape import parse_metrics

TIERKV = """\
# TYPE tierkv:num_requests_running gauge
tierkv:num_requests_running 3.0
# TYPE tierkv:num_requests_waiting gauge
tierkv:num_requests_waiting 5.0
# TYPE tierkv:prefix_cache_queries counter
tierkv:prefix_cache_queries_total 1000.0
# TYPE tierkv:prefix_cache_hits counter
tierkv:prefix_cache_hits_total{tier="hbm"} 300.0
tierkv:prefix_cache_hits_total{tier="ddr"} 100.0
tierkv:prefix_cache_hits_total{tier="flash"} 0.0
# TYPE tierkv:tier_blocks gauge
tierkv:tier_blocks{tier="hbm"} 40.0
# TYPE tierkv:tier_active_blocks gauge
tierkv:tier_active_blocks{tier="hbm"} 10.0
# TYPE tierkv:tier_used_bytes gauge
tierkv:tier_used_bytes{tier="hbm"} 40960.0
# TYPE tierkv:tier_capacity_bytes gauge
tierkv:tier_capacity_bytes{tier="hbm"} 102400.0
# TYPE tierkv:npu_modelled_busy_seconds counter
tierkv:npu_modelled_busy_seconds_total 2.0
# TYPE tierkv:npu_wall_busy_seconds counter
tierkv:npu_wall_busy_seconds_total 4.0
"""

VLLM = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{model_name="m"} 200.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{model_name="m"} 50.0
"""


def test_reduce_a_tierkv_scrape():
    p = reduce_snapshot(1.5, parse_metrics(TIERKV))
    assert (p.t_s, p.running, p.waiting, p.queries) == (1.5, 3.0, 5.0, 1000.0)
    assert p.hits == {"hbm": 300.0, "ddr": 100.0, "flash": 0.0}
    # 10 held blocks of 1 KiB over a 100 KiB pool
    assert p.kv_usage == pytest.approx(0.1) and p.kv_usage_source == "tier_active_blocks"
    assert (p.npu_modelled_s, p.npu_wall_s) == (2.0, 4.0)
    assert p.loading_kv is None  # not served: None, no error


def test_vllm_names_and_kv_usage_perc_win():
    p = reduce_snapshot(0.0, parse_metrics(VLLM))
    assert p.running == 2.0 and p.waiting is None
    assert (p.kv_usage, p.kv_usage_source) == (0.5, "kv_cache_usage_perc")
    assert p.hits == {"hbm": 50.0}
    # tierkv serving vLLM's names too: vLLM's usage series is preferred
    assert kv_usage(parse_metrics(TIERKV + VLLM)) == (0.5, "kv_cache_usage_perc")
    assert kv_usage(parse_metrics("")) == (None, None)


def point(t, queries, hits, modelled=None, wall=None, **gauges):
    return ServerPoint(
        t_s=t,
        running=gauges.get("running"),
        waiting=gauges.get("waiting"),
        loading_kv=None,
        kv_usage=gauges.get("kv"),
        kv_usage_source=None,
        queries=queries,
        hits=hits,
        npu_modelled_s=modelled,
        npu_wall_s=wall,
    )


def test_timeline_rates_per_interval():
    points = [
        point(0.0, 0.0, {"hbm": 0.0, "ddr": 0.0}, 0.0, 0.0, running=0.0),
        point(0.5, 100.0, {"hbm": 50.0, "ddr": 10.0}, 0.25, 0.5, running=2.0),
        point(1.0, 100.0, {"hbm": 50.0, "ddr": 10.0}, 0.25, 0.5, running=1.0),  # idle
        point(2.0, 50.0, {"hbm": 25.0, "ddr": 0.0}, 0.5, 1.5, running=0.0),  # restarted
    ]
    tl = server_timeline(points, 0.5)
    assert tl["num_samples"] == 4 and tl["t_s"] == [0.0, 0.5, 1.0, 2.0]
    assert tl["num_requests_running"] == [0.0, 2.0, 1.0, 0.0]
    assert tl["num_requests_waiting"] == [None] * 4
    assert tl["interval_end_s"] == [0.5, 1.0, 2.0]
    assert tl["hit_rate_by_tier"]["hbm"] == [0.5, None, 0.5]
    assert tl["hit_rate_by_tier"]["ddr"] == [0.1, None, 0.0]
    assert tl["prefix_cache_queries_per_s"] == [200.0, 0.0, 50.0]
    assert tl["npu_modelled_busy"] == pytest.approx([0.5, 0.0, 0.25])
    assert tl["npu_wall_busy"] == pytest.approx([1.0, 0.0, 1.0])
    assert server_timeline([], 1.0)["interval_end_s"] == []


def test_sampler_against_a_live_tierkv(tierkv):
    async def sample() -> MetricsSampler:
        async with httpx.AsyncClient() as client:
            sampler = MetricsSampler(client, tierkv.base_url, time.perf_counter(), 0.01)
            sampler.start()
            while len(sampler.points) < 3:  # poll, no fixed sleep
                await asyncio.sleep(0.01)
            await sampler.stop()
            return sampler

    sampler = asyncio.run(sample())
    assert sampler.num_failed == 0
    p = sampler.points[-1]
    assert p.running == 0.0 and p.waiting == 0.0 and p.kv_usage == 0.0
    assert set(p.hits) == {"hbm", "ddr", "flash"} and p.npu_modelled_s is not None
    with pytest.raises(ValueError):
        MetricsSampler(httpx.AsyncClient(), "http://x", 0.0, interval_s=0)


def test_vnpu_busy_series_become_per_vnpu_utilisation():
    text = TIERKV + (
        "# TYPE tierkv:vnpu_modelled_busy_seconds counter\n"
        'tierkv:vnpu_modelled_busy_seconds_total{vnpu="a"} 1.0\n'
        'tierkv:vnpu_modelled_busy_seconds_total{vnpu="b"} 3.0\n'
    )
    first = reduce_snapshot(0.0, parse_metrics(text))
    assert first.vnpu_busy_s == {"a": 1.0, "b": 3.0}
    later = reduce_snapshot(2.0, parse_metrics(text.replace("} 3.0", "} 4.0")))
    tl = server_timeline([first, later], 1.0)
    assert tl["vnpu_modelled_busy"] == {"a": [0.0], "b": [0.5]}
    assert reduce_snapshot(0.0, parse_metrics(TIERKV)).vnpu_busy_s == {}
