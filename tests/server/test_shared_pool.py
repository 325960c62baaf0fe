"""Whole servers sharing one live DDR pool (`--ddr-pool shared`), on one Redis and on a
local three-master Redis Cluster: a replica hits blocks another wrote after it started,
with the tokens of a cold run."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cache.embedded_redis import EmbeddedRedis
from server.config import Settings
from tests.cache.conftest import start_local_cluster
from tests.server.live import LiveServer, run_server

PROMPT = "The shared pool holds every replica's blocks. " * 6
MAX_TOKENS = 8
DEADLINE_S = 30.0  # generous (a shared machine); polled, never slept for


@pytest.fixture(params=["redis", "redis-cluster"])
def pool_url(request: pytest.FixtureRequest) -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="tkvp-"))
    try:
        if request.param == "redis":
            with EmbeddedRedis(root, maxmemory_bytes=256 << 20) as server:
                yield server.url
        else:
            try:
                nodes = start_local_cluster(root, num_nodes=3)
            except (OSError, RuntimeError) as exc:
                pytest.skip(f"cannot start a local Redis Cluster: {exc}")
            try:
                yield f"redis+cluster://127.0.0.1:{nodes[0][1]}"
            finally:
                for process, _ in nodes:
                    process.terminate()
                for process, _ in nodes:
                    process.wait(timeout=10)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def replica_settings(pool_url: str, make_settings: Callable[..., Settings], data_dir: Path):
    def make(name: str, **overrides: Any) -> Settings:
        # Each replica its own flash; the DDR pool is shared.
        return make_settings(
            data_dir=data_dir / name, redis_url=pool_url, ddr_pool="shared", **overrides
        )

    return make


def complete(server: LiveServer) -> tuple[str, int]:
    body = server.complete(PROMPT, MAX_TOKENS)
    return body["choices"][0]["text"], body["usage"]["prompt_tokens_details"]["cached_tokens"]


def wait_for_ddr_blocks(server: LiveServer, at_least: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while server.cache_stats()["tiers"]["ddr"]["blocks"] < at_least:
        assert time.monotonic() < deadline, server.cache_stats()["tiers"]["ddr"]
        time.sleep(0.01)  # poll interval


def test_a_replica_hits_blocks_another_wrote_after_it_started(replica_settings):
    with run_server(replica_settings("b")) as b, run_server(replica_settings("a")) as a:
        cold, cached = complete(a)
        assert cached == 0
        moved = a.offload("hbm")  # A's blocks go to the shared pool
        assert moved > 0
        wait_for_ddr_blocks(b, moved)  # B learns of them live, no restart, no scan
        text, cached = complete(b)
        assert cached > 0
        assert text == cold  # the tokens of A's cold run
        assert b.metric("tierkv:prefix_cache_hits_total", tier="ddr") == cached
        assert b.metric("tierkv:tier_read_bytes_total", tier="ddr") > 0
