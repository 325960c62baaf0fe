"""A live server's KV events rebuild its exact per-tier index (compared with /cache/stats)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from cache.event_subscriber import KVEventSubscriber
from cache.stats import Tier
from server.config import Settings
from tests.server.live import LiveServer, hbm_gb_for_blocks, run_server

TIMEOUT = 60.0
BLOCK_BYTES = 16 * 1024  # tiny-llama, 16-token blocks


def _prompt(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(n))


def _stats_counts(live: LiveServer) -> dict[Tier, int]:
    tiers = live.cache_stats()["tiers"]
    return {tier: tiers[tier.value]["blocks"] for tier in Tier}


def _agrees(sub: KVEventSubscriber, live: LiveServer) -> bool:
    want = _stats_counts(live)  # idle server: every used HBM block is a cached one
    return sub.wait_for(lambda index: index.counts() == want, TIMEOUT)


def test_subscriber_rebuilds_every_tier_of_a_live_server(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        hbm_gb=hbm_gb_for_blocks(140),
        ddr_gb=60 * BLOCK_BYTES * 1.1 / 1024**3,
        kv_events_endpoint="tcp://127.0.0.1:*",
        kv_events_replay_endpoint="tcp://127.0.0.1:*",
    )
    rng = random.Random(7)
    prompts = [_prompt(rng, 600) for _ in range(10)]
    with run_server(settings) as live:
        info: dict[str, Any] = live.cache_stats()["kv_events"]
        assert info["endpoint"].startswith("tcp://127.0.0.1:")
        for prompt in prompts:  # 10 x 37 blocks through 140 HBM and 60 DDR blocks
            live.complete(prompt, max_tokens=4)
        counts = _stats_counts(live)
        assert all(counts[tier] > 0 for tier in Tier), counts
        # A late joiner: everything so far comes by replay.
        sub = KVEventSubscriber(info["endpoint"], info["replay_endpoint"])
        try:
            assert _agrees(sub, live)
            # Then live events: reloads into HBM, an offload of HBM, new blocks.
            for prompt in prompts[:3]:
                live.complete(prompt, max_tokens=4)
            assert _agrees(sub, live)
            assert live.offload("hbm") > 0
            assert _agrees(sub, live)
            assert sub.counts()[Tier.HBM] == 0
            live.complete(_prompt(rng, 300), max_tokens=4)
            assert _agrees(sub, live)
        finally:
            sub.close()


def test_events_are_off_by_default(server: LiveServer) -> None:
    assert server.cache_stats()["kv_events"] is None


def test_blocks_found_in_flash_at_start_up_are_announced(
    make_settings: Callable[..., Settings],
) -> None:
    """A restarted server's flash blocks come from a bulk index rebuild: they must still
    reach a subscriber (they did not before: the bulk path reported nothing)."""
    settings = make_settings(
        ddr_gb=0,  # spills go straight to flash, which survives the restart
        kv_events_endpoint="tcp://127.0.0.1:*",
        kv_events_replay_endpoint="tcp://127.0.0.1:*",
    )
    with run_server(settings) as live:
        live.complete(_prompt(random.Random(3), 600), max_tokens=4)
        assert live.offload("hbm") > 0
    with run_server(settings) as live:
        assert _stats_counts(live)[Tier.FLASH] > 0
        info: dict[str, Any] = live.cache_stats()["kv_events"]
        sub = KVEventSubscriber(info["endpoint"], info["replay_endpoint"])
        try:
            assert _agrees(sub, live)
        finally:
            sub.close()
