"""``tierkv-load``: run workloads, simulate cache policies, compare results, benchmark.

Subcommands: ``run``, ``simulate``, ``policy``, ``compare``,
``bench {tiers,ttft,capacity,overhead}``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from load import policy_sim, report, simulate_cli, workloads
from load.argparser import OneLineErrorParser, positive_int
from load.client import ServerUnreachableError
from load.html_report import write_html_report
from load.plots import write_plots
from load.report import make_console
from load.runner import run_workload
from load.stats import RequestRecord, Slo
from load.trace import TRACE_SOURCE, read_trace, resolve_trace_path
from load.workload_args import (
    WORKLOAD_HELP,
    add_workload_options,
    arrival_of,
    build_specs,
    other_workloads_options,
)

BENCHES = ("tiers", "ttft", "capacity", "overhead")

TOKEN_NOTE = (
    "Lengths are in tokens of tierkv's byte tokenizer (1 token = 1 ASCII character, "
    "exact for tierkv); for other servers (vLLM, ...) they are approximate: a real "
    "tokenizer packs these synthetic texts into fewer tokens."
)

EXAMPLES = f"""examples:
  tierkv-load run --base-url http://127.0.0.1:8000 --workload multiturn --out runs/mt
  tierkv-load run --base-url http://127.0.0.1:8000 --workload trace \\
      --num-requests 200 --length-scale 0.05 --time-scale 0.1 --out runs/trace
  tierkv-load policy --capacity-blocks 1000 10000 100000
  tierkv-load compare runs/a/result.json runs/b/result.json --out runs/cmp
  tierkv-load bench ttft --lengths 1k,2k,4k

traces: --trace takes an absolute path, a path relative to the current directory or
the name of a shipped trace; without --trace the shipped Mooncake conversation trace
is used. Where they come from: {TRACE_SOURCE}.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="tierkv-load",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(
        sub.add_parser(
            "run",
            help="send a workload to a server and measure it",
            description=f"Send a workload and measure it. {TOKEN_NOTE}",
        )
    )
    simulate_cli.add_parser(sub)
    _add_policy(
        sub.add_parser(
            "policy",
            help="offline cache-policy simulator (no server)",
            description=policy_sim.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    cmp = sub.add_parser("compare", help="lay several result files side by side")
    cmp.add_argument("results", nargs="+", type=Path, help="result.json files or run dirs")
    cmp.add_argument("--labels", help="comma-separated labels (default: run dir names)")
    cmp.add_argument("--out", type=Path, help="directory for comparison plots and report.html")
    bench = sub.add_parser(
        "bench",
        help="benchmarks that start their own servers",
        description="Run one benchmark; arguments after the name go to "
        "it (try `tierkv-load bench ttft --help`).",
    )
    bench.add_argument("name", choices=BENCHES, help="one of: " + ", ".join(BENCHES))
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    return parser


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--workload",
        required=True,
        choices=workloads.WORKLOADS,
        help="; ".join(f"{k}: {v}" for k, v in WORKLOAD_HELP.items()),
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="directory for result.json, the plots and report.html",
    )
    p.add_argument("--model", help="model id (default: first id of GET /v1/models)")
    add_workload_options(p, client=True)


def _add_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace",
        help="Mooncake-format JSONL trace: a path (absolute or "
        "relative to the current directory) or a shipped trace's file name "
        "(default: the shipped conversation trace)",
    )
    p.add_argument(
        "--capacity-blocks",
        required=True,
        nargs="+",
        type=positive_int,
        metavar="N",
        help="cache sizes in trace blocks",
    )
    p.add_argument(
        "--policies",
        help="comma-separated, from: "
        + _policy_choices()
        + " (default: all; lru and belady are always included)",
    )
    p.add_argument("--num-requests", type=positive_int, help="use only the first N records")
    p.add_argument("--trace-offset", type=int, default=0)
    p.add_argument(
        "--hbm-fraction",
        type=float,
        default=0.0,
        help="share of each capacity that is HBM (always holds what requests use) over a "
        "lower tier whose admission policy filters HBM's evictions; 0 (default): one cache",
    )
    p.add_argument("--out", type=Path, help="JSON file for the table")


