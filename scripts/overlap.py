"""Share of KV reload time hidden behind compute, in a mixed decode + reload workload.

`python scripts/overlap.py [ROUNDS]`: for each workload and setting below (interleaved,
ROUNDS times, default 3) starts `tierkv serve --emulate llama-3-8b --device h100-sxm
--pace real` (the modelled clock: steps and transfers last their modelled time) with
flash on `nvme` and DDR off, warms 12 prompts of 2k tokens, offloads HBM to flash, then
sends at once the 12 flash-cached prompts (32 tokens each) with, in the `mixed` workload,
2 decodes of fresh prompts (96 tokens each), at most 4 requests in the batch. It prints,
per run, the hidden share `1 - tier_transfer_exposed_seconds / tier_load_inflight_seconds`
(deltas over the workload, from /metrics), the prefetched blocks and the TTFT median of
the reloads.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from load.bench._servers import EMULATED_MODEL, emulated_flash_server, warm_then_offload
from load.client import ClientOptions, make_client, stream_request
from load.workloads import Api

FLAGS = ("--flash-media", "nvme", "--max-num-seqs", "4")
SETTINGS = {
    "baseline": ("--prefetch-fraction", "0", "--load-policy", "always"),
    "prefetch": ("--prefetch-fraction", "0.25", "--load-policy", "always"),
    "prefetch+split": ("--prefetch-fraction", "0.25", "--load-policy", "cost"),
}
WORKLOADS = {"mixed": 2, "burst": 0}  # decodes sent with the reloads
NUM_RELOADS = 12


def reload_prompt(i: int) -> str:
    return f"{i:03d} " + "r" * 2044


def metrics(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
    return out


async def workload(base_url: str, round_no: int, num_decodes: int) -> list[float]:
    await warm_then_offload(base_url, [reload_prompt(i) for i in range(NUM_RELOADS)])
    opts = ClientOptions(base_url=base_url, model=EMULATED_MODEL)
    async with make_client() as client:
        t0 = time.perf_counter()
        decodes = [
            stream_request(client, opts, Api.COMPLETIONS, f"decode {round_no} {i} " * 8, 96, i, t0)
            for i in range(num_decodes)
        ]
        reloads = [
            stream_request(client, opts, Api.COMPLETIONS, reload_prompt(i), 32, i, t0)
            for i in range(NUM_RELOADS)
        ]
        records = await asyncio.gather(*decodes, *reloads)
    bad = [r for r in records if not r.is_ok]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed: {bad[0].error}")
    return [r.ttft_s for r in records[num_decodes:] if r.ttft_s is not None]


def run(work: str, name: str, round_no: int) -> str:
    data = Path(tempfile.mkdtemp(prefix="overlap-")) / "data"
    with emulated_flash_server(data, *FLAGS, *SETTINGS[name]) as server:
        before = metrics(server.base_url)
        ttfts = asyncio.run(workload(server.base_url, round_no, WORKLOADS[work]))
        after = metrics(server.base_url)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    inflight = delta("tierkv:tier_load_inflight_seconds_total")
    exposed = delta("tierkv:tier_transfer_exposed_seconds_total")
    hidden = 1 - exposed / inflight if inflight > 0 else float("nan")
    return (
        f"round {round_no} {work:5s} {name:14s}: hidden {hidden:6.1%} "
        f"(exposed {exposed * 1e3:.0f} of {inflight * 1e3:.0f} ms in flight), prefetched blocks "
        f"{delta('tierkv:prefetched_blocks_total'):.0f}, reload TTFT median "
        f"{statistics.median(ttfts) * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for round_no in range(1, rounds + 1):
        for work in WORKLOADS:
            for name in SETTINGS:
                print(run(work, name, round_no), flush=True)
