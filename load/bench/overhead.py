"""What our HTTP and engine layers cost: streamed tokens/s of tierkv with ``--pace none``
vs a bare FastAPI SSE endpoint (``load.bench.bare_sse``) streaming the same number of
chunks, at several concurrencies.

Run: ``tierkv-load bench overhead [--max-tokens 256] [--concurrency 1,4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from load.argparser import OneLineErrorParser
from load.bench._common import (
    add_common_args,
    fmt_ms,
    parse_sizes,
    server_flags,
    write_json,
)
from load.bench._servers import ManagedServer, bare_sse_server, tierkv_server
from load.report import make_console
from load.runner import Arrival, run_workload
from load.stats import Slo
from load.workloads import random_prompts


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="tierkv-load bench overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--max-tokens", type=int, default=256, help="chunks per request")
    p.add_argument("--input-len", type=int, default=16, help="prompt tokens")
    p.add_argument(
        "--requests-per-stream", type=int, default=4, help="requests per concurrent stream"
    )
    p.add_argument(
        "--concurrency", type=parse_sizes, default=[1, 4], help="comma-separated (default 1,4)"
    )
    add_common_args(p, "results/bench_overhead.json")
    return p


WARMUP_SEED = 987_654_321


async def _measure(
    server: ManagedServer, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    specs = random_prompts(
        concurrency * args.requests_per_stream, args.input_len, args.max_tokens, seed=concurrency
    )
    # Warm-up, not measured, with a prompt of its own: re-sending specs[0] would put
    # the first measured request's prefix in the cache.
    warmup = random_prompts(1, args.input_len, args.max_tokens, seed=WARMUP_SEED)
    # No /metrics sampling: its scrapes would be part of the overhead measured here.
    await run_workload(
        server.base_url, warmup, Arrival(concurrency=1), Slo(), sample_interval_s=None
    )
    out = await run_workload(
        server.base_url, specs, Arrival(concurrency=concurrency), Slo(), sample_interval_s=None
    )
    s = out.stats
    wall_busy = out.server.get("npu_wall_busy_s")
    return {
        "model_busy_fraction": wall_busy / s.duration_s if wall_busy and s.duration_s else None,
        "concurrency": concurrency,
        "num_errors": s.num_errors,
        "output_tokens_per_s": s.output_tokens_per_s,
        "ttft_ms_p50": s.ttft_ms.p50,
        "itl_ms_p50": s.itl_ms.p50,
        "itl_ms_p99": s.itl_ms.p99,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = make_console()
    rows: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="tierkv-overhead-") as tmp:
        work = args.work_dir or Path(tmp)
        servers: dict[str, Callable[[], ManagedServer]] = {
            "bare-sse": lambda: bare_sse_server(work / "bare.log"),
            "tierkv": lambda: tierkv_server(
                work / "data",
                "--pace",
                "none",
                *server_flags(args),
                log_path=work / "tierkv.log",
                startup_timeout_s=args.startup_timeout,
            ),
        }
        for name, make in servers.items():
            console.print(f"measuring {name} ...")
            with make() as server:
                rows[name] = [asyncio.run(_measure(server, c, args)) for c in args.concurrency]
    table = Table(
        title=f"streaming overhead: {args.max_tokens} tokens per request "
        "(model busy: the server's numpy model wall time / run time)"
    )
    for col in (
        "server",
        "conc.",
        "output tok/s",
        "vs bare",
        "TTFT p50 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "model busy",
        "errors",
    ):
        table.add_column(col, justify="left" if col == "server" else "right")
    for name, results in rows.items():
        for i, r in enumerate(results):
            bare = rows["bare-sse"][i]["output_tokens_per_s"]
            ratio = r["output_tokens_per_s"] / bare if bare else 0.0
            fraction = r["model_busy_fraction"]
            busy = "-" if fraction is None else f"{fraction:.0%}"
            table.add_row(
                name,
                str(r["concurrency"]),
                f"{r['output_tokens_per_s']:,.0f}",
                f"{ratio:.2f}x",
                fmt_ms(r["ttft_ms_p50"]),
                fmt_ms(r["itl_ms_p50"]),
                fmt_ms(r["itl_ms_p99"]),
                busy,
                str(r["num_errors"]),
            )
    console.print(table)
    write_json(
        args.out,
        {
            "config": {
                "max_tokens": args.max_tokens,
                "input_len": args.input_len,
                "requests_per_stream": args.requests_per_stream,
                "server_args": args.server_args,
            },
            "results": rows,
        },
    )
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
