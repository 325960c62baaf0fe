"""TTFT by prompt length: cold prefill vs a prefix hit served from HBM, DDR or flash.

For each length and repeat, each condition gets its own fresh prompt P:

* cold: P is sent once (it fills HBM); that TTFT is the cold one.
* hbm: then P with its last characters changed is sent: a prefix hit in HBM.
* ddr: after the fill, ``POST /cache/offload {"tier": "hbm"}`` moves the cached HBM
  blocks to DDR before the second request.
* flash: offload HBM to DDR, then ``{"tier": "ddr"}`` DDR to flash, then the second
  request.

Run: ``tierkv-load bench ttft [--lengths 1k,2k,4k,8k] [--repeats 2]``. It starts its own
server (``--pace real`` by default) unless ``--base-url`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from load.argparser import PACE_HELP, OneLineErrorParser
from load.bench._common import add_common_args, fmt_ms, parse_sizes, server_flags, write_json
from load.bench._servers import tierkv_server
from load.client import ClientOptions, first_model_id, make_client, root_url, stream_request
from load.metrics_scrape import scrape, server_deltas
from load.report import make_console
from load.synth import synth_text
from load.workloads import Api

CONDITIONS = ("cold", "hbm", "ddr", "flash")
DEFAULT_MAX_MODEL_LEN = 8192


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="tierkv-load bench ttft",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--lengths",
        type=parse_sizes,
        default=parse_sizes("1k,2k,4k,8k"),
        help="prompt lengths in tokens, k = 1024 (default 1k,2k,4k,8k)",
    )
    p.add_argument("--repeats", type=int, default=2, help="measurements per cell (median)")
    p.add_argument("--pace", choices=("real", "none"), default="real", help=PACE_HELP)
    p.add_argument(
        "--base-url",
        help="use this running server instead of starting one "
        "(its whole cache is offloaded between measurements)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_common_args(p, "results/bench_ttft.json")
    return p


BLOCK_TOKENS = 16
"""Tokens per KV block of the server's default layout (tiny-llama)."""


def cached_before_tail(prompt: str) -> int:
    """Tokens of `prompt` (BOS first, one token per character: tiny-llama's byte
    tokenizer) before its last full block: what a hit of `fresh_tail(prompt, tag)` finds
    cached after any other tag."""
    full_blocks = (len(prompt) + 1) // BLOCK_TOKENS
    if full_blocks < 1:
        raise ValueError(f"a prompt of {len(prompt)} characters has no full block")
    return (full_blocks - 1) * BLOCK_TOKENS


def fresh_tail(prompt: str, tag: str) -> str:
    """`prompt` with everything from its last full block on replaced by `tag` repeated.

    Every full block before stays cached, and the last full block is new for every
    distinct `tag` of up to 16 characters, so a hit recomputes it over the cached rest
    (`cached_before_tail` tokens). Replacing a fixed number of trailing characters does
    not: where the last full block begins depends on the prompt's length and its BOS
    token, and tags that agree on the characters inside it leave it cached (a first
    version replaced the last 8, and its hits recomputed a single token).
    """
    if not 0 < len(tag) <= BLOCK_TOKENS:
        raise ValueError(f"need a tag of 1-{BLOCK_TOKENS} characters")
    start = cached_before_tail(prompt) - 1  # the block's first character (BOS is a token)
    return prompt[:start] + (tag * len(prompt))[: len(prompt) - start]


async def offload(client: httpx.AsyncClient, base_url: str, tier: str) -> int:
    resp = await client.post(
        f"{root_url(base_url)}/cache/offload", json={"tier": tier}, timeout=600.0
    )
    if resp.status_code != 200:
        raise RuntimeError(f"POST /cache/offload {tier}: HTTP {resp.status_code} {resp.text}")
    return int(resp.json().get("moved_blocks", 0))


async def one_ttft(
    client: httpx.AsyncClient, opts: ClientOptions, prompt: str
) -> tuple[float, int]:
    """TTFT (ms) and cached tokens of one single-token request."""
    record = await stream_request(client, opts, Api.COMPLETIONS, prompt, 1, 0, time.perf_counter())
    if not record.is_ok or record.ttft_s is None:
        raise RuntimeError(f"request failed: HTTP {record.status} {record.error}")
    return record.ttft_s * 1000.0, record.cached_tokens


