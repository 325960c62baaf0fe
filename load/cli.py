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
from load.argparser import OneLineErrorParser
from load.client import ServerUnreachableError
from load.html_report import write_html_report
from load.metrics_sampler import DEFAULT_INTERVAL_S
from load.plots import write_plots
from load.report import make_console
from load.runner import Arrival, run_workload
from load.stats import RequestRecord, Slo
from load.trace import TRACE_SOURCE, TraceScale, read_trace, resolve_trace_path

BENCHES = ("tiers", "ttft", "capacity", "overhead")

TOKEN_NOTE = (
    "Lengths are in tokens of tierkv's byte tokenizer (1 token = 1 ASCII character, "
    "exact for tierkv); for other servers (vLLM, ...) they are approximate: a real "
    "tokenizer packs these synthetic texts into fewer tokens."
)

WORKLOAD_HELP = {
    "multiturn": "chats sharing a system prompt, each turn resending the history",
    "shared-prefix": "questions about a few long documents",
    "trace": "Mooncake trace replay (--trace)",
    "random": "unrelated random prompts (no sharing)",
}

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


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


def add_workload_options(p: argparse.ArgumentParser, client: bool) -> None:
    """The workload, slice and arrival options of `run` (and of `simulate`, which has
    no HTTP client: `client` False leaves out the client-only ones)."""
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and arrivals")
    p.add_argument(
        "--num-requests", type=_positive_int, help="cap on requests (random: how many; default 100)"
    )
    p.add_argument(
        "--max-tokens",
        type=_positive_int,
        help="output tokens per request (default 128; trace: a cap on its lengths)",
    )
    arrival = p.add_mutually_exclusive_group()
    arrival.add_argument(
        "--rate",
        type=_positive_float,
        help="open loop: Poisson arrivals at R requests/s ('inf': all at once)",
    )
    arrival.add_argument(
        "--concurrency",
        type=_positive_int,
        help="closed loop: C requests in flight (default 4; trace default: its own timestamps)",
    )
    p.add_argument("--slo-ttft", type=_positive_float, help="TTFT SLO in ms for goodput")
    p.add_argument("--slo-tpot", type=_positive_float, help="TPOT SLO in ms for goodput")
    if client:
        p.add_argument(
            "--ignore-eos",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="ask the server to generate exactly max_tokens (vLLM/tierkv extension)",
        )
        p.add_argument("--timeout", type=_positive_float, default=600.0, help="per request, s")
        p.add_argument("--api-key", help="sent as a bearer token")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots and report.html")
    if client:
        p.add_argument(
            "--metrics-interval",
            type=_non_negative_float,
            default=DEFAULT_INTERVAL_S,
            metavar="S",
            help="sample the server's /metrics every S seconds during "
            "the run (default %(default)s; 0: only before and after)",
        )
    g = p.add_argument_group("multiturn (default 16 users x 8 turns = 128 requests)")
    g.add_argument("--num-users", type=_positive_int, default=16)
    g.add_argument("--num-turns", type=_positive_int, default=8)
    g.add_argument("--system-len", type=int, default=256, help="shared system prompt, tokens")
    g.add_argument("--user-len", type=_positive_int, default=64, help="user message, tokens")
    g = p.add_argument_group("shared-prefix (default 8 documents x 16 questions = 128 requests)")
    g.add_argument("--num-docs", type=_positive_int, default=8)
    g.add_argument("--questions-per-doc", type=_positive_int, default=16)
    g.add_argument("--doc-len", type=_positive_int, default=2048, help="tokens")
    g.add_argument("--question-len", type=_positive_int, default=64, help="tokens")
    g = p.add_argument_group("random")
    g.add_argument("--input-len", type=_positive_int, default=512, help="tokens")
    g = p.add_argument_group("trace")
    g.add_argument(
        "--trace",
        help="Mooncake-format JSONL trace: a path (absolute or "
        "relative to the current directory) or a shipped trace's file name "
        "(default: the shipped conversation trace)",
    )
    g.add_argument("--trace-offset", type=int, default=0, help="skip this many records")
    g.add_argument(
        "--length-scale",
        type=_positive_float,
        default=1.0,
        help="multiply prompt and block lengths (the real trace averages 12k "
        "tokens: try 0.05 on a small machine)",
    )
    g.add_argument(
        "--output-scale",
        type=_positive_float,
        help="multiply output lengths (default: --length-scale)",
    )
    g.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        help="multiply inter-arrival times (0.1 = ten times faster)",
    )


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
        type=_positive_int,
        metavar="N",
        help="cache sizes in trace blocks",
    )
    p.add_argument(
        "--policies",
        help="comma-separated, from: "
        + _policy_choices()
        + " (default: all; lru and belady are always included)",
    )
    p.add_argument("--num-requests", type=_positive_int, help="use only the first N records")
    p.add_argument("--trace-offset", type=int, default=0)
    p.add_argument(
        "--hbm-fraction",
        type=float,
        default=0.0,
        help="share of each capacity that is HBM (always holds what requests use) over a "
        "lower tier whose admission policy filters HBM's evictions; 0 (default): one cache",
    )
    p.add_argument("--out", type=Path, help="JSON file for the table")


# the options of each workload's argument group
WORKLOAD_OPTIONS = {
    "multiturn": ("num_users", "num_turns", "system_len", "user_len"),
    "shared-prefix": ("num_docs", "questions_per_doc", "doc_len", "question_len"),
    "random": ("input_len",),
    "trace": ("trace", "trace_offset", "length_scale", "output_scale", "time_scale"),
}


def _other_workloads_options(workload: str) -> set[str]:
    """Options that do not apply to ``workload`` (left out of result.json)."""
    return {o for w, opts in WORKLOAD_OPTIONS.items() if w != workload for o in opts}


def _policy_choices() -> str:
    return ", ".join(policy_sim.registered_policy_names())


def build_specs(args: argparse.Namespace) -> list[workloads.RequestSpec]:
    """The workload selected by ``run``'s options; ValueError on bad combinations."""
    max_tokens = args.max_tokens or 128
    if args.workload != "trace" and args.trace is not None:
        raise ValueError("--trace is only for --workload trace")
    if args.workload == "multiturn":
        return workloads.multiturn(
            args.num_users,
            args.num_turns,
            args.system_len,
            args.user_len,
            max_tokens,
            args.seed,
            args.num_requests,
        )
    if args.workload == "shared-prefix":
        return workloads.shared_prefix(
            args.num_docs,
            args.questions_per_doc,
            args.doc_len,
            args.question_len,
            max_tokens,
            args.seed,
            args.num_requests,
        )
    if args.workload == "random":
        return workloads.random_prompts(
            args.num_requests or 100, args.input_len, max_tokens, args.seed
        )
    scale = TraceScale(
        length=args.length_scale,
        output=args.output_scale or args.length_scale,
        time=args.time_scale,
    )
    records = read_trace(
        resolve_trace_path(args.trace), limit=args.num_requests, offset=args.trace_offset
    )
    return workloads.trace_replay(records, scale, args.seed, args.max_tokens)


def arrival_of(args: argparse.Namespace) -> Arrival:
    if args.rate is not None:
        return Arrival(rate=args.rate, seed=args.seed)
    if args.concurrency is not None:
        return Arrival(concurrency=args.concurrency)
    if args.workload == "trace":
        return Arrival(trace_times=True)
    return Arrival(concurrency=4)


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
            if k not in ("command", "api_key") and k not in _other_workloads_options(args.workload)
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
