"""Start-up checks of the tiers (server.lower_tiers, through server.stack): external Redis
eviction policy, the embedded Redis's maxmemory."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Callable

import pytest
import redis

from cache.embedded_redis import redis_server_executable
from cache.tiers.redis_tier import connect_redis
from server.config import Settings
from server.lower_tiers import REDIS_MEMORY_FLOOR, warn_unless_noeviction
from server.stack import build_stack, stored_fraction


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("policy", "warns"), [("allkeys-lru", True), ("noeviction", False)])
def test_an_evicting_external_redis_is_warned_about(tmp_path, caplog, policy, warns):
    port = free_port()
    process = subprocess.Popen(
        [
            redis_server_executable(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--maxmemory-policy",
            policy,
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.02)  # poll until redis answers
        client.close()
        with caplog.at_level(logging.WARNING, logger="server.lower_tiers"):
            warn_unless_noeviction(f"redis://127.0.0.1:{port}")
        assert ("maxmemory-policy allkeys-lru" in caplog.text) is warns
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("overrides", [{"hbm_gb": 0.05}, {"hbm_gb": None, "emulate": "llama-3-8b"}])
def test_the_embedded_redis_gets_one_headroom_over_the_stored_ddr_quota(
    make_settings: Callable[..., Settings], overrides: dict
) -> None:
    """maxmemory is the DDR quota in stored bytes plus 25% for Redis's own overhead (or the
    64 MiB floor). It was 1.56x: the stack added 25% and the embedded Redis 25% again."""
    settings = make_settings(ddr_gb=8.0, **overrides)
    stored = int(settings.ddr_bytes * stored_fraction(settings))
    stack = build_stack(settings, lambda: None)
    try:
        assert stack.embedded_redis is not None
        client = connect_redis(stack.embedded_redis.url)
        maxmemory = int(client.config_get("maxmemory")["maxmemory"])
        client.close()
        assert maxmemory == max(int(stored * 1.25), REDIS_MEMORY_FLOOR) > REDIS_MEMORY_FLOOR
    finally:
        stack.close()
