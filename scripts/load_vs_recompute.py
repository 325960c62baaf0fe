"""TTFT of a flash hit vs its recompute, with --load-policy always and cost.

`python scripts/load_vs_recompute.py nfs,nvme`: for each flash media preset and each
policy, starts `tierkv serve --emulate llama-3-8b --device h100-sxm --pace real` (DDR
off, so an HBM offload lands in flash), and for 3 fresh 4k-token prompts times the cold
TTFT, offloads HBM, and times the same prompt again; prints the medians, then per media
the cost policy's hit TTFT against min(recompute, load): the cold TTFT (recompute, the
median of both policies' runs) and the `always` policy's hit TTFT (load).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from load.bench._servers import emulated_flash_server, warm_then_offload


async def ttft_and_cached(base_url: str, prompt: str) -> tuple[float, int]:
    """TTFT and cached tokens of `prompt` alone; its blocks are offloaded afterwards."""
    (record,) = await warm_then_offload(base_url, [prompt])
    assert record.ttft_s is not None  # warm_then_offload raised otherwise
    return record.ttft_s, record.cached_tokens


def measure(media: str, policy: str) -> tuple[str, float, float]:
    data = Path(tempfile.mkdtemp(prefix="xo-")) / "data"
    with emulated_flash_server(data, "--flash-media", media, "--load-policy", policy) as server:
        rows = []
        for i in range(3):
            prompt = f"{i} " + "y" * 4094
            cold, _ = asyncio.run(ttft_and_cached(server.base_url, prompt))  # then offloaded
            hit, cached = asyncio.run(ttft_and_cached(server.base_url, prompt))
            rows.append((cold, hit, cached))
    cold = statistics.median(r[0] for r in rows)
    hit = statistics.median(r[1] for r in rows)
    line = (
        f"flash media {media:5s} load-policy {policy:6s}: cold {cold * 1e3:.0f} ms, "
        f"after offload {hit * 1e3:.0f} ms ({hit / cold:.2f}x cold), cached_tokens {rows[0][2]}"
    )
    return line, cold, hit


if __name__ == "__main__":
    for media in sys.argv[1].split(","):
        figures = {}
        for policy in ("always", "cost"):
            line, cold, hit = measure(media, policy)
            figures[policy] = (cold, hit)
            print(line, flush=True)
        recompute = statistics.median([figures["always"][0], figures["cost"][0]])
        best = min(recompute, figures["always"][1])
        print(
            f"flash media {media:5s}: cost hit {figures['cost'][1] * 1e3:.0f} ms = "
            f"{figures['cost'][1] / best:.2f} x min(recompute {recompute * 1e3:.0f} ms, "
            f"load {figures['always'][1] * 1e3:.0f} ms)",
            flush=True,
        )
