"""Load or recompute: the planner reloads a hit only where that beats recomputing it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cache.stats import Tier
from npu_sim.device import get_device
from npu_sim.links import LinkSpec, TierPaths, get_media
from npu_sim.model_config import get_cost_model_config
from server.config import Settings
from server.engine.load_planner import LoadPlanner
from tests.server.live import run_server

DEVICE = get_device("h100-sxm")
SHAPE = get_cost_model_config("llama-3-8b")
BLOCK_BYTES = SHAPE.kv_bytes_per_token * 16


def planner(flash: LinkSpec) -> LoadPlanner:
    paths = TierPaths(host_link=DEVICE.host_link, ddr=get_media("local-ddr"), flash=flash)
    return LoadPlanner(SHAPE, DEVICE, paths, BLOCK_BYTES, 16, 512)


def test_fast_media_is_loaded_slow_media_recomputed_and_the_choice_is_the_cheapest():
    fast, slow = planner(get_media("nvme")), planner(get_media("nfs"))
    tiers = [Tier.FLASH] * 64  # a 1k-token prefix on flash, 1,040 tokens in the prompt
    assert fast.blocks_to_load(0, tiers, 1040) == 64
    assert slow.blocks_to_load(0, tiers, 1040) == 0
    for p in (fast, slow):  # the decision is the minimum of the two modelled TTFTs
        k = p.blocks_to_load(0, tiers, 1040)
        ttft = p.ttft_seconds(0, tiers, k, 1040)
        assert ttft == min(p.ttft_seconds(0, tiers, j, 1040) for j in (0, 64))
    # Cake-style split: a DDR head is loaded, a slow flash tail recomputed.
    mixed = [Tier.DDR] * 32 + [Tier.FLASH] * 32
    assert slow.blocks_to_load(0, mixed, 1040) == 32


def test_load_and_compute_costs_follow_the_models():
    p = planner(get_media("nfs"))
    assert p.load_seconds([]) == 0.0
    one = p.paths.seconds("flash", BLOCK_BYTES)
    assert p.load_seconds([Tier.FLASH]) == pytest.approx(one)
    # Two lanes run in parallel: DDR and flash blocks cost the slower of the two.
    assert p.load_seconds([Tier.DDR, Tier.FLASH]) == pytest.approx(
        max(one, p.paths.seconds("ddr", BLOCK_BYTES))
    )
    assert p.compute_seconds(100, 100) == 0.0
    assert p.compute_seconds(0, 1024) > p.compute_seconds(512, 1024) > 0


def test_live_server_recomputes_a_slow_flash_hit_and_reloads_a_fast_one(
    make_settings: Callable[..., Settings],
):
    prompt = "x" * 1100  # ~68 blocks: the byte tokenizer of --emulate
    base = dict(
        emulate="llama-3-8b",
        device="h100-sxm",
        hbm_gb=40.0,
        ddr_gb=0,
        flash_gb=8.0,
        load_policy="cost",
        max_model_len=4096,
    )
    cached = {}
    for media in ("nvme", "nfs"):
        with run_server(make_settings(flash_media=media, **base)) as server:
            cold = server.complete(prompt, 4)
            server.offload("hbm")
            before = server.metric("tierkv:prefix_cache_hits_total", tier="flash")
            body = server.complete(prompt, 4)
            assert body["choices"][0]["text"] == cold["choices"][0]["text"]
            cached[media] = body["usage"]["prompt_tokens_details"]["cached_tokens"]
            after = server.metric("tierkv:prefix_cache_hits_total", tier="flash")
            assert after - before == cached[media]
    # With the split (compute the head while the tail loads) the slow medium still
    # serves the part of the prefix it can bring up in the head's compute time.
    assert cached["nvme"] > 2 * cached["nfs"] > 0


def test_the_split_computes_the_head_while_the_tail_loads_and_beats_both_extremes():
    tiers = [Tier.FLASH] * 64
    for media in ("nvme", "nfs"):
        p = planner(get_media(media))
        c, k = p.split(0, tiers, 1040)
        assert 0 < c < k == 64, media
        ttft = p.split_ttft_seconds(0, tiers, c, k, 1040)
        serial = min(p.ttft_seconds(0, tiers, j, 1040) for j in (0, 64))
        assert ttft < serial, media  # better than loading all or recomputing all
        # c is where computing the head meets loading the tail: no c does better.
        assert ttft == min(p.split_ttft_seconds(0, tiers, j, 64, 1040) for j in range(65))
    assert planner(get_media("nfs")).split(0, [], 1040) == (0, 0)
