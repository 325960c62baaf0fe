"""The correctness oracle: a cache hit from any tier gives exactly the cold-run tokens.

Runs on the seeded tiny model, on the trained SmolLM2-135M (fetched once into the
model cache; CI reaches PyPI, so it is never skipped), and emulating llama-3-8b (real-size
block layout at the default stored fraction, synthetic tokens that depend on the KV bytes
read; see npu_sim.emulated).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cache.block_hash import hash_full_blocks, root_hash
from cache.layout import LAYOUT_VERSION
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.redis_tier import RedisTier, connect_redis
from npu_sim.model_config import get_model_config
from npu_sim.pretrained import get_tokenizer
from server.config import GB, Settings
from server.stack import kv_layout
from tests.server.live import LiveServer, run_server

PROMPT = "".join(f"Line {i}: the tiered cache keeps every block it can. " for i in range(12))
MAX_TOKENS = 24


# llama-3-8b's ~15 GiB of weights count against HBM: 17 GiB leaves ~1,000 blocks of 2 MiB
# (32 KiB stored each at the default fraction); DDR and flash in logical GiB.
EMULATED: dict[str, Any] = dict(emulate="llama-3-8b", hbm_gb=17.0, ddr_gb=1.0, flash_gb=2.0)


@pytest.fixture(params=["tiny-llama", "smollm2-135m", "emulated-llama-3-8b"])
def make_settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]):
    """The server fixture's settings for each model, with HBM for its weights."""
    if request.param == "emulated-llama-3-8b":

        def make_emulated(**overrides: Any) -> Settings:
            return make_settings(**{**EMULATED, **overrides})

        return make_emulated
    model = request.param
    hbm_gb = get_model_config(model).weight_bytes / GB + (0.05 if model == "tiny-llama" else 0.15)

    def make(**overrides: Any) -> Settings:
        return make_settings(model=model, hbm_gb=hbm_gb, **overrides)

    return make


def prompt_ids(settings: Settings) -> list[int]:
    tok = get_tokenizer(settings.model, Path(settings.model_cache_dir).expanduser())
    return ([] if tok.bos_id is None else [tok.bos_id]) + tok.encode(PROMPT)


def expected_cached(settings: Settings) -> int:
    n = len(prompt_ids(settings))
    return (n - 1) // settings.block_size * settings.block_size


def run(server: LiveServer) -> tuple[str, int]:
    body = server.complete(PROMPT, MAX_TOKENS)
    assert body["usage"]["completion_tokens"] == MAX_TOKENS
    return body["choices"][0]["text"], body["usage"]["prompt_tokens_details"]["cached_tokens"]


def prompt_block_hashes(server: LiveServer) -> list[bytes]:
    ids = prompt_ids(server.settings)
    root = root_hash(server.cache_stats()["numerics_id"], LAYOUT_VERSION, None)
    return hash_full_blocks(ids, server.settings.block_size, root)


def test_hits_from_hbm_ddr_and_flash_after_restart_match_the_cold_run(make_settings):
    settings = make_settings()
    full = expected_cached(settings)
    with run_server(settings) as server:
        cold, cached = run(server)
        assert cached == 0 and cold

        assert run(server) == (cold, full)  # (b) prefix in HBM
        assert server.metric("tierkv:prefix_cache_hits_total", tier="hbm") >= full

        assert server.offload("hbm") > 0  # (c) prefix only in DDR
        assert server.cache_stats()["tiers"]["hbm"]["blocks"] == 0
        assert run(server) == (cold, full)
        assert server.metric("tierkv:prefix_cache_hits_total", tier="ddr") == full

        server.offload("hbm")
        assert server.offload("ddr") > 0
    with run_server(settings) as server:  # (d) restarted: DDR is empty, flash persisted
        assert server.cache_stats()["tiers"]["ddr"]["blocks"] == 0
        assert server.cache_stats()["tiers"]["flash"]["blocks"] > 0
        assert run(server) == (cold, full)
        assert server.metric("tierkv:prefix_cache_hits_total", tier="flash") == full
        assert server.metric("tierkv:tier_read_bytes_total", tier="flash") > 0


def test_chunking_and_batching_do_not_change_tokens(make_settings):
    with run_server(make_settings(max_num_batched_tokens=512)) as server:
        reference, _ = run(server)
    with run_server(make_settings(max_num_batched_tokens=37, flash_gb=0)) as server:
        chunked, _ = run(server)
    assert chunked == reference


def test_corrupt_ddr_block_is_detected_recomputed_and_output_unchanged(make_settings):
    with run_server(make_settings(flash_gb=0)) as server:
        cold, _ = run(server)
        server.offload("hbm")
        layout = kv_layout(server.settings)
        ddr = RedisTier(
            connect_redis(f"unix://{server.settings.data_dir}/redis.sock"), layout.namespace
        )
        victim = prompt_block_hashes(server)[3]
        payload = bytearray(ddr.get(victim))
        payload[len(payload) // 2] ^= 0x01
        ddr.put(victim, bytes(payload))

        text, cached = run(server)
        assert text == cold
        assert cached == 3 * server.settings.block_size  # blocks 0..2, then recomputed
        assert server.metric("tierkv:tier_checksum_failures_total", tier="ddr") == 1
        assert ddr.get(victim) is None  # dropped, never served
        ddr.close()


def test_corrupt_flash_block_is_detected_recomputed_and_output_unchanged(make_settings):
    settings = make_settings(ddr_gb=0)  # spill straight to flash
    with run_server(settings) as server:
        cold, _ = run(server)
        server.offload("hbm")
        victim = prompt_block_hashes(server)[0]
    flash = LmdbTier(settings.data_dir / "flash", 1 << 30, kv_layout(settings).namespace)
    payload = bytearray(flash.get(victim))
    payload[-1] ^= 0x80
    flash.put(victim, bytes(payload))
    flash.close()
    with run_server(settings) as server:
        text, cached = run(server)
        assert text == cold
        assert cached == 0  # the very first block was bad: everything recomputed
        assert server.metric("tierkv:tier_checksum_failures_total", tier="flash") == 1
