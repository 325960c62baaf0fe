"""Start-up checks of the tiers in server.stack: external Redis eviction policy."""

from __future__ import annotations

import logging
import socket
import subprocess
import time

import pytest
import redis

from cache.embedded_redis import redis_server_executable
from server.stack import warn_unless_noeviction


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
        with caplog.at_level(logging.WARNING, logger="server.stack"):
            warn_unless_noeviction(f"redis://127.0.0.1:{port}")
        assert ("maxmemory-policy allkeys-lru" in caplog.text) is warns
    finally:
        process.kill()
        process.wait()
