"""How soon a replica hits blocks another replica of its host demoted to their shared flash.

`PYTHONPATH=. python scripts/shared_flash_visibility.py [--redis-url URL] [--prompts 5]`:
starts an embedded Redis (unless given one) and two `tierkv serve --ddr-pool shared
--flash-pool shared` processes on one `--data-dir` (one LMDB environment), B first. For
each fresh prompt: A answers it cold and offloads its HBM to the pool; once B's DDR
index holds those blocks, the flash's writer (the pool's demoter: whichever of the two
accepts `/cache/offload ddr`) demotes the pool to the shared flash. The script then polls
the other replica's `/cache/stats` (every 2 ms, HTTP round trips included) until its
flash index is as large as the writer's, reports that delay (offload returned -> the
other replica's flash index caught up), has that replica answer the prompt and checks
its flash hits and that its text is A's cold text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from cache.embedded_redis import given_or_embedded
from load.bench._servers import ManagedServer, complete, tierkv_server

FLAGS = ("--pace", "none", "--hbm-gb", "0.05", "--ddr-gb", "0.5", "--flash-gb", "0.5")
DEADLINE_S = 60.0


def blocks(client: httpx.Client, url: str, tier: str) -> int:
    return int(client.get(f"{url}/cache/stats").json()["tiers"][tier]["blocks"])


def flash_hits(client: httpx.Client, url: str) -> int:
    return int(client.get(f"{url}/cache/stats").json()["tiers"]["flash"]["hit_blocks"])


def wait_for_blocks(client: httpx.Client, url: str, tier: str, at_least: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while blocks(client, url, tier) < at_least:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {at_least} {tier} blocks at {url}")
        time.sleep(0.002)  # poll interval


def demote(client: httpx.Client, a: ManagedServer, b: ManagedServer) -> tuple[Any, Any]:
    """Offload DDR on whichever replica is the flash's writer: (writer, the other)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        for w, r in ((a, b), (b, a)):
            if client.post(f"{w.base_url}/cache/offload", json={"tier": "ddr"}).is_success:
                return w, r
        if time.monotonic() > deadline:
            raise SystemExit("no replica became the flash's writer")
        time.sleep(0.01)  # poll interval


def probe(client: httpx.Client, a: ManagedServer, b: ManagedServer, i: int) -> float | None:
    """One prompt: A cold, pooled, demoted; seconds until the other replica's flash index
    caught up (None if its answer was wrong)."""
    prompt = f"{i} {time.time()}: flash probe; " + "shared flash " * 20
    cold, _ = complete(client, a.base_url, prompt)
    client.post(f"{a.base_url}/cache/offload", json={"tier": "hbm"})
    wait_for_blocks(client, b.base_url, "ddr", blocks(client, a.base_url, "ddr"))
    writer, reader = demote(client, a, b)
    start = time.perf_counter()
    target = blocks(client, writer.base_url, "flash")
    wait_for_blocks(client, reader.base_url, "flash", target)
    delay = time.perf_counter() - start
    hits_before = flash_hits(client, reader.base_url)
    text, cached = complete(client, reader.base_url, prompt)
    hits = flash_hits(client, reader.base_url) - hits_before
    same = "same text" if text == cold else "DIFFERENT TEXT"
    who = "A" if reader is a else "B"
    print(
        f"prompt {i}: flash of {target} blocks visible on {who} after {delay * 1e3:.1f} ms; "
        f"{who} cached {cached} tokens ({hits} flash blocks), {same}"
    )
    return delay if text == cold and hits > 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--prompts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tkvsf-") as tmp:
        root = Path(tmp)
        host = root / "host"
        delays: list[float] = []
        with given_or_embedded(args.redis_url, root / "redis", 256 << 20) as url:
            flags = (*FLAGS, "--redis-url", url, "--ddr-pool", "shared", "--flash-pool", "shared")
            with (
                tierkv_server(host, *flags, log_path=root / "b.log") as b,
                tierkv_server(host, *flags, log_path=root / "a.log") as a,
                httpx.Client(timeout=120) as client,
            ):
                for i in range(args.prompts):
                    delay = probe(client, a, b, i)
                    if delay is None:
                        return 1
                    delays.append(delay)
        print(
            f"flash visibility over {len(delays)} prompts: median "
            f"{statistics.median(delays) * 1e3:.1f} ms, max {max(delays) * 1e3:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
