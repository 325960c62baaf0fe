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

from cache.block_format import encoded_size
from cache.embedded_redis import EmbeddedRedis
from cache.pool_scripts import PoolKeys
from cache.tiers.redis_tier import RedisTier, connect_redis
from server.config import GB, Settings
from server.stack import kv_layout
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
        # Each replica its own flash; the DDR pool is shared. No reload deadline: on a
        # loaded machine a cluster read can pass 300 ms, and a hit must not depend on it.
        base: dict[str, Any] = dict(redis_url=pool_url, ddr_pool="shared", reload_timeout_ms=0)
        return make_settings(data_dir=data_dir / name, **(base | overrides))

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


def test_replicas_filling_the_pool_stay_within_one_capacity_and_keep_their_tokens(
    replica_settings, pool_url
):
    probe = replica_settings("probe")
    layout = kv_layout(probe)
    block = encoded_size(layout.block_shape, layout.np_dtype)
    capacity_blocks = 24
    ddr_gb = capacity_blocks * block / GB
    keys = PoolKeys.of(layout.namespace)
    client = connect_redis(pool_url)
    prompts = [f"Prompt {i} fills the pool. " * 9 for i in range(6)]
    cold: dict[str, str] = {}
    counted: list[int] = []
    with (
        run_server(replica_settings("a", ddr_gb=ddr_gb)) as a,
        run_server(replica_settings("b", ddr_gb=ddr_gb)) as b,
    ):
        for i, prompt in enumerate(prompts):  # 6 x ~14 blocks into a pool of 24
            server = (a, b)[i % 2]
            cold[prompt] = server.complete(prompt, MAX_TOKENS)["choices"][0]["text"]
            server.offload("hbm")
            counted.append(int(client.get(keys.used) or 0))

        def flash_blocks() -> int:
            return sum(s.cache_stats()["tiers"]["flash"]["blocks"] for s in (a, b))

        deadline = time.monotonic() + DEADLINE_S
        while flash_blocks() == 0:  # the demoter (one of them) moved blocks to its flash
            assert time.monotonic() < deadline, "nothing demoted"
            counted.append(int(client.get(keys.used) or 0))
            time.sleep(0.01)  # poll interval
        assert max(counted) <= capacity_blocks * block
        with RedisTier(connect_redis(pool_url), layout.namespace) as plain:
            assert sum(size for _, size in plain.scan()) <= capacity_blocks * block
        # Whatever was demoted, refused or kept, every answer keeps its cold tokens.
        for i, prompt in enumerate(prompts):
            server = (b, a)[i % 2]
            assert server.complete(prompt, MAX_TOKENS)["choices"][0]["text"] == cold[prompt]
    client.close()


def test_replicas_of_one_host_hit_blocks_the_demoter_moved_to_their_shared_flash(
    replica_settings,
):
    """`--flash-pool shared`: one --data-dir, one LMDB environment. The demoter writes the
    pool's blocks to it; the other replica, started first, hits them from flash."""
    shared = dict(flash_pool="shared")
    with (
        run_server(replica_settings("host", **shared)) as b,
        run_server(replica_settings("host", **shared)) as a,
    ):
        cold, cached = complete(a)
        assert cached == 0
        moved = a.offload("hbm")
        assert moved > 0
        wait_for_ddr_blocks(b, moved)
        # Only the flash's writer (the pool's demoter, once elected) may demote to it.
        writer, reader = _demote_on_the_writer(a, b)
        deadline = time.monotonic() + DEADLINE_S
        while reader.cache_stats()["tiers"]["flash"]["blocks"] < moved:
            assert time.monotonic() < deadline, reader.cache_stats()["tiers"]
            time.sleep(0.01)  # poll interval
        assert reader.cache_stats()["tiers"]["ddr"]["blocks"] == 0
        text, cached = complete(reader)
        assert cached > 0
        assert text == cold
        assert reader.metric("tierkv:prefix_cache_hits_total", tier="flash") == cached


def test_a_replica_on_another_flash_does_not_hit_what_the_demoter_moved_to_its_own(
    replica_settings,
):
    """Two hosts (two --data-dirs), one pool: the demoter's flash records name its
    environment; the other replica ignores them and recomputes, with the same tokens."""
    shared = dict(flash_pool="shared")
    with (
        run_server(replica_settings("host2", **shared)) as b,
        run_server(replica_settings("host1", **shared)) as a,
    ):
        cold, _ = complete(a)
        moved = a.offload("hbm")
        wait_for_ddr_blocks(b, moved)
        writer, reader = _demote_on_the_writer(a, b)
        assert writer.cache_stats()["tiers"]["flash"]["blocks"] >= moved
        # A later pool write the reader sees, so it has read the flash records before it.
        writer.complete("A later prompt, after the demotion. " * 8, MAX_TOKENS)
        writer.offload("hbm")
        wait_for_ddr_blocks(reader, writer.cache_stats()["tiers"]["ddr"]["blocks"])
        assert reader.cache_stats()["tiers"]["flash"]["blocks"] == 0
        text, cached = complete(reader)
        assert (text, cached) == (cold, 0)


def _demote_on_the_writer(a: LiveServer, b: LiveServer) -> tuple[LiveServer, LiveServer]:
    """Offload DDR on whichever replica writes the shared flash: (writer, the other)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        for writer, reader in ((a, b), (b, a)):
            if _offload_ddr(writer) == 200:
                return writer, reader
        assert time.monotonic() < deadline, "no replica became the flash's writer"
        time.sleep(0.01)  # poll interval


def _offload_ddr(server: LiveServer) -> int:
    """POST /cache/offload ddr; 400 from a replica that is not the shared flash's writer."""
    r = server.client.post("/cache/offload", json={"tier": "ddr"})
    assert r.status_code in (200, 400), r.text
    return r.status_code
