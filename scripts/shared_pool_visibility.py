"""How soon a replica hits blocks another replica of a shared DDR pool just wrote.

`python scripts/shared_pool_visibility.py [--redis-url URL] [--prompts 5]`: starts an
embedded Redis (unless given one) and two `tierkv serve --ddr-pool shared` replicas, B
first. For each fresh prompt: A answers it cold and offloads its HBM to the pool; the
script then polls B's `/cache/stats` until B's DDR index holds the blocks A moved, and
reports that delay (offload returned -> B's index is as large as A's; polled every
2 ms, so the figure includes HTTP round trips of polling); then B answers the same prompt and the
script checks its cached tokens and that its text is A's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cache.embedded_redis import given_or_embedded
from load.bench._servers import complete, tierkv_server

FLAGS = ("--pace", "none", "--hbm-gb", "0.05", "--ddr-gb", "0.5", "--flash-gb", "0.1")


def ddr_blocks(client: httpx.Client, url: str) -> int:
    return int(client.get(f"{url}/cache/stats").json()["tiers"]["ddr"]["blocks"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--prompts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tkvsp-") as tmp:
        root = Path(tmp)
        delays: list[float] = []
        with given_or_embedded(args.redis_url, root / "redis", 256 << 20) as url:
            flags = (*FLAGS, "--redis-url", url, "--ddr-pool", "shared")
            with (
                tierkv_server(root / "b", *flags) as b,
                tierkv_server(root / "a", *flags) as a,
                httpx.Client(timeout=120) as client,
            ):
                for i in range(args.prompts):
                    prompt = f"{i} {time.time()}: visibility probe; " + "shared pool " * 20
                    cold, _ = complete(client, a.base_url, prompt)
                    client.post(f"{a.base_url}/cache/offload", json={"tier": "hbm"})
                    start = time.perf_counter()
                    moved = ddr_blocks(client, a.base_url)  # A's mirror: the whole pool
                    while ddr_blocks(client, b.base_url) < moved:
                        time.sleep(0.002)
                    delays.append(time.perf_counter() - start)
                    text, cached = complete(client, b.base_url, prompt)
                    same = "same text" if text == cold else "DIFFERENT TEXT"
                    print(
                        f"prompt {i}: pool of {moved} blocks visible on B after "
                        f"{delays[-1] * 1e3:.1f} ms; B cached {cached} tokens, {same}"
                    )
                    if text != cold:
                        return 1
        print(
            f"visibility over {len(delays)} prompts: median "
            f"{statistics.median(delays) * 1e3:.1f} ms, max {max(delays) * 1e3:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
