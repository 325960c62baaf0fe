"""Reload throughput per tier next to the raw stores, in one run.

For the same blocks (tiny-llama's 16-token KV blocks, 16 KiB each plus a 52-byte
header) it times, in rounds of one request-sized batch (default 128 blocks = a 2k-token
prefix):

* ours DDR / ours flash: the cache manager's reload path (prefix match, HBM slot
  reservation, one job on the transfer thread: pipelined GETs or one LMDB read txn,
  header + checksum check, copy into the HBM pool), timed from submit to completion;
* raw redis-py: one pipelined GET of the same keys (hiredis, same unix socket);
* raw LMDB: one read txn getting the same keys into bytes;
* memcpy: numpy copy of the same number of bytes.

This one benchmark imports `cache` (it measures cache internals, not the HTTP server).
Run: ``tierkv-load bench tiers [--blocks 2048] [--batch 128] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from rich.table import Table

from cache.block_format import encoded_size
from cache.block_hash import BlockHash, hash_full_blocks, root_hash
from cache.embedded_redis import EmbeddedRedis
from cache.layout import KVLayout
from cache.manager import CacheConfig, CacheManager
from cache.stats import Tier
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.redis_tier import RedisTier, connect_redis
from load.argparser import OneLineErrorParser
from load.bench._common import write_json
from load.report import make_console


def tiny_llama_layout(block_size: int = 16) -> KVLayout:
    """tiny-llama's KV geometry (4 layers, 2 KV heads, head_dim 32, fp16): 1 KiB/token."""
    return KVLayout("tiny-llama", num_layers=4, num_kv_heads=2, head_dim=32, block_size=block_size)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="tierkv-load bench tiers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--blocks", type=int, default=2048, help="blocks stored (default 2048)")
    p.add_argument(
        "--batch",
        type=int,
        default=128,
        help="blocks per reload, one request's prefix (default 128)",
    )
    p.add_argument("--rounds", type=int, default=5, help="timed passes over all blocks")
    p.add_argument(
        "--block-size", type=int, default=16, help="tokens per block (default 16: 16 KiB blocks)"
    )
    p.add_argument("--out", type=Path, default=Path("results/bench_tiers.json"))
    return p


def _median_gbps(samples: list[tuple[int, float]]) -> float:
    return statistics.median(n / s for n, s in samples) / 1e9


