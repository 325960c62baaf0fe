"""Engine-thread CPU per spilled block: ``python -m cache.bench_spill``.

A real `CacheManager` over an embedded Redis (DDR) and a temp LMDB (flash), with the KV
geometry of tiny-llama (16 KiB blocks) and of `--emulate llama-3-8b` at the default
`--kv-bytes-fraction` (32 KiB blocks). Each round fills HBM with cached blocks of fresh
hashes, then allocates the whole pool again in batches of `--batch` blocks, which
evicts every cached block and spills it to DDR. It times, with `time.thread_time()`
(CPU of the calling thread only, so the transfer lanes' work is not counted), the
`allocate` calls that evict and spill (the engine thread's share of a spill), and the
`poll` that applies the finished stores. Between rounds it waits for the lanes.

It uses only the manager's public API, so the same file measures another checkout:
``cp cache/bench_spill.py /tmp/b.py && PYTHONPATH=/path/to/other python /tmp/b.py``.
Prints one JSON line per layout: µs per spilled block, median and spread over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cache.block_hash import BlockHash
from cache.embedded_redis import EmbeddedRedis
from cache.layout import KVLayout
from cache.manager import CacheConfig, CacheManager
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.redis_tier import RedisTier, connect_redis

LAYOUTS = {
    "tiny-llama": KVLayout("tiny-llama", num_layers=4, num_kv_heads=2, head_dim=32, block_size=16),
    # --emulate llama-3-8b, default --kv-bytes-fraction: head_dim 128 stored as 2
    "llama-3-8b-emulated": KVLayout(
        "llama-3-8b", num_layers=32, num_kv_heads=8, head_dim=2, block_size=16
    ),
}


def _round(manager: CacheManager, batch: int, rng: np.random.Generator) -> tuple[float, float]:
    """Fill HBM with cached blocks, evict them all; engine CPU (allocate, poll) in s."""
    num = manager.pool.num_blocks
    ids = manager.allocate(num)
    if ids is None:
        raise RuntimeError("HBM pool is not free at the start of a round")
    noise = rng.integers(0, 1 << 15, manager.kv[ids].shape, dtype=np.uint16)
    manager.pool.write_blocks(ids, noise.view(manager.kv.dtype))
    manager.commit(ids, [BlockHash(rng.bytes(16)) for _ in ids])
    manager.free(ids)
    spill = 0.0
    taken: list[int] = []
    for _ in range(0, num, batch):
        start = time.thread_time()
        got = manager.allocate(min(batch, num - len(taken)))
        spill += time.thread_time() - start
        if got is None:
            raise RuntimeError("allocation failed")
        taken += got
    manager.wait_transfers()
    start = time.thread_time()
    manager.poll()
    polled = time.thread_time() - start
    manager.free(taken)
    manager.pool.evict_all_cached()  # computed blocks nobody registered: nothing to spill
    return spill, polled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=512, help="HBM pool blocks")
    parser.add_argument("--batch", type=int, default=32, help="blocks per allocate call")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="tierkv-bench-spill-") as tmp:
        root = Path(tmp)
        with EmbeddedRedis(root / "redis", maxmemory_bytes=2 << 30) as redis_server:
            for name in args.layouts.split(","):
                layout = LAYOUTS[name]
                ddr = RedisTier(connect_redis(redis_server.url), f"bench-{name}")
                flash = LmdbTier(root / f"flash-{name}", 1 << 30, layout.namespace)
                config = CacheConfig(
                    args.blocks, ddr_capacity_bytes=1 << 40, flash_capacity_bytes=1 << 29
                )
                manager = CacheManager(layout, config, ddr=ddr, flash=flash)
                try:
                    per_block = [_round(manager, args.batch, rng) for _ in range(args.rounds)]
                finally:
                    manager.close()
                spill_us = sorted(s / args.blocks * 1e6 for s, _ in per_block)
                poll_us = sorted(p / args.blocks * 1e6 for _, p in per_block)
                print(
                    json.dumps(
                        {
                            "layout": name,
                            "block_bytes": layout.block_bytes,
                            "blocks_per_round": args.blocks,
                            "batch": args.batch,
                            "engine_spill_us_per_block": {
                                "median": round(statistics.median(spill_us), 2),
                                "min": round(spill_us[0], 2),
                                "max": round(spill_us[-1], 2),
                            },
                            "engine_poll_us_per_block": round(statistics.median(poll_us), 2),
                        }
                    ),
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
