"""Per-block vs per-job decode of reloaded blocks: ``python -m cache.bench_decode``.

Times, interleaved round by round on the same 128 encoded 16 KiB tiny-llama blocks,
today's reload work per block (``decode_block`` then ``np.copyto`` into an HBM slot)
against :func:`cache.block_format.decode_blocks` (one call per job), and a bare
``np.copyto`` of the payloads as the floor. Prints µs per block, median and spread
over rounds, and the ratio per round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from cache.bench_tiers import tiny_llama_layout
from cache.block_format import decode_block, decode_blocks, encode_block, header_size

_LAYOUT = tiny_llama_layout()
SHAPE = _LAYOUT.block_shape
DTYPE = _LAYOUT.np_dtype


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    keys = [rng.bytes(16) for _ in range(args.blocks)]
    bufs = [encode_block(rng.standard_normal(SHAPE).astype(DTYPE), key=k) for k in keys]
    hbm = np.zeros((args.blocks, *SHAPE), DTYPE)
    slots = list(range(args.blocks))
    hsize = header_size(len(SHAPE))
    flat = hbm.reshape(args.blocks, -1).view(np.uint8)

    def per_block() -> None:
        for buf, key, slot in zip(bufs, keys, slots, strict=True):
            np.copyto(hbm[slot], decode_block(buf, SHAPE, DTYPE, key=key))

    def per_job() -> None:
        if not all(decode_blocks(bufs, keys, hbm, slots)):
            raise RuntimeError("a valid block was rejected")

    def copy_only() -> None:
        for buf, slot in zip(bufs, slots, strict=True):
            flat[slot] = np.frombuffer(buf, np.uint8, offset=hsize)

    paths = {"per_block": per_block, "per_job": per_job, "copy_only": copy_only}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.rounds):
        order = list(paths)[r % 3 :] + list(paths)[: r % 3]
        for name in order:
            start = time.perf_counter()
            paths[name]()
            times[name].append((time.perf_counter() - start) / args.blocks * 1e6)
    for name, us in times.items():
        print(
            f"{name:10s} µs/block: median {statistics.median(us):.2f} "
            f"(min {min(us):.2f}, max {max(us):.2f})"
        )
    ratios = [a / b for a, b in zip(times["per_block"], times["per_job"], strict=True)]
    print(
        f"per_block / per_job: median {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