async def measure(
    base_url: str, lengths: list[int], repeats: int, seed: int, console: Console
) -> dict[str, Any]:
    samples: dict[str, dict[int, list[float]]] = {c: {n: [] for n in lengths} for c in CONDITIONS}
    cached: dict[str, dict[int, list[int]]] = {c: {n: [] for n in lengths} for c in CONDITIONS}
    moved: dict[str, int] = {"hbm": 0, "ddr": 0}
    impure: list[dict[str, Any]] = []
    async with make_client() as client:
        opts = ClientOptions(base_url=base_url, model=await first_model_id(client, base_url))
        await one_ttft(client, opts, synth_text(f"ttft-warmup:{seed}", 64))
        for n in lengths:
            for r in range(repeats):
                for cond in CONDITIONS[1:]:
                    prompt = synth_text(f"ttft:{seed}:{n}:{r}:{cond}", n)
                    cold_ms, cold_cached = await one_ttft(client, opts, prompt)
                    samples["cold"][n].append(cold_ms)
                    cached["cold"][n].append(cold_cached)
                    if cond in ("ddr", "flash"):
                        moved["hbm"] += await offload(client, base_url, "hbm")
                    if cond == "flash":
                        moved["ddr"] += await offload(client, base_url, "ddr")
                    before = await scrape(client, base_url)
                    hit_ms, hit_cached = await one_ttft(client, opts, prompt[:-8] + "#" * 8)
                    served = server_deltas(before, await scrape(client, base_url))
                    by_tier = served["prefix_cache_hits"]
                    if by_tier and by_tier.get(cond, 0.0) < hit_cached:
                        # Some of the hit came from another tier: this is not a pure
                        # `cond` measurement (say, a small DDR already demoted to flash).
                        impure.append({"length": n, "condition": cond, "hits_by_tier": by_tier})
                    samples[cond][n].append(hit_ms)
                    cached[cond][n].append(hit_cached)
                console.print(
                    f"  {n} tokens, repeat {r + 1}/{repeats}: "
                    + ", ".join(f"{c} {samples[c][n][-1]:.0f} ms" for c in CONDITIONS)
                )
    return {
        "lengths": lengths,
        "repeats": repeats,
        "ttft_ms": {c: [statistics.median(samples[c][n]) for n in lengths] for c in CONDITIONS},
        "cached_tokens": {
            c: [statistics.median(cached[c][n]) for n in lengths] for c in CONDITIONS
        },
        "samples_ms": {c: [samples[c][n] for n in lengths] for c in CONDITIONS},
        "moved_blocks": moved,
        "impure_hits": impure,
    }


def print_table(result: dict[str, Any], console: Console) -> None:
    table = Table(title="TTFT (ms, median): cold prefill vs prefix hit by tier")
    table.add_column("prompt tokens", justify="right")
    for cond in CONDITIONS:
        table.add_column(cond, justify="right")
    for cond in CONDITIONS[1:]:
        table.add_column(f"{cond} cached", justify="right")
    for i, n in enumerate(result["lengths"]):
        ttft = result["ttft_ms"]
        table.add_row(
            f"{n:,}",
            *(fmt_ms(ttft[c][i]) for c in CONDITIONS),
            *(f"{result['cached_tokens'][c][i]:,.0f}" for c in CONDITIONS[1:]),
        )
    console.print(table)
    for bad in result.get("impure_hits", []):
        console.print(
            f"[yellow]warning:[/] the {bad['condition']} hit at {bad['length']} tokens "
            f"was served from several tiers: {bad['hits_by_tier']}"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = make_console()
    config = {
        "lengths": args.lengths,
        "repeats": args.repeats,
        "pace": args.pace,
        "server_args": args.server_args,
    }
    if args.base_url:
        result = asyncio.run(measure(args.base_url, args.lengths, args.repeats, args.seed, console))
    else:
        flags = ["--pace", args.pace, *server_flags(args)]
        if max(args.lengths) + 64 > DEFAULT_MAX_MODEL_LEN and "--max-model-len" not in flags:
            flags += ["--max-model-len", str(max(args.lengths) + 64)]
        with tempfile.TemporaryDirectory(prefix="tierkv-ttft-") as tmp:
            work = args.work_dir or Path(tmp)
            console.print(f"starting tierkv server: {' '.join(flags)}")
            with tierkv_server(
                work / "data",
                *flags,
                log_path=work / "server.log",
                startup_timeout_s=args.startup_timeout,
            ) as server:
                result = asyncio.run(
                    measure(server.base_url, args.lengths, args.repeats, args.seed, console)
                )
    result["config"] = config
    print_table(result, console)
    write_json(args.out, result)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
