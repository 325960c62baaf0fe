"""Start-up time of the cache manager over a full flash tier (issue #11, item 3).

``python -m cache.bench_cold_start --dir D --blocks 1000000 [--drop-caches]``

Fills ``D`` (once; kept for later runs) with ``--blocks`` tiny-llama blocks (16 KiB plus
the 52-byte header, written through ``LmdbTier.put_many`` so each has its meta record),
then times ``CacheManager(...)`` with that flash tier: opening LMDB, the start-up scan
and the index rebuild. ``--drop-caches`` first writes ``3`` to
``/proc/sys/vm/drop_caches`` (root only) so the scan starts from a cold page cache.
``--values`` times the old scan instead (every value read to take its length), for a
side-by-side comparison on the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

from cache.block_format import encoded_size
from cache.block_hash import BlockHash
from cache.layout import KVLayout
from cache.manager import CacheConfig, CacheManager
from cache.stats import Tier
from cache.tiers.lmdb_tier import LmdbTier

LAYOUT = KVLayout("tiny-llama", num_layers=4, num_kv_heads=2, head_dim=32, block_size=16)
_WRITE_BATCH = 4096


def _map_size(num_blocks: int, block_bytes: int) -> int:
    return int(num_blocks * (block_bytes + 4096) * 1.25) + (64 << 20)


def _key(i: int) -> BlockHash:
    """A block-hash-like key: 16 random-looking bytes, so inserts land all over the tree."""
    return BlockHash(hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest())


def fill(path: Path, num_blocks: int) -> None:
    """Store ``num_blocks`` blocks under ``path`` unless a previous run did."""
    block_bytes = encoded_size(LAYOUT.block_shape, LAYOUT.np_dtype)
    value = os.urandom(block_bytes)
    with LmdbTier(path, _map_size(num_blocks, block_bytes), LAYOUT.namespace) as tier:
        present = sum(1 for _ in tier.scan())
        for start in range(present, num_blocks, _WRITE_BATCH):
            stop = min(start + _WRITE_BATCH, num_blocks)
            tier.put_many([(_key(i), value) for i in range(start, stop)])


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def time_start_up(path: Path, num_blocks: int) -> tuple[float, int]:
    """Seconds to build a manager over the flash tier at ``path``, and blocks it found."""
    block_bytes = encoded_size(LAYOUT.block_shape, LAYOUT.np_dtype)
    start, cpu_start = time.perf_counter(), time.process_time()
    flash = LmdbTier(path, _map_size(num_blocks, block_bytes), LAYOUT.namespace)
    config = CacheConfig(16, flash_capacity_bytes=num_blocks * block_bytes)
    manager = CacheManager(LAYOUT, config, flash=flash)
    seconds = time.perf_counter() - start
    print(f"(CPU time of this process: {time.process_time() - cpu_start:.2f} s)")
    found = manager.snapshot_stats().tiers[Tier.FLASH].num_blocks
    manager.close()
    return seconds, found


def time_value_scan(path: Path, num_blocks: int) -> tuple[float, int]:
    """Seconds of the old start-up scan (reading every value's length)."""
    block_bytes = encoded_size(LAYOUT.block_shape, LAYOUT.np_dtype)
    start = time.perf_counter()
    with LmdbTier(path, _map_size(num_blocks, block_bytes), LAYOUT.namespace) as tier:
        found = sum(1 for _ in tier._scan_values())
    return time.perf_counter() - start, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument("--values", action="store_true", help="time the old value scan")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    fill(args.dir, args.blocks)
    print(f"filled in {time.perf_counter() - t0:.1f} s")
    if args.drop_caches:
        drop_page_cache()
    if args.values:
        seconds, found = time_value_scan(args.dir, args.blocks)
        what = "old value scan"
    else:
        seconds, found = time_start_up(args.dir, args.blocks)
        what = "manager start-up (meta scan + index rebuild)"
    cold = "cold" if args.drop_caches else "warm"
    print(f"{what}: {found} blocks in {seconds:.2f} s, {cold} page cache")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