def _policy_choices() -> str:
    return ", ".join(policy_sim.registered_policy_names())


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    try:
        specs = build_specs(args)
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    arrival = arrival_of(args)
    slo = Slo(ttft_ms=args.slo_ttft, tpot_ms=args.slo_tpot)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("errors: {task.fields[errors]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(args.workload, total=len(specs), errors=0)
        num_errors = 0

        def on_done(record: RequestRecord) -> None:
            nonlocal num_errors
            num_errors += not record.is_ok
            progress.update(task, advance=1, errors=num_errors)

        try:
            outcome = asyncio.run(
                run_workload(
                    args.base_url,
                    specs,
                    arrival,
                    slo,
                    model=args.model,
                    ignore_eos=args.ignore_eos,
                    timeout_s=args.timeout,
                    api_key=args.api_key,
                    on_done=on_done,
                    sample_interval_s=args.metrics_interval or None,
                )
            )
        except ServerUnreachableError as exc:
            progress.stop()
            console.print(f"[red]error:[/] server unreachable: {exc}")
            return 2
    meta = {
        "workload": args.workload,
        "base_url": args.base_url,
        "seed": args.seed,
        "arrival": arrival.describe(),
        "slo": {"ttft_ms": args.slo_ttft, "tpot_ms": args.slo_tpot},
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("command", "api_key") and k not in other_workloads_options(args.workload)
        },
    }
    result = report.build_result(outcome, meta)
    path = report.write_result(result, args.out)
    report.print_summary(result, console)
    if result["error_examples"]:
        console.print("[yellow]errors, e.g.:[/] " + "; ".join(result["error_examples"][:3]))
    if not args.no_plots:
        labelled = [(args.workload, result)]
        html = write_html_report(labelled, args.out, write_plots(labelled, args.out))
        console.print(f"wrote {path}, plots and {html}")
    else:
        console.print(f"wrote {path}")
    return 1 if result["num_errors"] == result["num_requests"] else 0


def cmd_policy(args: argparse.Namespace, console: Console) -> int:
    try:
        if args.policies:
            names = [n.strip() for n in args.policies.split(",") if n.strip()]
        else:
            names = policy_sim.registered_policy_names()
        names = [*(n for n in policy_sim.REQUIRED_POLICIES if n not in names), *names]
        records = read_trace(
            resolve_trace_path(args.trace), limit=args.num_requests, offset=args.trace_offset
        )
        table = policy_sim.simulate(
            [r.hash_ids for r in records],
            args.capacity_blocks,
            names,
            hbm_fraction=args.hbm_fraction,
        )
    except (ValueError, OSError, policy_sim.PolicyUnavailableError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    out = Table(
        title=f"prefix hit rate, {len(records)} requests, {table.num_accesses} block "
        f"accesses, {table.num_distinct} distinct"
    )
    out.add_column("capacity (blocks)", justify="right")
    for name in table.hit_rate:
        out.add_column(name, justify="right")
    for i, capacity in enumerate(table.capacities):
        out.add_row(f"{capacity:,}", *(f"{rates[i]:.2%}" for rates in table.hit_rate.values()))
    console.print(out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table.to_json(), indent=1) + "\n")
        console.print(f"wrote {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    try:
        results = [report.read_result(p) for p in args.results]
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if args.labels:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(results):
            console.print("[red]error:[/] --labels needs one label per result")
            return 2
    else:
        labels = [p.name if p.is_dir() else (p.parent.name or p.stem) for p in args.results]
    labelled = list(zip(labels, results, strict=True))
    report.print_comparison(labelled, console)
    if args.out:
        paths = write_plots(labelled, args.out)
        html = write_html_report(labelled, args.out, paths)
        console.print("wrote " + ", ".join(str(p) for p in [*paths, html]))
    return 0


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    try:
        module = importlib.import_module(f"load.bench.{args.name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"load.bench.{args.name}":
            raise
        console.print(
            f"[red]error:[/] benchmark {args.name!r} is not available yet "
            f"(load/bench/{args.name}.py does not exist)"
        )
        return 2
    return int(module.main(list(args.args)) or 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = make_console()
    commands = {
        "run": cmd_run,
        "simulate": simulate_cli.cmd_simulate,
        "policy": cmd_policy,
        "compare": cmd_compare,
        "bench": cmd_bench,
    }
    try:
        return commands[args.command](args, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