def _chains(layout: KVLayout, num_chains: int, length: int) -> list[list[BlockHash]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(num_chains):
        tokens = rng.integers(0, 256, length * layout.block_size).tolist()
        out.append(hash_full_blocks(tokens, layout.block_size, root_hash("bench", 1, f"c{i}")))
    return out


def _reload_samples(
    m: CacheManager, chains: list[list[BlockHash]], tier: Tier, rounds: int
) -> list[tuple[int, float]]:
    samples = []
    for _ in range(rounds):
        for hashes in chains:
            m.offload(Tier.HBM)  # bytes already below: this only frees the HBM copies
            hit = m.match(hashes, len(hashes))
            if [t for _, t in hit.lower] != [tier] * len(hashes):
                raise RuntimeError(f"blocks are not all in {tier}: set-up error")
            start = time.perf_counter()
            admission = m.admit(hit, "bench", 0, len(hashes))
            if admission is None or not admission.is_loading:
                raise RuntimeError("HBM too small for one batch")
            m.wait_transfers()
            (done,) = m.poll()
            seconds = time.perf_counter() - start
            if done.num_loaded_blocks != len(hashes):
                raise RuntimeError("reload lost blocks")
            samples.append(
                (len(hashes) * encoded_size(m.layout.block_shape, m.layout.np_dtype), seconds)
            )
            m.free(admission.block_ids)
    return samples


def _timed(fn: Callable[[int], int], num_batches: int, rounds: int) -> list[tuple[int, float]]:
    """Time `fn(batch_index)` over all batches, round after round: the same access order
    as the reload path, so no path gets to re-read one batch while it is CPU-cache hot."""
    samples = []
    for _ in range(rounds):
        for i in range(num_batches):
            start = time.perf_counter()
            nbytes = fn(i)
            samples.append((nbytes, time.perf_counter() - start))
    return samples


def run(blocks: int, batch: int, rounds: int, work: Path, block_size: int = 16) -> dict[str, Any]:
    layout = tiny_llama_layout(block_size)
    chains = _chains(layout, max(1, blocks // batch), batch)
    block_bytes = layout.block_bytes
    redis_server = EmbeddedRedis(work / "redis", maxmemory_bytes=4 * blocks * block_bytes).start()
    try:
        manager = CacheManager(
            layout,
            CacheConfig(
                hbm_num_blocks=blocks + batch,
                ddr_capacity_bytes=2 * blocks * block_bytes + (1 << 20),
                flash_capacity_bytes=2 * blocks * block_bytes + (1 << 20),
            ),
            ddr=RedisTier(connect_redis(redis_server.url), layout.namespace),
            flash=LmdbTier(work / "flash", 4 * blocks * block_bytes, layout.namespace),
        )
        stored = encoded_size(layout.block_shape, layout.np_dtype)
        rng = np.random.default_rng(1)
        for hashes in chains:
            ids = manager.allocate(len(hashes))
            if ids is None:
                raise RuntimeError("HBM too small to stage the blocks")
            manager.kv[ids] = rng.standard_normal((len(ids), *layout.block_shape)).astype(
                layout.np_dtype
            )
            manager.commit(ids, hashes)
            manager.free(ids)
        manager.offload(Tier.HBM)

        results: dict[str, list[tuple[int, float]]] = {}
        results["ours_ddr"] = _reload_samples(manager, chains, Tier.DDR, rounds)

        raw_redis = connect_redis(redis_server.url)
        prefix = layout.namespace.encode() + b":"

        def redis_get(i: int) -> int:
            pipe = raw_redis.pipeline(transaction=False)
            for h in chains[i]:
                pipe.get(prefix + h)
            return sum(len(v) for v in pipe.execute())

        results["raw_redis_pipelined_get"] = _timed(redis_get, len(chains), rounds)

        manager.offload(Tier.HBM)
        manager.offload(Tier.DDR)
        results["ours_flash"] = _reload_samples(manager, chains, Tier.FLASH, rounds)
        manager.close()

        env = lmdb.open(str(work / "flash"), max_dbs=8, readonly=True, lock=False, readahead=False)
        db = env.open_db(layout.namespace.encode(), create=False)

        def lmdb_get(i: int) -> int:
            with env.begin(db=db) as txn:
                values = [txn.get(h) for h in chains[i]]
            if any(v is None for v in values):
                raise RuntimeError("raw LMDB read missed a block")
            return sum(len(v) for v in values if v is not None)

        results["raw_lmdb_get"] = _timed(lmdb_get, len(chains), rounds)
        env.close()

        # As many distinct bytes as the stored blocks, copied batch by batch in turn.
        src = np.random.default_rng(2).integers(
            0, 255, (len(chains), batch * stored), dtype=np.uint8
        )
        dst = np.empty_like(src)

        def memcpy(i: int) -> int:
            np.copyto(dst[i], src[i])
            return int(src[i].nbytes)

        results["memcpy"] = _timed(memcpy, len(chains), rounds)
    finally:
        redis_server.stop()

    gbps = {name: _median_gbps(samples) for name, samples in results.items()}
    return {
        "block_bytes_stored": stored,
        "batch_blocks": batch,
        "blocks": len(chains) * batch,
        "rounds": rounds,
        "gb_per_s": gbps,
        "ratios": {
            "ours_ddr / raw_redis": gbps["ours_ddr"] / gbps["raw_redis_pipelined_get"],
            "ours_flash / raw_lmdb": gbps["ours_flash"] / gbps["raw_lmdb_get"],
            "ours_ddr / memcpy": gbps["ours_ddr"] / gbps["memcpy"],
            "ours_flash / memcpy": gbps["ours_flash"] / gbps["memcpy"],
        },
        "median_batch_ms": {
            name: statistics.median(s for _, s in samples) * 1e3
            for name, samples in results.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = make_console()
    with tempfile.TemporaryDirectory(prefix="tkv-tiers-") as tmp:
        result = run(args.blocks, args.batch, args.rounds, Path(tmp), args.block_size)
    table = Table(
        title=f"reload of {result['batch_blocks']} x {result['block_bytes_stored']} B "
        f"blocks ({result['blocks']} blocks, median of {result['rounds']} rounds)"
    )
    for col in ("path", "GB/s", "ms per batch"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for name, gbps in result["gb_per_s"].items():
        table.add_row(name, f"{gbps:.2f}", f"{result['median_batch_ms'][name]:.2f}")
    console.print(table)
    for name, ratio in result["ratios"].items():
        console.print(f"{name}: {ratio:.2f}")
    write_json(args.out, result)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
