"""Router policies side by side: the same workload through `tierkv route` with each policy.

For each policy, in one run: start N fresh tierkv replicas (each with its own embedded
Redis and LMDB, KV events on), start `tierkv route` over them, run `tierkv-load run`
against the router, and stop everything. Reported per policy: hit rate (cached / prompt
tokens), TTFT p50 and p90, errors, and how the requests were spread.

Run: ``python -m load.bench.router [--policies cache-aware,least-loaded,round-robin,random]
[--replicas 2] [--out results/router]``. Replica flags go in ``--server-flags "..."``,
`tierkv-load run` flags in ``--load-flags "..."``.

``--trace-conversations K`` (with ``--workload trace`` in the load flags) replays every
K-th conversation of the trace instead of every record (load.trace.sample_conversations:
written to a temporary trace file that ``--trace-offset`` and ``--num-requests`` then
slice). For a trace workload the run also prints the selection's reuse ceiling: the hit
rate of one unbounded cache over the same records (load.trace.reuse_ceiling), which no
routing can beat.

The setup ``pd`` (in ``--policies``) is P/D disaggregation (server/pd.py): half the
replicas (at least one) run ``--role prefill``, the rest ``--role decode``, all on one
shared Redis started here (``--ddr-gb`` from ``--pd-ddr-gb``), behind the cache-aware
router. Every setup reports, per replica, its role and its own mean TTFT and ITL (from
its ``/metrics``): for P/D, a prefill replica's TTFT is its prefill, a decode replica's
TTFT is reloading the prompt from the pool plus its last token, its ITL the decode.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cache.embedded_redis import EmbeddedRedis
from load.bench._servers import ManagedServer, free_port, tierkv_server
from load.trace import read_trace, resolve_trace_path, reuse_ceiling, sample_conversations

DEFAULT_SERVER_FLAGS = (
    "--pace real --cost-model llama-3-8b --hbm-gb 0.08 --ddr-gb 0 --flash-gb 0 --max-model-len 4096"
)
DEFAULT_LOAD_FLAGS = (
    "--workload multiturn --num-users 16 --num-turns 6 --system-len 64 --user-len 256 "
    "--max-tokens 32 --rate 1.5 --seed 1 --no-plots --metrics-interval 0"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m load.bench.router",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policies", default="cache-aware,least-loaded,round-robin,random")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--server-flags", default=DEFAULT_SERVER_FLAGS)
    p.add_argument("--load-flags", default=DEFAULT_LOAD_FLAGS)
    p.add_argument("--router-flags", default="", help="extra `tierkv route` flags")
    p.add_argument("--pd-ddr-gb", default="0.5", help="--ddr-gb of the pd setup's replicas")
    p.add_argument(
        "--trace-conversations",
        type=int,
        default=0,
        metavar="K",
        help="trace workload: replay every K-th conversation (0: every record)",
    )
    p.add_argument("--out", type=Path, default=Path("results/router"))
    return p


def _trace_selection(load_flags: list[str]) -> tuple[str | None, int, int | None, bool]:
    """(--trace, --trace-offset, --num-requests, is a trace workload) of `load_flags`."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--workload")
    p.add_argument("--trace")
    p.add_argument("--trace-offset", type=int, default=0)
    p.add_argument("--num-requests", type=int)
    known, _ = p.parse_known_args(load_flags)
    return known.trace, known.trace_offset, known.num_requests, known.workload == "trace"


def prepare_trace(args: argparse.Namespace, work: Path) -> float | None:
    """Write the sampled trace (``--trace-conversations``) and point the load flags at
    it; return the replayed selection's reuse ceiling (None: not a trace workload)."""
    flags = shlex.split(args.load_flags)
    trace, offset, limit, is_trace = _trace_selection(flags)
    if not is_trace:
        if args.trace_conversations:
            raise SystemExit("--trace-conversations needs --workload trace in --load-flags")
        return None
    path = resolve_trace_path(trace)
    if args.trace_conversations:
        sampled = sample_conversations(read_trace(path), args.trace_conversations)
        path = work / f"conversations-every-{args.trace_conversations}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for r in sampled:
                f.write(
                    json.dumps(
                        {"timestamp": r.timestamp_ms, "input_length": r.input_length,
                         "output_length": r.output_length, "hash_ids": list(r.hash_ids)}
                    ) + "\n"
                )  # fmt: skip
        args.load_flags = shlex.join([*flags, "--trace", str(path)])
    return reuse_ceiling(read_trace(path, limit=limit, offset=offset))


