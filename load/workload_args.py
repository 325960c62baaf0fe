"""The workload, slice and arrival options `run` and `simulate` share, and the requests
and arrival process they select (`build_specs`, `arrival_of`)."""

from __future__ import annotations

import argparse

from load import workloads
from load.argparser import non_negative_float, positive_float, positive_int
from load.metrics_sampler import DEFAULT_INTERVAL_S
from load.runner import Arrival
from load.trace import TraceScale, read_trace, resolve_trace_path

WORKLOAD_HELP = {
    "multiturn": "chats sharing a system prompt, each turn resending the history",
    "shared-prefix": "questions about a few long documents",
    "trace": "Mooncake trace replay (--trace)",
    "random": "unrelated random prompts (no sharing)",
}


def add_workload_options(p: argparse.ArgumentParser, client: bool) -> None:
    """The workload, slice and arrival options of `run` (and of `simulate`, which has
    no HTTP client: `client` False leaves out the client-only ones)."""
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and arrivals")
    p.add_argument(
        "--num-requests", type=positive_int, help="cap on requests (random: how many; default 100)"
    )
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        help="output tokens per request (default 128; trace: a cap on its lengths)",
    )
    arrival = p.add_mutually_exclusive_group()
    arrival.add_argument(
        "--rate",
        type=positive_float,
        help="open loop: Poisson arrivals at R requests/s ('inf': all at once)",
    )
    arrival.add_argument(
        "--concurrency",
        type=positive_int,
        help="closed loop: C requests in flight (default 4; trace default: its own timestamps)",
    )
    p.add_argument("--slo-ttft", type=positive_float, help="TTFT SLO in ms for goodput")
    p.add_argument("--slo-tpot", type=positive_float, help="TPOT SLO in ms for goodput")
    if client:
        p.add_argument(
            "--ignore-eos",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="ask the server to generate exactly max_tokens (vLLM/tierkv extension)",
        )
        p.add_argument("--timeout", type=positive_float, default=600.0, help="per request, s")
        p.add_argument("--api-key", help="sent as a bearer token")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots and report.html")
    if client:
        p.add_argument(
            "--metrics-interval",
            type=non_negative_float,
            default=DEFAULT_INTERVAL_S,
            metavar="S",
            help="sample the server's /metrics every S seconds during "
            "the run (default %(default)s; 0: only before and after)",
        )
    g = p.add_argument_group("multiturn (default 16 users x 8 turns = 128 requests)")
    g.add_argument("--num-users", type=positive_int, default=16)
    g.add_argument("--num-turns", type=positive_int, default=8)
    g.add_argument("--system-len", type=int, default=256, help="shared system prompt, tokens")
    g.add_argument("--user-len", type=positive_int, default=64, help="user message, tokens")
    g = p.add_argument_group("shared-prefix (default 8 documents x 16 questions = 128 requests)")
    g.add_argument("--num-docs", type=positive_int, default=8)
    g.add_argument("--questions-per-doc", type=positive_int, default=16)
    g.add_argument("--doc-len", type=positive_int, default=2048, help="tokens")
    g.add_argument("--question-len", type=positive_int, default=64, help="tokens")
    g = p.add_argument_group("random")
    g.add_argument("--input-len", type=positive_int, default=512, help="tokens")
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
        type=positive_float,
        default=1.0,
        help="multiply prompt and block lengths (the real trace averages 12k "
        "tokens: try 0.05 on a small machine)",
    )
    g.add_argument(
        "--output-scale",
        type=positive_float,
        help="multiply output lengths (default: --length-scale)",
    )
    g.add_argument(
        "--time-scale",
        type=positive_float,
        default=1.0,
        help="multiply inter-arrival times (0.1 = ten times faster)",
    )
    g.add_argument(
        "--tie-spacing-ms",
        type=non_negative_float,
        default=0.0,
        help="send records that share a timestamp in trace order, this many ms apart "
        "(default 0: at one instant, in whatever order the server takes them)",
    )


# the options of each workload's argument group
WORKLOAD_OPTIONS = {
    "multiturn": ("num_users", "num_turns", "system_len", "user_len"),
    "shared-prefix": ("num_docs", "questions_per_doc", "doc_len", "question_len"),
    "random": ("input_len",),
    "trace": (
        "trace",
        "trace_offset",
        "length_scale",
        "output_scale",
        "time_scale",
        "tie_spacing_ms",
    ),
}


def other_workloads_options(workload: str) -> set[str]:
    """Options that do not apply to ``workload`` (left out of result.json)."""
    return {o for w, opts in WORKLOAD_OPTIONS.items() if w != workload for o in opts}


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
    return workloads.trace_replay(
        records, scale, args.seed, args.max_tokens, args.tie_spacing_ms / 1000.0
    )


def arrival_of(args: argparse.Namespace) -> Arrival:
    if args.rate is not None:
        return Arrival(rate=args.rate, seed=args.seed)
    if args.concurrency is not None:
        return Arrival(concurrency=args.concurrency)
    if args.workload == "trace":
        return Arrival(trace_times=True)
    return Arrival(concurrency=4)
