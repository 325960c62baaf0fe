"""Issue #7, defect 1: `POST /cache/offload` racing requests whose KV is reloading.

Before the fix, the offload swallowed the finished loads of those requests: they stayed
in LOADING_KV forever and kept their HBM blocks.
"""

from __future__ import annotations

import time

from tests.server.live import run_server

NUM_PROMPTS = 20
MAX_TOKENS = 8
# A hung request shows up as this timeout; a healthy one takes well under a second.
REQUEST_TIMEOUT_S = 30.0


def prompt(i: int) -> str:
    return "".join(f"Prompt {i}, line {j}: reload me while you offload. " for j in range(8))


def test_offload_while_requests_reload_hangs_nothing_and_leaks_nothing(make_settings):
    with run_server(make_settings(flash_gb=0)) as server:
        cold = [
            server.complete(prompt(i), MAX_TOKENS)["choices"][0]["text"] for i in range(NUM_PROMPTS)
        ]
        assert server.offload("hbm") > 0
        assert server.cache_stats()["tiers"]["hbm"]["active_blocks"] == 0

        def race(i: int) -> None:
            # The race's jitter (0-19 ms between the request and the offload), not a wait
            # for work to finish.
            time.sleep((i % 20) / 1000)
            server.offload("hbm")

        prompts = [prompt(i) for i in range(NUM_PROMPTS)]
        results = server.complete_in_threads(
            prompts, MAX_TOKENS, REQUEST_TIMEOUT_S, on_start=race, one_at_a_time=True
        )

        for i in range(NUM_PROMPTS):
            assert isinstance(results[i], dict), f"request {i}: {results[i]!r}"
            assert results[i]["choices"][0]["text"] == cold[i], f"request {i}"
        engine = server.cache_stats()["engine"]
        assert engine["loading_kv"] == 0 and engine["running"] == 0
        # No HBM block leaked: nothing is referenced once every request finished.
        assert server.cache_stats()["tiers"]["hbm"]["active_blocks"] == 0
        assert server.metric("tierkv:num_requests_loading_kv") == 0
