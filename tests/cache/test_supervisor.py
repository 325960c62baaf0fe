"""The Redis supervisor against a real embedded redis-server: death, stall, recovery."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from cache.embedded_redis import EmbeddedRedis
from cache.health import TierHealth
from cache.supervisor import RedisSupervisor


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)  # poll interval


def test_a_killed_embedded_redis_is_restarted_empty(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    health = TierHealth()
    supervisor = RedisSupervisor(server.url, [health], server, interval_s=0.05).start()
    try:
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: supervisor.num_restarts == 1 and server.is_running)
        assert server.pid != first
        assert health.state()[0] == "ok"
        assert health.take_restarts() == 1  # the manager clears its DDR index once
        assert health.take_restarts() == 0
    finally:
        supervisor.stop()
        server.stop()


def test_a_stalled_redis_is_marked_down_then_up_without_a_restart(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    health = TierHealth()
    supervisor = RedisSupervisor(
        server.url, [health], server, interval_s=0.05, probe_timeout_s=0.2
    ).start()
    pid = server.pid
    assert pid is not None
    try:
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: health.state()[0] == "down")
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: health.state()[0] == "ok")
        assert supervisor.num_restarts == 0 and health.take_restarts() == 0
    finally:
        os.kill(pid, signal.SIGCONT)
        supervisor.stop()
        server.stop()


def test_an_external_redis_that_restarted_empty_is_reported_restarted(tmp_path):
    """An external Redis (not ours to restart) that came back from a restart has lost its
    data: the supervisor sees its run_id change and reports a restart, so the manager
    drops its DDR index (it kept stale entries, and a write-back skipped the blocks it
    believed were there)."""
    server = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    health = TierHealth()
    supervisor = RedisSupervisor(server.url, [health], None, interval_s=0.05).start()
    try:
        wait_for(lambda: supervisor.run_id is not None)
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not server.is_running)  # the kill lands asynchronously
        server.restart()
        wait_for(lambda: health.take_restarts() == 1)
        assert health.state()[0] == "ok"
    finally:
        supervisor.stop()
        server.stop()
