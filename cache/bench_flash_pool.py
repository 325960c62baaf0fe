"""The shared flash tier's costs: ``python -m cache.bench_flash_pool [--redis-url URL]``.

Two figures, on an embedded Redis unless ``--redis-url`` is given, and an LMDB in a temp
dir:

* **visibility**: how long after the writer's (the demoter's) flash `put_many` returns
  another replica's follower has queued the block as a flash add (what a flash hit
  elsewhere waits for, before that engine's next poll applies it);
* **overhead**: a demoted block's life as the demoter's lanes pay for it: read from the
  shared DDR pool (`PooledRedisTier.get_all`), stored in flash (`put_many`), deleted
  from the pool (`remove_many`), later evicted from flash (`remove_many`), in batches
  of 16 KiB tiny-llama-sized blocks, into a private `LmdbTier` and into a
  `SharedFlashTier` (the same plus one logged Redis call per batch each way),
  interleaved round by round. Wall and CPU time (``time.process_time``, this process)
  per block of the whole demotion, and CPU time of the flash part alone; medians and
  the spread of the per-round ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from cache.bench_pool import follow_delays, print_shared_vs_private, print_visibility
from cache.block_hash import BlockHash
from cache.embedded_redis import given_or_embedded
from cache.pool import PoolConfig, SharedPool
from cache.pool_changes import ChangeKind
from cache.tiers.base import Buffer
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.pooled_redis_tier import PooledRedisTier
from cache.tiers.redis_tier import connect_redis
from cache.tiers.shared_flash import SharedFlashTier

BLOCK_BYTES = 16 * 1024
MAP_SIZE = 1 << 30


def _key(n: int) -> BlockHash:
    return BlockHash(n.to_bytes(16, "little"))


def _visibility(url: str, root: Path, rounds: int) -> list[float]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    config = PoolConfig(capacity_bytes=1 << 30)
    writer_pool = SharedPool(connect_redis(url), namespace, config)
    inner = LmdbTier(root / "vis", MAP_SIZE, namespace)
    writer = SharedFlashTier.share(inner, writer_pool, connect_redis(url), MAP_SIZE, BLOCK_BYTES)
    follower = SharedPool(connect_redis(url), namespace, PoolConfig(capacity_bytes=1 << 30))
    reader = LmdbTier(root / "vis", MAP_SIZE, namespace)
    follower_tier = SharedFlashTier.share(
        reader, follower, connect_redis(url), MAP_SIZE, BLOCK_BYTES
    )
    follower.start()
    follower.drain()

    def write(r: int) -> None:
        writer.put_many([(_key(r), b"x" * BLOCK_BYTES)])

    try:
        return follow_delays(follower, ChangeKind.FLASH_ADD, write, rounds)
    finally:
        follower.stop()
        follower_tier.close()
        writer_pool.clear()
        writer_pool.stop()
        writer.close()


def _read(ddr: PooledRedisTier, keys: list[BlockHash]) -> list[tuple[BlockHash, bytes]]:
    """The demotion's DDR read: one lease + MGET, values copied out."""
    values: list[tuple[BlockHash, bytes]] = []

    def keep(bufs: list[Buffer | None]) -> None:
        values.extend((k, bytes(b)) for k, b in zip(keys, bufs, strict=True) if b is not None)

    ddr.get_all(keys, keep)
    return values


def _overhead(url: str, root: Path, rounds: int, batch: int) -> dict[str, list[tuple[float, ...]]]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    pool = SharedPool(connect_redis(url), namespace, PoolConfig(capacity_bytes=1 << 30))
    ddr = PooledRedisTier(connect_redis(url), namespace, pool)
    shared_inner = LmdbTier(root / "shared", MAP_SIZE, namespace)
    shared = SharedFlashTier.share(shared_inner, pool, connect_redis(url), MAP_SIZE, BLOCK_BYTES)
    tiers = {"private": LmdbTier(root / "private", MAP_SIZE, namespace), "shared": shared}
    payload = b"x" * BLOCK_BYTES
    out: dict[str, list[tuple[float, ...]]] = {name: [] for name in tiers}
    try:
        for r in range(rounds):
            order = list(tiers) if r % 2 == 0 else list(reversed(tiers))
            for j, name in enumerate(order):
                tier = tiers[name]
                keys = [_key((2 * r + j) * batch + i) for i in range(batch)]
                ddr.put_many([(k, payload) for k in keys])  # in the pool, untimed
                wall, cpu = time.perf_counter(), time.process_time()
                values = _read(ddr, keys)
                flash_cpu = time.process_time()
                tier.put_many(values)
                flash_cpu = time.process_time() - flash_cpu
                ddr.remove_many(keys)
                evict_cpu = time.process_time()
                tier.remove_many(keys)
                flash_cpu += time.process_time() - evict_cpu
                out[name].append(
                    (
                        (time.perf_counter() - wall) / batch,
                        (time.process_time() - cpu) / batch,
                        flash_cpu / batch,
                    )
                )
    finally:
        for tier in tiers.values():
            tier.close()
        ddr.clear()
        ddr.close()
        pool.clear()
        pool.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tkvbf-") as tmp:
        root = Path(tmp)
        with given_or_embedded(args.redis_url, root / "redis", 512 << 20) as url:
            print_visibility("flash visibility", _visibility(url, root, args.rounds), "stores")
            times = _overhead(url, root, args.rounds, args.batch)
            whats = ("wall, demotion", "cpu, demotion", "cpu, flash part")
            for i, what in enumerate(whats):
                print_shared_vs_private(f"{what} per block (batch {args.batch})", times, i)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
