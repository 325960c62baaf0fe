"""``tierkv-load bench tiers``: the command-line entry of :mod:`cache.bench_tiers`.

The benchmark measures cache internals, so it lives in ``cache``; this module only
parses arguments, runs it in a temporary directory and prints the table.
Run: ``tierkv-load bench tiers [--blocks 2048] [--batch 128] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.table import Table

from cache import bench_tiers
from load.argparser import OneLineErrorParser
from load.bench._common import write_json
from load.report import make_console


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="tierkv-load bench tiers",
        description=bench_tiers.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--blocks", type=int, default=2048, help="blocks stored (default 2048)")
    p.add_argument("--batch", type=int, default=128, help="blocks per reload, one request's prefix")
    p.add_argument("--rounds", type=int, default=5, help="timed passes over all blocks")
    p.add_argument(
        "--block-size", type=int, default=16, help="tokens per block (default 16: 16 KiB blocks)"
    )
    p.add_argument("--out", type=Path, default=Path("results/bench_tiers.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = make_console()
    with tempfile.TemporaryDirectory(prefix="tkv-tiers-") as tmp:
        result = bench_tiers.run(args.blocks, args.batch, args.rounds, Path(tmp), args.block_size)
    table = Table(
        title=f"reload of {result['batch_blocks']} x {result['block_bytes_stored']} B "
        f"blocks ({result['blocks']} blocks, {result['rounds']} interleaved rounds)"
    )
    for col in ("path", "GB/s min", "median", "max", "ms per batch (median)"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for name, gbps in result["gb_per_s"].items():
        table.add_row(
            name,
            f"{gbps['min']:.2f}",
            f"{gbps['median']:.2f}",
            f"{gbps['max']:.2f}",
            f"{result['median_batch_ms'][name]:.2f}",
        )
    console.print(table)
    for name, spread in result["ratios"].items():
        console.print(
            f"{name}: {spread['median']:.2f} (min {spread['min']:.2f}, max {spread['max']:.2f})"
        )
    for name, spread in result["info_ratios"].items():
        console.print(
            f"{name} ({bench_tiers.INFO_RATIOS[name][2]}): {spread['median']:.2f} "
            f"(min {spread['min']:.2f}, max {spread['max']:.2f})"
        )
    for name, bad in result["measurement_errors"].items():
        console.print(
            f"[red]{name}: measurement error[/] (above 1.0 in {len(bad)} of "
            f"{result['rounds']} rounds: ours cannot beat raw; not reported)"
        )
    write_json(args.out, result)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
