"""The oracle under concurrent requests while spills are encoded on the transfer lanes:
requests that evict each other's blocks (spilled to DDR, encoded off the engine thread)
and reload them get exactly their cold-run tokens."""

from __future__ import annotations

import threading
from typing import Any

from tests.server.live import hbm_gb_for_blocks, run_server

NUM_PROMPTS = 8
MAX_TOKENS = 8
REQUEST_TIMEOUT_S = 60.0


def prompt(i: int) -> str:
    return "".join(f"Prompt {i}, line {j}: spill me, then bring me back. " for j in range(4))


def test_concurrent_requests_that_spill_and_reload_each_other_get_cold_run_tokens(
    make_settings,
):
    # ~13 blocks per prompt and 40 blocks of HBM: every round evicts and spills most of
    # the others' blocks while their requests reload theirs.
    settings = make_settings(hbm_gb=hbm_gb_for_blocks(40), flash_gb=0, max_model_len=256)
    with run_server(settings) as server:
        cold = [
            server.complete(prompt(i), MAX_TOKENS)["choices"][0]["text"] for i in range(NUM_PROMPTS)
        ]
        results: dict[tuple[int, int], Any] = {}

        def ask(round_no: int, i: int) -> None:
            body = {
                "model": settings.served_model,
                "prompt": prompt(i),
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "ignore_eos": True,
            }
            try:
                r = server.client.post("/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S)
                results[round_no, i] = r.json()
            except Exception as exc:  # a hang surfaces as a timeout here
                results[round_no, i] = exc

        for round_no in range(3):
            order = [(i * 3 + round_no) % NUM_PROMPTS for i in range(NUM_PROMPTS)]
            threads = [threading.Thread(target=ask, args=(round_no, i)) for i in order]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(REQUEST_TIMEOUT_S + 5)

        for (round_no, i), body in sorted(results.items()):
            assert isinstance(body, dict), f"round {round_no}, prompt {i}: {body!r}"
            assert body["choices"][0]["text"] == cold[i], f"round {round_no}, prompt {i}"
        assert len(results) == 3 * NUM_PROMPTS
        tiers = server.cache_stats()["tiers"]
        assert tiers["hbm"]["evictions"] > 0 and tiers["ddr"]["write_bytes"] > 0
        assert tiers["ddr"]["hit_blocks"] > 0  # spilled blocks did come back
        assert tiers["ddr"]["checksum_failures"] == 0
