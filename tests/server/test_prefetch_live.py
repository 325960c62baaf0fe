"""Prefetch for queued requests (issue #10, item 1) on a live server, with #7's guarantees,
and chunk-wise loading (item 2) with the numpy model's real tokens.

Requests whose prefixes sit in DDR queue behind a small batch, so their reloads start
while they wait. Offloads race them, and a slow DDR makes some prefetches miss their
deadline: every request still finishes with the tokens of a cold run, and no HBM block
stays referenced.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.server.live import LiveServer, run_server

NUM_PROMPTS = 10
MAX_TOKENS = 6
REQUEST_TIMEOUT_S = 60.0  # a hung request shows up as this timeout


def prompt(i: int) -> str:
    return "".join(f"Queued prompt {i}, line {j}: prefetch me while I wait. " for j in range(8))


def ask_all(server: LiveServer, race_offloads: bool) -> list[Any]:
    def race(i: int) -> None:
        if race_offloads and i % 3 == 0:
            # The race's jitter, not a wait for work to finish.
            time.sleep((i % 7) / 1000)
            server.offload("hbm")

    prompts = [prompt(i) for i in range(NUM_PROMPTS)]
    return server.complete_in_threads(prompts, MAX_TOKENS, REQUEST_TIMEOUT_S, on_start=race)


@pytest.mark.parametrize(
    ("faults", "timeout_ms"),
    [("", 300), ("ddr:latency_ms=40", 10)],
    ids=["ddr", "slow-ddr-past-deadline"],
)
def test_queued_requests_prefetch_and_finish_with_cold_tokens(make_settings, faults, timeout_ms):
    settings = make_settings(
        flash_gb=0,
        max_num_seqs=2,
        prefetch_fraction=0.5,
        tier_faults=faults,
        reload_timeout_ms=timeout_ms,
    )
    with run_server(settings) as server:
        cold = [
            server.complete(prompt(i), MAX_TOKENS)["choices"][0]["text"] for i in range(NUM_PROMPTS)
        ]
        assert server.offload("hbm") > 0
        results = ask_all(server, race_offloads=True)
        for i in range(NUM_PROMPTS):
            assert isinstance(results[i], dict), f"request {i}: {results[i]!r}"
            assert results[i]["choices"][0]["text"] == cold[i], f"request {i}"
        assert server.metric("tierkv:prefetched_blocks_total") > 0
        engine = server.cache_stats()["engine"]
        assert engine["loading_kv"] == 0 and engine["running"] == 0 and engine["waiting"] == 0
        # Nothing leaked: no block is referenced once every request finished.
        assert server.cache_stats()["tiers"]["hbm"]["active_blocks"] == 0
        assert server.metric("tierkv:tier_load_inflight_seconds_total") > 0
        timeouts = server.metric("tierkv:tier_reload_timeouts_total", tier="ddr")
        assert (timeouts > 0) == bool(faults)  # the slow DDR's loads did miss the deadline


def test_a_split_hit_computes_its_head_while_its_tail_loads_with_cold_tokens(make_settings):
    # The numpy model's real tokens. On an H100's clock, 64-token chunks and nfs make
    # the planner compute about half of a 60-block flash hit while the rest loads.
    settings = make_settings(
        device="h100-sxm",
        ddr_gb=0,
        flash_media="nfs",
        load_policy="cost",
        max_num_batched_tokens=64,
    )
    text = "".join(f"Split line {j}: compute my head while my tail loads. " for j in range(18))
    with run_server(settings) as server:
        cold = server.complete(text, MAX_TOKENS)
        assert server.offload("hbm") > 0
        before = server.metric("tierkv:prefix_cache_hits_total", tier="flash")
        hit = server.complete(text, MAX_TOKENS)
        assert hit["choices"][0]["text"] == cold["choices"][0]["text"]
        cached = hit["usage"]["prompt_tokens_details"]["cached_tokens"]
        prompt_tokens = hit["usage"]["prompt_tokens"]
        assert 0 < cached < prompt_tokens - 16 * 8  # a tail only: the head was computed
        assert server.metric("tierkv:prefix_cache_hits_total", tier="flash") - before == cached
        assert server.cache_stats()["tiers"]["hbm"]["active_blocks"] == 0