def replica_latency(base_url: str) -> dict[str, float | None]:
    """A replica's own mean TTFT and ITL in ms (its vLLM histograms: sum / count)."""
    text = httpx.get(f"{base_url}/metrics").text
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    out: dict[str, float | None] = {}
    for key, name in (
        ("ttft_mean_ms", "vllm:time_to_first_token_seconds"),
        ("itl_mean_ms", "vllm:inter_token_latency_seconds"),
    ):
        count = sums.get(f"{name}_count", 0.0)
        out[key] = round(1000 * sums.get(f"{name}_sum", 0.0) / count, 1) if count else None
    return out


def run_policy(policy: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    is_pd = policy == "pd"
    with ExitStack() as stack:
        roles = ["both"] * args.replicas
        pool_flags: list[str] = []
        if is_pd:
            num_prefill = max(1, args.replicas // 2)
            roles = ["prefill"] * num_prefill + ["decode"] * max(1, args.replicas - num_prefill)
            redis = EmbeddedRedis(work / policy / "pool", 1024**3).start()
            stack.callback(redis.stop)
            pool_flags = ["--redis-url", redis.url, "--ddr-gb", args.pd_ddr_gb]
        replicas: list[ManagedServer] = []
        for i, role in enumerate(roles):
            flags = [
                *shlex.split(args.server_flags),
                "--kv-events-endpoint",
                "tcp://127.0.0.1:*",
                "--kv-events-replay-endpoint",
                "tcp://127.0.0.1:*",
                *pool_flags,
                *(["--role", role] if is_pd else []),
            ]
            server = tierkv_server(work / policy / f"replica{i}", *flags)
            server.start()
            stack.callback(server.stop)
            replicas.append(server)
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "server",
            "route",
            "--port",
            str(port),
            "--policy",
            "cache-aware" if is_pd else policy,
            "--log-level",
            "warning",
            *shlex.split(args.router_flags),
        ]
        for server in replicas:
            argv += ["--replica", server.base_url]
        router = ManagedServer(argv, port, work / policy / "router.log")
        router.start()
        stack.callback(router.stop)
        out = args.out / policy
        cmd = [
            sys.executable,
            "-m",
            "load",
            "run",
            "--base-url",
            router.base_url,
            "--out",
            str(out),
            *shlex.split(args.load_flags),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        result = json.loads((out / "result.json").read_text())
        routed = httpx.get(f"{router.base_url}/router/stats").json()
        per_replica = [
            {"role": role, **replica_latency(server.base_url)}
            for role, server in zip(roles, replicas, strict=True)
        ]
        # Hit rate as the replicas saw it (with P/D the client's cached tokens are the
        # decode replicas' only): cached / prompt tokens over every replica.
        stats = [httpx.get(f"{s.base_url}/cache/stats").json() for s in replicas]
    query = sum(st["query_tokens"] for st in stats)
    hits = sum(sum(st["hit_tokens"].values()) for st in stats)
    return {
        "policy": policy,
        "hit_rate": result["cached_fraction"],
        "replica_hit_rate": hits / query if query else None,
        "ttft_mean_ms": result["ttft_ms"]["mean"],
        "ttft_p50_ms": result["ttft_ms"]["p50"],
        "ttft_p90_ms": result["ttft_ms"]["p90"],
        "itl_p50_ms": result["itl_ms"]["p50"],
        "itl_p90_ms": result["itl_ms"]["p90"],
        "num_requests": result["num_requests"],
        "num_errors": result["num_errors"],
        "routed": [r["routed"] for r in routed["replicas"]],
        "replicas": per_replica,
        "pd": routed.get("pd"),
    }


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tkv-route-") as tmp:
        ceiling = prepare_trace(args, Path(tmp))
        if ceiling is not None:
            print(f"reuse ceiling (one unbounded cache, trace blocks): {ceiling:.1%}")
        for policy in args.policies.split(","):
            rows.append(run_policy(policy.strip(), args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"reuse_ceiling": ceiling, "rows": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    base = next((r for r in rows if r["policy"] == "round-robin"), rows[-1])
    print(
        f"\n| policy | hit rate | vs {base['policy']} | TTFT mean / p50 / p90 ms "
        "| ITL p50 / p90 ms | errors | requests per replica |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["hit_rate"] / base["hit_rate"] if base["hit_rate"] else float("nan")
        print(
            f"| {r['policy']} | {r['hit_rate']:.1%} | {ratio:.2f}x "
            f"| {r['ttft_mean_ms']:.0f} / {r['ttft_p50_ms']:.0f} / {r['ttft_p90_ms']:.0f} "
            f"| {_ms(r['itl_p50_ms'])} / {_ms(r['itl_p90_ms'])} | {r['num_errors']} "
            f"| {r['routed']} |"
        )
    print("\n| policy | replica | role | its mean TTFT ms | its mean ITL ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        for i, rep in enumerate(r["replicas"]):
            print(
                f"| {r['policy']} | {i} | {rep['role']} | {_ms(rep['ttft_mean_ms'])} "
                f"| {_ms(rep['itl_mean_ms'])} |"
            )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
