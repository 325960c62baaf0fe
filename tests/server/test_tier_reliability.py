"""Reliability of the cache tiers on live servers (issue 7): a damaged flash, a dead or
stalled Redis, a clean restart. Real Redis, real LMDB; each test's load is a handful of
requests. Waiting is polling with a bound, never a fixed sleep."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from server.config import Settings
from tests.server.live import LiveServer, run_server

PROMPT = "".join(f"Row {i}: reliability keeps the answer the same. " for i in range(10))
MAX_TOKENS = 8


def answer(server: LiveServer, prompt: str = PROMPT) -> tuple[str, int]:
    body = server.complete(prompt, MAX_TOKENS)
    return body["choices"][0]["text"], body["usage"]["prompt_tokens_details"]["cached_tokens"]


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `check` until true; return the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} not within {timeout_s} s")
        time.sleep(0.05)  # poll interval
    return time.monotonic() - start


def redis_pid(data_dir: Path) -> int:
    client = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"))
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def test_a_clean_restart_is_warm(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    with run_server(settings) as server:
        cold, cached = answer(server)
        assert cached == 0
        assert server.cache_stats()["tiers"]["flash"]["blocks"] == 0  # all still in HBM
    with run_server(settings) as server:  # graceful shutdown wrote HBM back to flash
        text, cached = answer(server)
        assert text == cold
        assert cached > 0
        assert server.metric("tierkv:prefix_cache_hits_total", tier="flash") == cached


def test_a_damaged_flash_header_is_quarantined_not_fatal(make_settings, data_dir) -> None:
    settings = make_settings()
    with run_server(settings) as server:
        cold, _ = answer(server)
    data = data_dir / "flash" / "data.mdb"
    with open(data, "r+b") as f:
        f.write(os.urandom(64))
    with run_server(settings) as server:
        assert server.metric("tierkv:tier_up", tier="flash") == 0
        assert server.metric("tierkv:tier_up", tier="ddr") == 1
        text, cached = answer(server)
        assert text == cold and cached == 0
    aside = [p for p in data_dir.iterdir() if p.name.startswith("flash.quarantined-")]
    assert len(aside) == 1 and (aside[0] / "data.mdb").exists()


def test_a_killed_embedded_redis_is_restarted_and_ddr_reused(make_settings, data_dir) -> None:
    prompts = [f"{n}: " + PROMPT for n in range(6)]
    with run_server(make_settings(flash_gb=0)) as server:
        cold = [answer(server, p)[0] for p in prompts]
        server.offload("hbm")
        pid = redis_pid(data_dir)
        with ThreadPoolExecutor(len(prompts)) as pool:  # reloads in flight during the kill
            futures = [pool.submit(answer, server, p) for p in prompts]
            os.kill(pid, signal.SIGKILL)
            texts = [f.result()[0] for f in futures]  # 0 failed requests
        assert texts == cold  # 0 wrong tokens
        text, _ = answer(server, prompts[0])
        assert text == cold[0]
        wait_for(
            lambda: (
                server.metric("tierkv:tier_up", tier="ddr") == 1
                and server.cache_stats()["tiers"]["ddr"]["blocks"] == 0
            ),
            10,
            "DDR restart",
        )
        written = server.metric("tierkv:tier_write_bytes_total", tier="ddr")
        server.offload("hbm")
        assert server.metric("tierkv:tier_write_bytes_total", tier="ddr") > written
        text, cached = answer(server, prompts[0])
        assert text == cold[0] and cached > 0
        assert server.metric("tierkv:prefix_cache_hits_total", tier="ddr") >= cached


def test_a_stalled_redis_does_not_stall_reloads(make_settings, data_dir) -> None:
    with run_server(make_settings(flash_gb=0, reload_timeout_ms=200)) as server:
        cold, _ = answer(server)
        server.offload("hbm")
        pid = redis_pid(data_dir)
        os.kill(pid, signal.SIGSTOP)
        try:
            text, cached = answer(server)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert text == cold and cached == 0  # abandoned at the deadline, recomputed
        assert server.metric("tierkv:tier_reload_timeouts_total", tier="ddr") == 1


def test_injected_tier_faults_are_counted_and_never_change_tokens(make_settings) -> None:
    prompts = [f"{n}: " + PROMPT for n in range(4)]
    settings = make_settings(tier_faults="ddr:drop=0.3;flash:corrupt=0.5", tier_faults_seed=3)
    with run_server(settings) as server:
        cold = [answer(server, p)[0] for p in prompts]
        for _ in range(2):
            server.offload("hbm")
            server.offload("ddr")
            assert [answer(server, p)[0] for p in prompts] == cold
        drops = server.metric("tierkv:tier_faults_injected_total", tier="ddr", kind="drop")
        corrupt = server.metric("tierkv:tier_faults_injected_total", tier="flash", kind="corrupt")
        assert drops > 0 and corrupt > 0
        assert server.metric("tierkv:tier_checksum_failures_total", tier="flash") > 0
        assert (
            sum(
                server.metric("tierkv:tier_io_errors_total", tier="ddr", op=op)
                for op in ("load", "store", "demote", "remove", "scan")
            )
            >= drops
        )
