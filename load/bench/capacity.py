"""Hit rate, TTFT and goodput of the multiturn and trace workloads as the tiers grow:
HBM only (``--ddr-gb 0 --flash-gb 0``) vs HBM+DDR (``--flash-gb 0``) vs HBM+DDR+flash,
at each given HBM and DDR size. Each (configuration, workload) gets a fresh server
with a fresh data dir, so nothing is carried over (flash persists across restarts).

The default sizes suit tiny-llama (about 1 KiB of KV per token, ~6 MB of weights in the
HBM budget): HBM ~12k tokens of KV, DDR ~4k tokens, and a multiturn working set of ~19k
tokens, so that each added tier can serve hits. Default run: a few minutes on a 2-core machine.

Run: ``tierkv-load bench capacity [--hbm-gb 0.0175] [--ddr-gb 0.006] [--results-dir D]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from load import report, workloads
from load.argparser import PACE_HELP, OneLineErrorParser
from load.bench._common import (
    add_common_args,
    fmt_ms,
    parse_floats,
    server_flags,
    write_json,
)
from load.bench._servers import tierkv_server
from load.html_report import write_html_report
from load.plots import write_plots
from load.report import make_console
from load.runner import Arrival, run_workload
from load.stats import Slo
from load.trace import TraceScale, default_trace_path, read_trace
from load.workloads import random_prompts

WARMUP = random_prompts(1, 64, 4, seed=987_654_321)

TIER_SETS = ("hbm", "hbm+ddr", "hbm+ddr+flash")


@dataclass(slots=True, frozen=True)
class TierConfig:
    tiers: str
    hbm_gb: float
    ddr_gb: float
    flash_gb: float

    @property
    def label(self) -> str:
        parts = [f"hbm={self.hbm_gb:g}"]
        if "ddr" in self.tiers:
            parts.append(f"ddr={self.ddr_gb:g}")
        if "flash" in self.tiers:
            parts.append(f"flash={self.flash_gb:g}")
        return " ".join(parts)

    def flags(self) -> list[str]:
        return [
            "--hbm-gb",
            str(self.hbm_gb),
            "--ddr-gb",
            str(self.ddr_gb if "ddr" in self.tiers else 0),
            "--flash-gb",
            str(self.flash_gb if "flash" in self.tiers else 0),
        ]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="tierkv-load bench capacity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--hbm-gb",
        type=parse_floats,
        default=[0.0175],
        help="comma-separated HBM sizes (GiB, weights included)",
    )
    p.add_argument("--ddr-gb", type=parse_floats, default=[0.004], help="comma-separated")
    p.add_argument("--flash-gb", type=float, default=1.0)
    p.add_argument(
        "--tiers",
        default=",".join(TIER_SETS),
        help=f"comma-separated subset of {', '.join(TIER_SETS)}",
    )
    p.add_argument("--workloads", default="multiturn,trace", help="multiturn and/or trace")
    p.add_argument("--pace", choices=("real", "none"), default="real", help=PACE_HELP)
    p.add_argument("--concurrency", type=int, default=4, help="closed loop, both workloads")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--slo-ttft", type=float, default=2000.0, help="ms")
    p.add_argument("--slo-tpot", type=float, default=200.0, help="ms")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("multiturn")
    g.add_argument("--num-users", type=int, default=16)
    g.add_argument("--num-turns", type=int, default=4)
    g.add_argument("--system-len", type=int, default=512)
    g.add_argument("--user-len", type=int, default=256)
    g = p.add_argument_group("trace")
    g.add_argument(
        "--trace",
        type=Path,
        default=default_trace_path(),
        help="default: the Mooncake conversation trace in shared/traces",
    )
    g.add_argument("--trace-requests", type=int, default=150)
    g.add_argument("--trace-offset", type=int, default=0)
    g.add_argument(
        "--length-scale",
        type=float,
        default=1 / 32,
        help="1/32 makes a 512-token trace block one 16-token KV block",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        help="also write each run's result.json and plots under this directory",
    )
    add_common_args(p, "results/bench_capacity.json")
    return p


def _specs(name: str, args: argparse.Namespace) -> list[workloads.RequestSpec]:
    if name == "multiturn":
        return workloads.multiturn(
            args.num_users,
            args.num_turns,
            args.system_len,
            args.user_len,
            args.max_tokens,
            args.seed,
        )
    if name == "trace":
        records = read_trace(args.trace, limit=args.trace_requests, offset=args.trace_offset)
        scale = TraceScale(length=args.length_scale, output=1.0)
        return workloads.trace_replay(records, scale, args.seed, args.max_tokens)
    raise ValueError(f"unknown workload {name!r} (multiturn, trace)")


def _row(config: TierConfig, name: str, result: dict[str, Any]) -> dict[str, Any]:
    server = result["server"]
    return {
        "workload": name,
        "tiers": config.tiers,
        "hbm_gb": config.hbm_gb,
        "ddr_gb": config.ddr_gb if "ddr" in config.tiers else 0.0,
        "flash_gb": config.flash_gb if "flash" in config.tiers else 0.0,
        "hit_rate": server.get("hit_rate"),
        "hits_by_tier": server.get("prefix_cache_hits"),
        "cached_fraction": result["cached_fraction"],
        "ttft_ms_p50": result["ttft_ms"]["p50"],
        "ttft_ms_p99": result["ttft_ms"]["p99"],
        "goodput_requests_per_s": result["goodput_requests_per_s"],
        "good_fraction": result["good_fraction"],
        "duration_s": result["duration_s"],
        "num_errors": result["num_errors"],
        "preemptions": server.get("preemptions"),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = make_console()
    tier_sets = [t.strip() for t in args.tiers.split(",") if t.strip()]
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [t for t in tier_sets if t not in TIER_SETS] + [
        w for w in names if w not in ("multiturn", "trace")
    ]
    if bad:
        console.print(f"[red]error:[/] unknown tier set or workload: {', '.join(bad)}")
        return 2
    try:
        specs = {name: _specs(name, args) for name in names}
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    # HBM-only runs once per HBM size: the DDR sizes do not apply to it
    configs = [
        TierConfig(t, h, d if "ddr" in t else 0.0, args.flash_gb)
        for h in args.hbm_gb
        for t in tier_sets
        for d in (args.ddr_gb if "ddr" in t else [0.0])
    ]
    slo = Slo(ttft_ms=args.slo_ttft, tpot_ms=args.slo_tpot)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tierkv-capacity-") as tmp:
        work = args.work_dir or Path(tmp)
        for i, config in enumerate(configs):
            for name in names:
                run_dir = work / f"{i}-{name}"
                console.print(f"{name} on {config.tiers} ({config.label}) ...")
                flags = [*config.flags(), "--pace", args.pace, *server_flags(args)]
                with tierkv_server(
                    run_dir / "data",
                    *flags,
                    log_path=run_dir / "server.log",
                    startup_timeout_s=args.startup_timeout,
                ) as server:
                    # One unmeasured request with a prompt shared by nothing, so the first
                    # measured request does not pay the fresh server's first-use costs.
                    asyncio.run(
                        run_workload(
                            server.base_url,
                            WARMUP,
                            Arrival(concurrency=1),
                            slo,
                            sample_interval_s=None,
                        )
                    )
                    outcome = asyncio.run(
                        run_workload(
                            server.base_url, specs[name], Arrival(concurrency=args.concurrency), slo
                        )
                    )
                result = report.build_result(
                    outcome,
                    {
                        "workload": name,
                        "base_url": server.base_url,
                        "seed": args.seed,
                        "tiers": config.tiers,
                        "server_flags": flags,
                    },
                )
                rows.append(_row(config, name, result))
                if args.results_dir:
                    out = args.results_dir / f"{name}-{config.tiers}-{config.label}".replace(
                        " ", "_"
                    )
                    report.write_result(result, out)
                    labelled = [(f"{name} {config.tiers}", result)]
                    write_html_report(labelled, out, write_plots(labelled, out))
    print_table(rows, slo, console)
    write_json(
        args.out,
        {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": rows,
        },
    )
    console.print(f"wrote {args.out}")
    return 0


def print_table(rows: list[dict[str, Any]], slo: Slo, console: Console) -> None:
    table = Table(
        title=f"capacity: hit rate, TTFT and goodput (SLO TTFT {slo.ttft_ms:g} ms, "
        f"TPOT {slo.tpot_ms:g} ms)"
    )
    for col in (
        "workload",
        "tiers",
        "GiB hbm/ddr/flash",
        "hit rate",
        "hbm/ddr/flash hits",
        "TTFT p50",
        "TTFT p99",
        "goodput/s",
        "good",
        "err",
    ):
        table.add_column(col, justify="left" if col in ("workload", "tiers") else "right")
    for r in rows:
        hits = r["hits_by_tier"] or {}
        hit_rate = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.1%}"
        table.add_row(
            r["workload"],
            r["tiers"],
            f"{r['hbm_gb']:g}/{r['ddr_gb']:g}/{r['flash_gb']:g}",
            hit_rate,
            "/".join(f"{hits.get(t, 0):,.0f}" for t in ("hbm", "ddr", "flash")),
            fmt_ms(r["ttft_ms_p50"]),
            fmt_ms(r["ttft_ms_p99"]),
            f"{r['goodput_requests_per_s']:.2f}",
            f"{r['good_fraction']:.0%}",
            str(r["num_errors"]),
        )
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
