"""The shared DDR pool's costs: ``python -m cache.bench_pool [--redis-url URL]``.

Two figures, on an embedded Redis unless ``--redis-url`` is given:

* **visibility**: how long after one replica's `put_many` returns another replica's
  follower has queued the blocks (what a hit elsewhere waits for, before the engine's
  next poll picks them up);
* **overhead**: spilling then reloading a batch of 16 KiB tiny-llama-sized blocks
  through a private `RedisTier` and through a `PooledRedisTier` (reserve + SET +
  commit, then lease + MGET), interleaved round by round; reports wall and CPU time
  (``time.process_time``, this process: the lane's Python work; Redis's own work is
  in wall) per block, medians and the spread of the per-round ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cache.embedded_redis import given_or_embedded
from cache.pool import PoolConfig, SharedPool
from cache.pool_changes import ChangeKind
from cache.tiers.pooled_redis_tier import PooledRedisTier
from cache.tiers.redis_tier import RedisTier, connect_redis

BLOCK_BYTES = 16 * 1024


def follow_delays(
    follower: SharedPool, kind: ChangeKind, write: Callable[[int], None], rounds: int
) -> list[float]:
    """For each round ``r``: ``write(r)``, then the seconds from its return until
    ``follower`` (started) has queued a change of ``kind`` (polled every 0.2 ms)."""
    delays = []
    for r in range(rounds):
        write(r)
        done = time.perf_counter()
        while not any(c.kind is kind for c in follower.drain()):
            time.sleep(0.0002)
        delays.append(time.perf_counter() - done)
    return delays


def _visibility(url: str, rounds: int) -> list[float]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    config = PoolConfig(capacity_bytes=1 << 30)
    writer = PooledRedisTier(
        connect_redis(url), namespace, SharedPool(connect_redis(url), namespace, config)
    )
    follower = SharedPool(connect_redis(url), namespace, config)
    follower.start()
    follower.drain()

    def write(r: int) -> None:
        key = r.to_bytes(16, "little")
        writer.put_many([(key, b"x" * BLOCK_BYTES)])  # type: ignore[list-item]

    try:
        return follow_delays(follower, ChangeKind.ADD, write, rounds)
    finally:
        follower.stop()
        writer.clear()
        writer.pool.stop()
        writer.close()


def _overhead(url: str, rounds: int, batch: int) -> dict[str, list[tuple[float, float]]]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    pool = SharedPool(connect_redis(url), namespace, PoolConfig(capacity_bytes=1 << 30))
    tiers = {
        "private": RedisTier(connect_redis(url), namespace + "-p"),
        "shared": PooledRedisTier(connect_redis(url), namespace, pool),
    }
    payload = b"x" * BLOCK_BYTES
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in tiers}
    try:
        for r in range(rounds):
            order = list(tiers) if r % 2 == 0 else list(reversed(tiers))
            for name in order:
                tier = tiers[name]
                keys = [(r * batch + i).to_bytes(16, "little") for i in range(batch)]
                wall, cpu = time.perf_counter(), time.process_time()
                tier.put_many([(k, payload) for k in keys])  # type: ignore[misc]
                tier.get_many(keys, lambda i, buf: None)  # type: ignore[arg-type]
                tier.remove_many(keys)  # type: ignore[arg-type]
                out[name].append(
                    ((time.perf_counter() - wall) / batch, (time.process_time() - cpu) / batch)
                )
    finally:
        for tier in tiers.values():
            tier.clear()
            tier.close()
        pool.stop()
    return out


def print_visibility(what: str, delays: list[float], noun: str) -> None:
    """One line: p50, p99 and max of ``delays`` (seconds) over the ``noun`` measured."""
    delays = sorted(delays)
    p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99)]
    print(
        f"{what}: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, "
        f"max {delays[-1] * 1e3:.2f} ms ({len(delays)} {noun})"
    )


def print_shared_vs_private(
    what: str, times: Mapping[str, Sequence[tuple[float, ...]]], i: int
) -> None:
    """One line for figure ``i`` of per-round, per-block ``times`` of the "private" and the
    "shared" tier: each one's median, and the spread of the shared/private ratio of a round
    (rounds where private measured 0 left out). ``what`` names the figure."""
    med = {n: statistics.median(t[i] for t in v) for n, v in times.items()}
    ratios = sorted(
        s[i] / p[i] for s, p in zip(times["shared"], times["private"], strict=True) if p[i] > 0
    )
    print(
        f"{what}: private {med['private'] * 1e6:.1f} us, shared {med['shared'] * 1e6:.1f} us; "
        f"shared/private per round: median {statistics.median(ratios):.2f}, "
        f"p10 {ratios[len(ratios) // 10]:.2f}, p90 {ratios[len(ratios) * 9 // 10]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="tkvbp-") as root,
        given_or_embedded(args.redis_url, Path(root), 512 << 20) as url,
    ):
        print_visibility("visibility", _visibility(url, args.rounds), "writes")
        times = _overhead(url, args.rounds, args.batch)
        for i, what in enumerate(("wall", "cpu")):
            print_shared_vs_private(
                f"{what} per block (put + get + remove, batch {args.batch})", times, i
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
